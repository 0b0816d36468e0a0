"""The gunicorn worker: gevent-websocket's, with gunicorn's access log and no per-request log line.

gevent-websocket's handler formats a log line for every request (even when its logger
drops it) and bypasses gunicorn's access log. This handler does what gunicorn's own gevent
handler does instead: one access line per request when `--access-logfile` asks for it,
in `access_log_format` (no query string: it carries connectionIds); nothing otherwise.
"""
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from geventwebsocket.handler import WebSocketHandler
from gunicorn.workers.ggevent import PyWSGIHandler


#: Read buffer per connection. pywsgi's default (8 KiB) stays allocated for the whole life
#: of a WebSocket, whose frames from the client are a few bytes; request heads fit in this,
#: and longer bodies are read past the buffer anyway.
READ_BUFFER = 2048


class Handler(WebSocketHandler, PyWSGIHandler):
    """gevent-websocket's handler, logging like gunicorn's gevent handler."""

    def __init__(self, sock, address, server, rfile=None):
        super().__init__(sock, address, server,
                         rfile if rfile is not None else sock.makefile('rb', READ_BUFFER))

    def log_request(self):
        if '101' not in str(self.status):
            PyWSGIHandler.log_request(self)


class Worker(GeventWebSocketWorker):
    """gunicorn's gevent worker with WebSocket support (`-k notification_socketio.worker.Worker`)."""

    wsgi_handler = Handler
