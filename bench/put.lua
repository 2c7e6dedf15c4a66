-- wrk: PUT /v1/cases/{id}, every request a new case (its own id and
-- address), the same document otherwise. Arguments: the API token.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_no", #threads)
end

function init(args)
  token = args[1]
  counter = 0
end

local body = '{"subject":"Replacement router has not shipped","status":"open",'
  .. '"priority":"normal","customer":{"name":"Maria Hernandez",'
  .. '"email":"c%d-%d@example.com","timezone":"America/New_York","locale":"en"},'
  .. '"assignee":"Jordan","tags":["hardware","rma"],'
  .. '"fields":{"order":"RMA-20931","plan":"business"}}'

function request()
  counter = counter + 1
  return wrk.format("PUT", "/v1/cases/w" .. thread_no .. "-" .. counter, {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }, string.format(body, thread_no, counter))
end
