"""The push route's common case, answered before Flask; everything else goes on to Flask.

`POST /api/<userId>/push` is what a backend calls all day. Through Flask, routing, the
request context, the decorators and the response object cost more than the push itself
(py-spy, bench S1). This WSGI middleware answers the plain successful case itself: a
userId without a slash, a valid token, a JSON body of a known length that holds a
`message`. It gives the same answer, status, headers and metrics as the Flask route
(tests/test_api.py checks the two side by side). Any other request, and any doubt
(another content type, a bad token, a bad body, the state unavailable), is handed to
Flask untouched, which answers it, errors included, as before.
"""
import io
import logging
import time

from . import jsoncodec
from .metrics import PUSH_ROUTES
from .state import StateUnavailable
from .validation import InvalidInput, check_id, message_of, parse_json, token_matches

log = logging.getLogger(__name__)
_PREFIX, _SUFFIX = '/api/', '/push'
_HEADERS = [('Content-Type', 'application/json')]


class FastPush:
    """WSGI middleware: answer plain pushes to one user; pass everything else to `app`."""

    def __init__(self, app, server):
        self.app = app
        self.server = server
        self.tokens = server.config.auth_tokens
        self.max_bytes = server.config.max_message_bytes
        route = PUSH_ROUTES['api.push']
        self.pushed = server.metrics.pushes.labels(route, 'ok')
        self.failed = server.metrics.pushes.labels(route, 'error')
        self.latency = server.metrics.push_latency.labels(route)

    def __call__(self, environ, start_response):
        if environ.get('REQUEST_METHOD') == 'POST':
            path = environ.get('PATH_INFO', '')
            if path.startswith(_PREFIX) and path.endswith(_SUFFIX):
                answer = self._answer(environ, path[len(_PREFIX):-len(_SUFFIX)])
                if answer is not None:
                    status, body = answer
                    start_response(status, [*_HEADERS, ('Content-Length', str(len(body)))])
                    return [body]
        return self.app(environ, start_response)

    def _answer(self, environ, user_id):
        """(status, body), or None to let Flask handle the request."""
        try:
            body = self._push(environ, user_id)
        except Exception:
            log.exception('unexpected error on POST %s', environ.get('PATH_INFO'))
            self.failed.inc()
            return '500 INTERNAL SERVER ERROR', b'{"error":"internal error"}\n'
        return None if body is None else ('200 OK', body)

    def _push(self, environ, user_id):
        """The answer's body, or None to let Flask handle the request."""
        started = time.perf_counter()
        content_type = environ.get('CONTENT_TYPE', '').split(';', 1)[0].strip().lower()
        if '/' in user_id or content_type != 'application/json' or not token_matches(
                environ.get('HTTP_X_AUTH_TOKEN', ''), self.tokens):
            return None
        try:
            length = int(environ.get('CONTENT_LENGTH') or 0)
            user_id = check_id(user_id.encode('latin-1').decode('utf-8'),   # as werkzeug does
                               'userId')
        except ValueError:   # InvalidInput included
            return None
        if not 0 < length <= self.max_bytes:
            return None
        body = environ['wsgi.input'].read(length)
        environ['wsgi.input'] = io.BytesIO(body)   # for Flask, if it answers after all
        environ['CONTENT_LENGTH'] = str(len(body))
        try:
            message = message_of(parse_json(body))
        except InvalidInput:
            return None
        try:
            [entry] = self.server.delivery.push([user_id], message)
        except StateUnavailable:
            return None   # nothing was done: Flask tries once more and answers 503
        self.pushed.inc()
        self.latency.observe(time.perf_counter() - started)
        return ('{"id":%s}\n' % jsoncodec.dumps(entry.message_id)).encode()
