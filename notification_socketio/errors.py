"""Errors as the backend sees them: a JSON body `{"error": ...}` and the right status, always.

The app-wide handlers live here, not in a blueprint: every route, the fast push path
included, answers its failures through `error_body`.
"""
import logging

from flask import jsonify, request
from werkzeug.exceptions import HTTPException

from . import jsoncodec
from .state import (IdempotencyConflict, NotReplicated, OutcomeUnknown, StateUnavailable,
                    TooManySessions)
from .validation import InvalidInput

log = logging.getLogger(__name__)

#: What the state says of a call, as the backend is told: (status, error).
STATE_FAILURES = {
    StateUnavailable: (503, 'the server cannot reach its shared state (Redis) right now; '
                            'nothing was done, retry'),
    OutcomeUnknown: (504, 'the shared state (Redis) did not answer in time: the outcome is '
                          'unknown, the push may or may not have been made. Retry with the '
                          'same Idempotency-Key to be sure; a retry without one may send '
                          'it twice'),
    NotReplicated: (504, 'the push was made on the shared state\'s (Redis) primary, but no '
                         'replica confirmed it in time (REDIS_WAIT_REPLICAS): a failover now '
                         'could lose it. Retry with the same Idempotency-Key: the retry sends '
                         'nothing twice and is answered once a replica has it'),
    IdempotencyConflict: (409, 'this Idempotency-Key was used with another request; a key '
                               'names one push, repeated with the same body'),
}
_HTTP_ERRORS = {
    404: 'no such route',
    405: 'method not allowed on this route',
    413: 'the body is larger than MAX_MESSAGE_BYTES',
}


def error_body(message):
    """The bytes of a JSON error body, as Flask's jsonify writes them."""
    return jsoncodec.dumps({'error': message}).encode() + b'\n'


def too_many_sessions(limit):
    """The error of a registration refused for MAX_SESSIONS_PER_USER."""
    return (f'this user already has {limit} registrations, all held by live sockets '
            '(MAX_SESSIONS_PER_USER); revoke one first')


def error_response(status, message):
    """The JSON error every failure answers with."""
    return jsonify(error=message), status


def init_app(app):
    """Answer every error of `app` in JSON."""

    @app.errorhandler(InvalidInput)
    def _invalid_input(error):
        return error_response(400, str(error))

    def _state_failure(error):
        status, message = STATE_FAILURES[type(error)]
        if status != 409:
            log.warning('%s %s: %s', request.method, request.path, error)
        return error_response(status, message)

    for failure in STATE_FAILURES:
        app.register_error_handler(failure, _state_failure)

    @app.errorhandler(TooManySessions)
    def _too_many_sessions(_error):
        return error_response(429, too_many_sessions(
            app.extensions['notification_socketio'].config.max_sessions_per_user))

    @app.errorhandler(HTTPException)
    def _http_error(error):
        body, status = error_response(error.code, _HTTP_ERRORS.get(error.code, error.name))
        for name, value in error.get_headers():
            if name.lower() != 'content-type':   # keep what the status needs, such as Allow
                body.headers[name] = value
        return body, status

    @app.errorhandler(Exception)
    def _unexpected_error(_error):
        log.exception('unexpected error on %s %s', request.method, request.path)
        return error_response(500, 'internal error')
