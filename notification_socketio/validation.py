"""Checks shared by the REST API (Flask's routes and the fast push path) and the Socket.IO
events."""
import hashlib
import hmac

import qs_codec

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


#: Form bodies are read as the original's body-parser read them (`extended`: the qs
#: syntax), within limits that suit a push: nesting, parameters, list items.
FORM_LIMITS = {'depth': 10, 'parameter_limit': 1000, 'list_limit': 100}
_FORM_OPTIONS = qs_codec.DecodeOptions(**FORM_LIMITS, strict_depth=True,
                                       raise_on_limit_exceeded=True)


def parse_form(body):
    """Decode a form body (`message[title]=Hi&message[tags][]=a`), or raise InvalidInput."""
    try:
        return qs_codec.decode(body.decode('utf-8'), _FORM_OPTIONS)
    except UnicodeDecodeError:
        raise InvalidInput('the form body is not UTF-8') from None
    except (ValueError, IndexError) as error:   # a limit: depth, parameters, list items
        raise InvalidInput(f'the form body is over a limit ({error}); limits: depth '
                           f'{FORM_LIMITS["depth"]}, {FORM_LIMITS["parameter_limit"]} '
                           f'parameters, {FORM_LIMITS["list_limit"]} list items') from None


NO_MESSAGE = ('the body must be JSON with a "message" field, like {"message": ...}, '
              'or form-encoded message=...')


def message_of(payload):
    """The `message` of a decoded JSON body, or InvalidInput."""
    if not isinstance(payload, dict) or payload.get('message') is None:
        raise InvalidInput(NO_MESSAGE)
    return payload['message']


MAX_FALLBACK_AFTER = 86400


def fallback_after_of(payload):
    """The `fallback_after` of a push body (seconds, 1 to 86400), None if absent."""
    value = payload.get('fallback_after') if isinstance(payload, dict) else None
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():   # a form body's text
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not 1 <= value <= MAX_FALLBACK_AFTER:
        raise InvalidInput(f'fallback_after must be a number of seconds from 1 to '
                           f'{MAX_FALLBACK_AFTER}')
    return value


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
