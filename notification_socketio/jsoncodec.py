"""JSON for the hot paths: orjson where it gives the same result, the standard library elsewhere.

orjson parses and writes JSON several times faster, but reads integers beyond 64 bits
as floats and refuses to write them or lone surrogates; a message must reach the browser
exactly as the backend pushed it, so those cases go through the `json` module. Both
refuse NaN and Infinity, which browsers cannot parse.
"""
import json
import re

import orjson

# An integer literal of 19 digits or more may not fit in 64 bits.
_LONG_NUMBER = re.compile(rb'[0-9]{19}')


def loads(data, **_options):
    """Parse JSON text (bytes or str); ValueError (or RecursionError) if it is not JSON."""
    raw = data.encode('utf-8', 'surrogatepass') if isinstance(data, str) else data
    if not _LONG_NUMBER.search(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass   # maybe a lone surrogate, which the json module keeps; else it fails too
    return json.loads(data, parse_constant=_reject_constant)


def dumps(obj, **_options):
    """Compact JSON text."""
    try:
        return orjson.dumps(obj).decode()
    except orjson.JSONEncodeError:
        return json.dumps(obj, separators=(',', ':'))


def _reject_constant(name):
    raise ValueError(f'{name} is not JSON')
