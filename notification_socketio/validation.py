"""Checks shared by the REST API (Flask's routes and the fast push path) and the Socket.IO
events."""
import hashlib
import hmac

from . import jsoncodec
from .state import Idempotency

MAX_ID_LENGTH = 256
IDEMPOTENCY_HEADER = 'Idempotency-Key'
MAX_IDEMPOTENCY_KEY_LENGTH = 255


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
    except jsoncodec.UnrepresentableNumber as error:
        raise InvalidInput(str(error)) from None
    except (ValueError, RecursionError):
        raise InvalidInput('the body is not valid JSON') from None


NO_MESSAGE = ('the body must be JSON with a "message" field, like {"message": ...}, '
              'or form-encoded message=...')


def message_of(payload):
    """The `message` of a decoded JSON body, or InvalidInput."""
    if not isinstance(payload, dict) or payload.get('message') is None:
        raise InvalidInput(NO_MESSAGE)
    return payload['message']


def token_matches(given, tokens):
    """True if the X-AUTH-TOKEN value `given` is one of `tokens`.

    Compared with every token, always: the time taken tells nothing.
    """
    given = given.encode()
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(given, token.encode())
    return matched


def idempotency_of(key, path, body):
    """The Idempotency of a push request with header value `key`, or None without one.

    The fingerprint covers the route (the userId in it) and the body as sent, so that a
    key used again for anything else is told apart.
    """
    if key is None:
        return None
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH or not key.isascii() \
            or not key.isprintable():
        raise InvalidInput(f'{IDEMPOTENCY_HEADER} must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} '
                           'printable ASCII characters, such as a UUID')
    digest = hashlib.sha256(path.encode('utf-8', 'surrogateescape') + b'\n' + body)
    return Idempotency(key, digest.hexdigest()[:32])
