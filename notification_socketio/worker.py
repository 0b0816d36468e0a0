"""The gunicorn worker: gevent-websocket's, with gunicorn's access log and no per-request log line.

gevent-websocket's handler formats a log line for every request (even when its logger
drops it) and bypasses gunicorn's access log. This handler does what gunicorn's own gevent
handler does instead: one access line per request when `--access-logfile` asks for it,
in `access_log_format` (no query string: it carries connectionIds); nothing otherwise.
"""
import contextlib
import socket
import time
import weakref
from urllib.parse import parse_qs

import gevent
from gevent.pywsgi import format_date_time
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from geventwebsocket.handler import WebSocketHandler
from geventwebsocket.websocket import WebSocket
from gunicorn.workers.ggevent import PyWSGIHandler, PyWSGIServer

from .engineio_front import ENGINEIO_PATH


#: http.client's limits on a request's head, which pywsgi's own parser applies.
MAX_HEADER_LINE, MAX_HEADERS = 65536, 100


class RequestHeaders:
    """A request's header fields, read as pywsgi and gunicorn read them.

    pywsgi parses request heads with the standard library's e-mail parser: a tenth of the
    worker's time while sessions open (py-spy, bench S5). This reads the same lines, with
    the same limits, into a list: `status` is '' or why the head is refused (pywsgi then
    answers 400); `get`, `getheader`, `typeheader`, `headers`, `items` and `del` are what
    pywsgi and gunicorn's access log use (tests/test_contract.py checks that).
    """

    __slots__ = ('status', '_fields', '_first')

    def __init__(self, rfile):
        self.status = ''
        self._fields = fields = []   # [name, value], in order
        self._first = first = {}     # lower-case name: the first [name, value] of that name
        while True:
            line = rfile.readline(MAX_HEADER_LINE + 1)
            if len(line) > MAX_HEADER_LINE:
                self.status = 'Line too long'
                return
            if line in (b'\r\n', b'\n', b''):
                return
            if len(fields) >= MAX_HEADERS:
                self.status = 'Too many headers'
                return
            line = line.decode('latin-1')
            if line[:1] in ' \t' and fields:   # obsolete line folding
                fields[-1][1] += ' ' + line.strip()
                continue
            name, sep, value = line.partition(':')
            if not sep:
                self.status = 'Malformed header line'
                return
            field = [name.strip(), value.strip()]
            fields.append(field)
            first.setdefault(field[0].lower(), field)

    def get(self, name, default=None):
        field = self._first.get(name.lower())
        return default if field is None else field[1]

    getheader = get

    @property
    def typeheader(self):
        return self.get('content-type')

    @property
    def headers(self):
        return [f'{name}: {value}\r\n' for name, value in self._fields]

    def items(self):
        return [(name, value) for name, value in self._fields]

    def __delitem__(self, name):
        name = name.lower()
        self._fields[:] = [field for field in self._fields if field[0].lower() != name]
        self._first.pop(name, None)


_date = [0, b'']   # [second, its HTTP date]


def _http_date():
    """The Date header's value, formatted once a second rather than once a response."""
    now = int(time.time())
    if _date[0] != now:
        _date[:] = [now, format_date_time(now)]
    return _date[1]


#: Read buffer per connection. pywsgi's default (8 KiB) stays allocated for the whole life
#: of a WebSocket, whose frames from the client are a few bytes; request heads fit in this,
#: and longer bodies are read past the buffer anyway.
READ_BUFFER = 2048

#: A response body up to this size leaves in the same send as its head.
ONE_SEND = 65536

#: Linux's send() flag "more data follows": the kernel holds the bytes for the next send
#: (200 ms at most) instead of pushing them to the client at once.
MSG_MORE = getattr(socket, 'MSG_MORE', 0)


class Handler(WebSocketHandler, PyWSGIHandler):
    """gevent-websocket's handler, logging like gunicorn's gevent handler.

    On SIGTERM (`drain`), keep-alive connections close after their current request and
    idle ones at once: otherwise a backend's pooled connections would hold the worker
    for the whole graceful timeout.
    """

    draining = False
    _idle = weakref.WeakSet()   # handlers waiting for their connection's next request
    open_follows = False        # an Engine.IO OPEN packet follows this upgrade's 101 at once

    @classmethod
    def drain(cls):
        """Stop keeping connections alive, and close those waiting for a request."""
        cls.draining = True
        for handler in list(cls._idle):
            with contextlib.suppress(OSError, AttributeError):
                handler.socket.shutdown(socket.SHUT_RDWR)

    def MessageClass(self, rfile, *_args):   # noqa: N802 (pywsgi's name)
        return RequestHeaders(rfile)

    def read_requestline(self):
        if self.draining:
            return ''
        self._idle.add(self)
        try:
            return super().read_requestline()
        finally:
            self._idle.discard(self)

    def start_response(self, status, headers, exc_info=None):
        # A client that asked for `Connection: close` is told so, or it may reuse the
        # connection that this end is closing (node-fetch's "socket hang up").
        asked = self.environ.get('HTTP_CONNECTION', '').lower() == 'close'
        if (self.draining or asked) and not str(status).startswith('101'):
            self.close_connection = True
            if not any(name.lower() == 'connection' for name, _ in headers):
                headers = [*headers, ('Connection', 'close')]
        return super().start_response(status, headers, exc_info)

    def __init__(self, sock, address, server, rfile=None):
        super().__init__(sock, address, server,
                         rfile if rfile is not None else sock.makefile('rb', READ_BUFFER))

    def upgrade_websocket(self):
        """Upgrade, unless the page's origin is one that CORS_ALLOWED_ORIGINS leaves out.

        Refused before the handshake, python-engineio's 400 reaches the browser, which
        gives up at once; after it, the browser would wait for its connect timeout.
        """
        if self.environ.get('HTTP_UPGRADE', '').lower() != 'websocket':
            return None   # no upgrade asked (gevent-websocket's own first check)
        query = parse_qs(self.environ.get('QUERY_STRING', ''))
        engineio = self.environ.get('PATH_INFO', '').startswith(ENGINEIO_PATH)
        if engineio and query.get('transport') != ['websocket']:
            return None   # no Engine.IO WebSocket: refused by Engine.IO, before any upgrade
        # A new session (no sid) gets its OPEN packet right after the 101; an upgrade
        # from long-polling waits for the client's probe, which waits for the 101.
        self.open_follows = engineio and 'sid' not in query
        origin = self.environ.get('HTTP_ORIGIN')
        server = getattr(self.application, 'extensions', {}).get('notification_socketio')
        if origin and server is not None:
            # python-engineio's own rule, which would refuse it after the handshake.
            allowed = server.socketio.server.eio._cors_allowed_origins(self.environ)
            if allowed is not None and origin not in allowed:
                return None
        return super().upgrade_websocket()

    def log_request(self):
        # gunicorn builds the line's data before it looks whether an access log is on;
        # its `access_log_enabled` (gunicorn 27) says so up front.
        if getattr(self.server.log, 'access_log_enabled', True) and \
                '101' not in str(self.status):
            PyWSGIHandler.log_request(self)

    def finalize_headers(self):
        if self.provided_date is None:   # pywsgi would format the date for every response
            self.response_headers.append((b'Date', _http_date()))
            self.provided_date = True
        super().finalize_headers()

    def _write_with_headers(self, data):
        # pywsgi's, with one difference: it sends the head and then the body, two sends
        # and, with gunicorn's TCP_NODELAY, two segments that the client reads one by
        # one; a small body here goes in the same send as the head (every poll, every
        # push's answer).
        self.headers_sent = True
        self.finalize_headers()
        head = bytearray(b'HTTP/1.1 ')
        head += self.status
        head += b'\r\n'
        for header, value in self.response_headers:
            head += header
            head += b': '
            head += value
            head += b'\r\n'
        head += b'\r\n'
        if not data and self.open_follows and self.status.startswith(b'101'):
            # The 101 and the OPEN packet reach the client in one segment: one wake-up of
            # the client, and one transmit for the kernel, fewer per session.
            sent = self.socket.send(head, MSG_MORE)
            if sent < len(head):
                self._sendall(head[sent:])
            return
        if data and len(data) <= ONE_SEND and not self.response_use_chunked:
            head += data
            self._sendall(head)
        else:
            self._sendall(head)
            self._write(data)

    def detach(self):
        """Give this WebSocket's connection to its session, which reads it from the loop.

        Returns the socket and the bytes already read from it past what the WebSocket
        consumed (the read buffer's), or None where the server is not ours. The request's
        greenlet then ends without closing the connection or sending a close frame
        (pywsgi leaves alone a handler whose `socket` is None, and `Server.do_close` a
        detached socket), so that an idle session keeps no greenlet stack, no handler
        and no read buffer (transport.py reads it from then on).
        """
        if not isinstance(self.server, Server):
            return None
        sock, rfile = self.socket, self.rfile
        timeout = sock.timeout
        read = []
        sock.settimeout(0.0)   # what the buffer holds, and what the kernel has: no wait
        try:
            while chunk := rfile.read1(READ_BUFFER):
                read.append(chunk)
        except OSError:
            pass   # the session's own read sees the error again
        finally:
            sock.settimeout(timeout)
        websocket = self.websocket
        websocket.closed = True   # gevent-websocket's close frame: not from here
        websocket.stream = websocket.raw_write = websocket.raw_read = None
        websocket.__class__ = HandedOver
        self.server.detached.add(sock)
        self.socket = None
        return sock, b''.join(read)


class HandedOver(WebSocket):
    """A gevent-websocket WebSocket whose connection its session took (`detach`).

    Its close() has nothing left to do. gevent-websocket's, which __del__ calls, builds a
    class, raises, catches and logs at debug level on a closed WebSocket: 3% of the
    worker's time while sessions open (py-spy, bench S5).
    """

    __slots__ = ()

    def close(self, *_args, **_kwargs):
        pass


class Server(PyWSGIServer):
    """gunicorn's pywsgi server, leaving open the connections that a session took over.

    gunicorn's worker exits once no server's pool runs a greenlet; a WebSocket handed
    over to its session runs none, so the shutdown's own work is held in a pool (`hold`).
    """

    serving = weakref.WeakSet()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.detached = set()
        self.serving.add(self)

    @classmethod
    def hold(cls, function, *args):
        """Run `function` in a greenlet that the worker waits for before it exits."""
        for server in cls.serving:
            if server.pool is not None:
                return server.pool.spawn(function, *args)
        return gevent.spawn(function, *args)

    @classmethod
    def accepting(cls):
        """Whether a server of this process still accepts connections."""
        return any(not server.closed for server in cls.serving)

    def do_close(self, sock, *args):
        if sock in self.detached:
            self.detached.discard(sock)   # its session closes it
            return
        super().do_close(sock, *args)


class Worker(GeventWebSocketWorker):
    """gunicorn's gevent worker with WebSocket support.

    `-k notification_socketio.worker.Worker`; gunicorn.conf.py sets it.
    """

    wsgi_handler = Handler
    server_class = Server
