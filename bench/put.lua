-- wrk: PUT /v1/cases/{id}, every request a new case (its own id and
-- address), the same document otherwise. Arguments: the API token, and a
-- prefix for the case ids (default `w`; wrk runs side by side take one
-- each).
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_no", #threads)
end

function init(args)
  token = args[1]
  prefix = args[2] or "w"
  counter = 0
end

local body = '{"subject":"Replacement router has not shipped","status":"open",'
  .. '"priority":"normal","customer":{"name":"Maria Hernandez",'
  .. '"email":"c%s-%d@example.com","timezone":"America/New_York","locale":"en"},'
  .. '"assignee":"Jordan","tags":["hardware","rma"],'
  .. '"fields":{"order":"RMA-20931","plan":"business"}}'

function request()
  counter = counter + 1
  return wrk.format("PUT", "/v1/cases/" .. prefix .. thread_no .. "-" .. counter, {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }, string.format(body, prefix .. thread_no, counter))
end
