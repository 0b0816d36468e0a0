"""JSON for the hot paths: orjson where it gives the same result, the standard library elsewhere.

orjson parses and writes JSON several times faster, but reads integers beyond 64 bits
as floats and refuses to write them or lone surrogates; a message must reach the browser
exactly as the backend pushed it, so those cases go through the `json` module. Both
refuse NaN and Infinity, which browsers cannot parse.

A number must arrive as the backend wrote it: a literal that no double holds exactly
enough to be written back as the same number (`1e400` would become null, `1e-400` zero,
`1.00000000000000000001` one) is refused with UnrepresentableNumber.
"""
import decimal
import json
import math
import re

import orjson

# What may not survive orjson exactly: an integer of 19 digits or more (beyond 64 bits),
# an exponent, or a fraction of 16 digits or more (a double keeps 15 for sure). Such a
# body is parsed by the json module, each float literal checked; others stay on orjson.
_SLOW_NUMBER = re.compile(rb'[0-9]{19}|[0-9][eE]|[0-9.]{17}')


class UnrepresentableNumber(ValueError):
    """A number literal that would not reach a client as the same number."""


def loads(data, **_options):
    """Parse JSON text (bytes or str); ValueError (or RecursionError) if it is not JSON."""
    raw = data.encode('utf-8', 'surrogatepass') if isinstance(data, str) else data
    if not _SLOW_NUMBER.search(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass   # maybe a lone surrogate, which the json module keeps; else it fails too
    return json.loads(data, parse_constant=_reject_constant, parse_float=_exact_float)


def _exact_float(literal):
    """The double of a JSON number literal, if it is written back as the same number."""
    value = float(literal)
    if math.isinf(value) or decimal.Decimal(literal) != decimal.Decimal(repr(value)):
        raise UnrepresentableNumber(
            f'the number {literal[:40]} cannot be carried exactly (a double, as JSON '
            'parsers read it, would change it): send it as a string')
    return value


def dumps(obj, **_options):
    """Compact JSON text."""
    try:
        return orjson.dumps(obj).decode()
    except orjson.JSONEncodeError:
        return json.dumps(obj, separators=(',', ':'))


def _reject_constant(name):
    raise ValueError(f'{name} is not JSON')
