-- wrk: POST Twilio's Messages resource directly, the reference for the
-- rate tidings reaches against the same Twilio-API peer. Arguments: the
-- account SID.
function init(args)
  local account = args[1]
  wrk.method = "POST"
  wrk.path = "/2010-04-01/Accounts/" .. account .. "/Messages.json"
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
  -- Basic base64("AC…:token"); Prism checks that credentials are present.
  wrk.headers["Authorization"] = "Basic QUMwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZjp0b2tlbg=="
  wrk.body = "To=%2B12125550143&From=%2B15005550006&Body=Your+case+is+still+being+worked+on"
end
