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
