"""What stands at /socket.io/ in front of python-engineio: protocol checks it leaves out.

The Engine.IO protocol refuses, with 400, a handshake without a `transport` (python-engineio
takes it for polling) and a request with any method but GET and POST (python-engineio
answers 405, or 400 only for a POST). Everything else goes on to python-engineio as is.
"""
import json
from urllib.parse import parse_qs

ENGINEIO_PATH = '/socket.io/'
_ALLOWED_METHODS = ('GET', 'POST', 'OPTIONS')   # OPTIONS: CORS preflights


class EngineIOFront:
    """WSGI middleware: refuse at /socket.io/ what the Engine.IO protocol refuses."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        if environ.get('PATH_INFO', '').startswith(ENGINEIO_PATH):
            error = self._refusal(environ)
            if error is not None:
                body = json.dumps(error).encode()
                start_response('400 BAD REQUEST', [('Content-Type', 'application/json'),
                                                   ('Content-Length', str(len(body)))])
                return [body]
        return self.app(environ, start_response)

    @staticmethod
    def _refusal(environ):
        """Why the request is no Engine.IO request, or None."""
        if environ.get('REQUEST_METHOD') not in _ALLOWED_METHODS:
            return 'Invalid method: Engine.IO takes GET and POST'
        if environ.get('REQUEST_METHOD') == 'OPTIONS':
            return None
        query = parse_qs(environ.get('QUERY_STRING', ''))
        if 'transport' not in query:
            return 'Invalid transport: the transport query parameter is required'
        return None
