"""Checks shared by the REST API and the Socket.IO events."""
from . import jsoncodec

MAX_ID_LENGTH = 256


class InvalidInput(ValueError):
    """Input that the server refuses; the message says why, for the caller."""


def check_id(value, name):
    """A userId or connectionId: a non-empty string of at most MAX_ID_LENGTH characters."""
    if not isinstance(value, str):
        raise InvalidInput(f'{name} must be a string')
    if not value:
        raise InvalidInput(f'{name} must not be empty')
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInput(f'{name} must be at most {MAX_ID_LENGTH} characters')
    return value


def parse_json(body):
    """Decode a request body as strict JSON (no NaN or Infinity), or raise InvalidInput."""
    try:
        return jsoncodec.loads(body)
    except (ValueError, RecursionError):
        raise InvalidInput('the body is not valid JSON') from None
