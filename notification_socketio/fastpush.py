"""The routes a backend calls all day, their common case answered before Flask.

`POST /api/<userId>/push` for every message, `PUT /api/<userId>/register` for every page
view. Through Flask, routing, the request context, the decorators and the response
object cost more than the push itself (py-spy, bench S1), and a tenth of opening a
session (bench S5). This WSGI middleware answers the plain successful cases itself: a
userId without a slash and a valid token; for a push, a JSON body of a known length that
holds a `message`; for a registration, a query string that is `connectionId=` and an id
with nothing to decode. It gives the same answer, status, headers, log line and metrics
as the Flask route (tests/test_api.py checks them side by side), and answers what the
state says (503, 504, 409, 429) as the route does: once a call was handed to the state,
nothing makes it again. Any other request, and any doubt before that (another content
type, a bad token, a bad body, key or id), is handed to Flask untouched, which answers it.
"""
import http
import io
import logging
import time

from . import errors, jsoncodec, wakeup
from .delivery import redact
from .metrics import PUSH_ROUTES, outcome_of
from .state import TooManySessions
from .validation import (InvalidInput, check_id, fallback_after_of, idempotency_of,
                         message_of, parse_json, token_matches)

log = logging.getLogger(__name__)
api_log = logging.getLogger('notification_socketio.api')   # the route's own lines
_PREFIX, _SUFFIX, _REGISTER = '/api/', '/push', '/register'
_CONNECTION_ID = 'connectionId='
_TO_DECODE = frozenset('%+&;=#')   # what a query string would need decoded or split
_HEADERS = [('Content-Type', 'application/json')]
_REPLAYED = [*_HEADERS, ('Idempotent-Replayed', 'true')]


class FastPush:
    """WSGI middleware: answer plain pushes to and registrations of one user; pass
    everything else to `app`."""

    def __init__(self, app, server):
        self.app = app
        self.server = server
        self.tokens = server.config.auth_tokens
        self.max_bytes = server.config.max_message_bytes
        self.metrics = server.metrics
        self.route = route = PUSH_ROUTES['api.push']
        self.pushed = server.metrics.pushes.labels(route, 'ok')
        self.failed = server.metrics.pushes.labels(route, 'error')
        self.latency = server.metrics.push_latency.labels(route)
        self.registered = jsoncodec.dumps(
            {'ok': True, 'ttl': server.config.registration_ttl}).encode() + b'\n'

    def __call__(self, environ, start_response):
        method = environ.get('REQUEST_METHOD')
        answer = None
        if method == 'POST':
            path = environ.get('PATH_INFO', '')
            if path.startswith(_PREFIX) and path.endswith(_SUFFIX):
                answer = self._answer(environ, path[len(_PREFIX):-len(_SUFFIX)])
        elif method == 'PUT':
            path = environ.get('PATH_INFO', '')
            if path.startswith(_PREFIX) and path.endswith(_REGISTER):
                answer = self._register(environ, path[len(_PREFIX):-len(_REGISTER)])
        if answer is None:
            return self.app(environ, start_response)
        status, headers, body = answer
        start_response(status, [*headers, ('Content-Length', str(len(body)))])
        return [body]

    def _register(self, environ, user_id):
        """(status, headers, body) of a plain registration, or None to let Flask answer."""
        query = environ.get('QUERY_STRING', '')
        connection_id = query[len(_CONNECTION_ID):]
        if not query.startswith(_CONNECTION_ID) or not _TO_DECODE.isdisjoint(connection_id):
            return None
        user_id = self._user(environ, user_id)
        if user_id is None:
            return None
        try:
            connection_id = check_id(connection_id, 'connectionId')
        except ValueError:   # InvalidInput included
            return None
        try:
            self.server.state.register(user_id, connection_id)
        except tuple(errors.STATE_FAILURES) as error:
            return self._state_failure(environ, error)[1]
        except TooManySessions:
            return self._error(429, errors.too_many_sessions(
                self.server.config.max_sessions_per_user))
        except Exception:
            log.exception('unexpected error on PUT %s', environ.get('PATH_INFO'))
            return self._error(500, 'internal error')
        self.metrics.registrations.inc()
        api_log.info('registered connection %s for user %s', redact(connection_id), user_id)
        return '200 OK', _HEADERS, self.registered

    def _user(self, environ, user_id):
        """The checked userId of a request with a valid token, or None to let Flask answer.

        `user_id` is as it stands in PATH_INFO; one with a slash is Flask's to route.
        """
        if '/' in user_id or not token_matches(environ.get('HTTP_X_AUTH_TOKEN', ''),
                                               self.tokens):
            return None
        try:
            return check_id(user_id.encode('latin-1').decode('utf-8'),   # as werkzeug does
                            'userId')
        except ValueError:   # InvalidInput included
            return None

    def _state_failure(self, environ, error):
        """(status, answer) of what the state said of a call, logged as Flask's
        handler logs it (errors.py)."""
        status, message = errors.STATE_FAILURES[type(error)]
        if status != 409:
            log.warning('%s %s: %s', environ.get('REQUEST_METHOD'), environ.get('PATH_INFO'),
                        error)
        return status, self._error(status, message)

    @staticmethod
    def _error(status, message):
        return (f'{status} {http.HTTPStatus(status).phrase}', _HEADERS,
                errors.error_body(message))

    def _answer(self, environ, user_id):
        """(status, headers, body), or None to let Flask handle the request."""
        started = time.perf_counter()
        try:
            request = self._read(environ, user_id)
            if request is None:
                return None
            appended = self.server.delivery.push(*request)
        except tuple(errors.STATE_FAILURES) as error:
            status, answer = self._state_failure(environ, error)
            self.metrics.pushes.labels(self.route, outcome_of(status)).inc()
            return answer
        except Exception:
            log.exception('unexpected error on POST %s', environ.get('PATH_INFO'))
            self.failed.inc()
            return '500 INTERNAL SERVER ERROR', _HEADERS, errors.error_body('internal error')
        self.pushed.inc()
        self.latency.observe(time.perf_counter() - started)
        wakeup.after_this_turn()   # the turn's other pushes deliver before this answer
        body = ('{"id":%s,"online":%d}\n' % (jsoncodec.dumps(appended.entries[0].message_id),
                                              appended.online[0])).encode()
        return '200 OK', _REPLAYED if appended.repeated else _HEADERS, body

    def _read(self, environ, user_id):
        """(targets, message, idempotency) of a plain push, or None to let Flask answer."""
        content_type = environ.get('CONTENT_TYPE', '').split(';', 1)[0].strip().lower()
        if content_type != 'application/json':
            return None
        user_id = self._user(environ, user_id)
        if user_id is None:
            return None
        try:
            length = int(environ.get('CONTENT_LENGTH') or 0)
        except ValueError:
            return None
        if not 0 < length <= self.max_bytes:
            return None
        body = environ['wsgi.input'].read(length)
        environ['wsgi.input'] = io.BytesIO(body)   # for Flask, if it answers after all
        environ['CONTENT_LENGTH'] = str(len(body))
        try:
            payload = parse_json(body)
            message = message_of(payload)
            idempotency = idempotency_of(environ.get('HTTP_IDEMPOTENCY_KEY'),
                                         _PREFIX + user_id + _SUFFIX, body)
            fallback_after = fallback_after_of(payload)
        except InvalidInput:
            return None
        return [user_id], message, idempotency, fallback_after
