"""What stands at /socket.io/ in front of python-engineio.

- The socket.io client, at the path where the original's Socket.IO served it
  (`/socket.io/socket.io.js`, `.min.js`, their `.map`s, the esm and msgpack builds), so
  that pages written for the original load it from the server, unchanged: from
  SOCKETIO_CLIENT_DIR (socket.io-client's `dist/`, read once at start-up; the Docker image
  has one), else a redirect to the official build of the same version on the CDN.
  SERVE_CLIENT=0 turns it off (404). Each file has an ETag, and `Cache-Control: public,
  max-age=0`: browsers keep it and revalidate, so a new version reaches them at once.
- Protocol checks python-engineio leaves out: the Engine.IO protocol refuses, with 400, a
  handshake without a `transport` (python-engineio takes it for polling) and a request
  with any method but GET and POST (python-engineio answers 405, or 400 only for POST).

- Engine.IO 3, the protocol of socket.io-client 1.x and 2.x (python-engineio speaks only
  4), the way Node's `allowEIO3` serves it: the request goes on to python-engineio as
  Engine.IO 4, marked in the environ (`nsio.engineio3`) so that its socket plays the v3
  heartbeat (transport.py), and long-polling payloads are translated between the two
  framings: v3's `<length>:<packet>`, the length in UTF-16 code units as JavaScript
  counts them, and v4's packets separated by a record separator. A WebSocket carries one
  packet a frame in both.

Everything else goes on to python-engineio as is.
"""
import hashlib
import io
import logging
import os
import re
from urllib.parse import parse_qs

from .config import CLIENT_CDN
from .errors import error_body

ENGINEIO_PATH = '/socket.io/'
#: The largest payload a client may send (python-engineio's max_http_buffer_size): a client
#: sends `register` and little else.
MAX_CLIENT_PAYLOAD = 65536
_ALLOWED_METHODS = ('GET', 'POST', 'OPTIONS')   # OPTIONS: CORS preflights
CLIENT_FILES = ('socket.io.js', 'socket.io.min.js', 'socket.io.esm.min.js',
                'socket.io.msgpack.min.js')
_CLIENT_PATHS = {ENGINEIO_PATH + name + suffix: name + suffix
                 for name in CLIENT_FILES for suffix in ('', '.map')}
log = logging.getLogger(__name__)


class EngineIOFront:
    """WSGI middleware: the client script, and refusals of what Engine.IO refuses."""

    def __init__(self, app, config):
        self.app = app
        self.serve_client = config.serve_client
        self.client_files = (_read_client(config.socketio_client_dir)
                             if config.serve_client and config.socketio_client_dir else None)
        if not config.serve_client:
            where = 'not served (SERVE_CLIENT=0)'
        elif self.client_files:
            where = f'served from {config.socketio_client_dir}'
        else:
            where = f'redirected to {CLIENT_CDN} (set SOCKETIO_CLIENT_DIR to serve a copy)'
        log.info('socket.io client at %ssocket.io.js: %s', ENGINEIO_PATH, where)

    def __call__(self, environ, start_response):
        path = environ.get('PATH_INFO', '')
        if path.startswith(ENGINEIO_PATH):
            name = _CLIENT_PATHS.get(path)
            if name is not None and environ.get('REQUEST_METHOD') in ('GET', 'HEAD'):
                return self._client(environ, start_response, name)
            error = self._refusal(environ)
            if error is not None:
                return _answer(start_response, '400 BAD REQUEST', error)
            if _ENGINEIO3.search(environ.get('QUERY_STRING', '')):
                return self._engineio3(environ, start_response)
        return self.app(environ, start_response)

    def _engineio3(self, environ, start_response):
        """An Engine.IO 3 request, served by python-engineio as Engine.IO 4."""
        environ['QUERY_STRING'] = _ENGINEIO3.sub(r'\1EIO=4\2', environ['QUERY_STRING'])
        environ['nsio.engineio3'] = True
        if environ.get('HTTP_UPGRADE', '').lower() == 'websocket':
            return self.app(environ, start_response)
        if environ.get('REQUEST_METHOD') == 'POST':
            try:
                length = int(environ.get('CONTENT_LENGTH') or 0)
                if length > MAX_CLIENT_PAYLOAD:
                    raise ValueError('too large')
                body = _v4_payload(environ['wsgi.input'].read(length))
            except ValueError:
                return _answer(start_response, '400 BAD REQUEST',
                               'not an Engine.IO 3 payload')
            environ['wsgi.input'] = io.BytesIO(body)
            environ['CONTENT_LENGTH'] = str(len(body))
        answered = []

        def start(status, headers, exc_info=None):
            answered.append((status, headers))
            return lambda data: None
        chunks = self.app(environ, start)
        try:
            body = b''.join(chunks)
        finally:
            getattr(chunks, 'close', lambda: None)()
        status, headers = answered[0]
        if environ.get('REQUEST_METHOD') == 'GET' and status.startswith('200'):
            body = _v3_payload(body)
        start_response(status, [*(header for header in headers
                                  if header[0].lower() != 'content-length'),
                                ('Content-Length', str(len(body)))])
        return [body]

    def _client(self, environ, start_response, name):
        """A file of the socket.io client, a redirect to the CDN's, or 404."""
        if not self.serve_client:
            return _answer(start_response, '404 NOT FOUND', 'no such route')
        if self.client_files is None:
            start_response('302 FOUND', [('Location', CLIENT_CDN + name),
                                         ('Content-Length', '0')])
            return [b'']
        found = self.client_files.get(name)
        if found is None:
            return _answer(start_response, '404 NOT FOUND', 'no such file in the client')
        body, content_type, etag = found
        headers = [('ETag', etag), ('Cache-Control', 'public, max-age=0'),
                   ('Access-Control-Allow-Origin', '*')]
        if etag in environ.get('HTTP_IF_NONE_MATCH', ''):
            start_response('304 NOT MODIFIED', headers)
            return [b'']
        start_response('200 OK', [*headers, ('Content-Type', content_type),
                                  ('Content-Length', str(len(body)))])
        return [b''] if environ['REQUEST_METHOD'] == 'HEAD' else [body]

    @staticmethod
    def _refusal(environ):
        """Why the request is no Engine.IO request, or None."""
        if environ.get('REQUEST_METHOD') not in _ALLOWED_METHODS:
            return 'Invalid method: Engine.IO takes GET and POST'
        if environ.get('REQUEST_METHOD') == 'OPTIONS':
            return None
        query = environ.get('QUERY_STRING', '')
        if '%' in query or '+' in query:   # names to decode: as python-engineio reads them
            given = 'transport' in parse_qs(query)
        else:   # every poll: without parsing the whole query
            given = _TRANSPORT.search(query) is not None
        if not given:
            return 'Invalid transport: the transport query parameter is required'
        return None


_ENGINEIO3 = re.compile(r'(^|&)EIO=3(&|$)')
_TRANSPORT = re.compile(r'(?:^|&)transport=[^&]')   # given, and not blank
_SEPARATOR = '\x1e'
_NON_ASCII = re.compile(r'[^\x00-\x7f]')


def _ascii_json(packet):
    """A text packet with every non-ASCII character written as a JSON escape.

    socket.io-client 1.x decodes each long-polling packet as UTF-8 held in a "binary
    string" (Node's own Engine.IO 3 server sends it plain, and 1.x then fails on the
    first non-ASCII message). Outside the packet's ASCII prefix, such characters can only
    stand in JSON strings, where `\\uXXXX` means the same: every client reads the same
    message, 1.x included.
    """
    if packet.isascii():
        return packet
    return _NON_ASCII.sub(lambda match: ''.join(
        '\\u%04x' % int.from_bytes(match.group().encode('utf-16-be')[i:i + 2], 'big')
        for i in range(0, len(match.group().encode('utf-16-be')), 2)), packet)


def _v3_payload(body):
    """An Engine.IO 4 long-polling payload (text packets) in Engine.IO 3 framing."""
    packets = [_ascii_json(packet) for packet in body.decode('utf-8').split(_SEPARATOR)]
    return ''.join(f'{len(packet)}:{packet}' for packet in packets).encode()


def _v4_payload(body):
    """An Engine.IO 3 payload from a client (`<length>:<packet>`...) in 4's framing.

    ValueError if it is not one.
    """
    units = body.decode('utf-8').encode('utf-16-le')   # lengths count UTF-16 units
    packets, position = [], 0
    while position < len(units):
        colon = units.find(':'.encode('utf-16-le'), position)
        while colon != -1 and (colon - position) % 2:
            colon = units.find(':'.encode('utf-16-le'), colon + 1)
        if colon == -1:
            raise ValueError('no length')
        length = int(units[position:colon].decode('utf-16-le'))
        start = colon + 2
        if length <= 0 or start + 2 * length > len(units):
            raise ValueError('a packet runs past the payload')
        packets.append(units[start:start + 2 * length].decode('utf-16-le', 'surrogatepass'))
        position = start + 2 * length
    if not packets:
        raise ValueError('empty payload')
    return _SEPARATOR.join(packets).encode('utf-8', 'surrogatepass')


def _answer(start_response, status, error):
    body = error_body(error)
    start_response(status, [('Content-Type', 'application/json'),
                            ('Content-Length', str(len(body)))])
    return [body]


def _read_client(folder):
    """{file name: (bytes, content type, ETag)} of the client builds found in `folder`."""
    files = {}
    for name in _CLIENT_PATHS.values():
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, 'rb') as file:
                body = file.read()
            content_type = ('application/json' if name.endswith('.map')
                            else 'application/javascript; charset=utf-8')
            files[name] = (body, content_type,
                           '"%s"' % hashlib.sha256(body).hexdigest()[:32])
    return files
