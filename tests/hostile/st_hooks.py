"""schemathesis hooks for tests/hostile/schemathesis.sh.

`format: e164` in tidings' OpenAPI document marks a phone number that must
be valid in its country's numbering plan, which no pattern can say. This
strategy draws numbers that are: North American numbers in real area codes
(exchange and line digits free within the plan) and Polish mobile numbers.
"""

import schemathesis
from hypothesis import strategies as st

_NANP = st.from_regex(r"\A\+1(201|212|305|415|617|646|702|718|917)[2-9][0-9]{6}\Z")
_PL_MOBILE = st.from_regex(r"\A\+48(50|51|53|57|60|66|69|72|73|78|79|88)[0-9]{7}\Z")

schemathesis.openapi.format("e164", _NANP | _PL_MOBILE)


# Twilio's webhooks: requests schemathesis sends without an
# X-Twilio-Signature get a valid one, computed as Twilio does (HMAC-SHA1
# over the URL and the sorted form parameters) with the auth token the
# script gave the daemon, so the handlers behind the signature check are
# exercised too. Requests that carry a generated signature keep it (403).
import base64
import hashlib
import hmac
import os
import urllib.parse

import requests

_TOKEN = os.environ.get("TIDINGS_ST_TWILIO_TOKEN")
_PUBLIC_URL = os.environ.get("TIDINGS_ST_PUBLIC_URL", "")


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if not _TOKEN or not case.path.startswith(("/v1/sms/", "/v1/whatsapp/")):
        return
    headers = case.headers or {}
    if any(k.lower() == "x-twilio-signature" for k in headers):
        return
    body = case.body if isinstance(case.body, (dict, str, bytes)) else None
    # What requests will put on the wire: the query string and the body.
    prepared = requests.Request(
        "POST", f"http://127.0.0.1{case.path}", params=case.query, data=body
    ).prepare()
    query = urllib.parse.urlsplit(prepared.url).query
    raw = prepared.body or ""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    params = urllib.parse.parse_qsl(raw, keep_blank_values=True)
    url = f"{_PUBLIC_URL}{case.path}" + (f"?{query}" if query else "")
    data = url + "".join(k + v for k, v in sorted(params))
    mac = hmac.new(_TOKEN.encode(), data.encode(), hashlib.sha1).digest()
    headers["X-Twilio-Signature"] = base64.b64encode(mac).decode()
    case.headers = headers
