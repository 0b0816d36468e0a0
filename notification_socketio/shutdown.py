"""Graceful shutdown: on SIGTERM, finish the requests under way and hand clients over."""
import logging
import signal

import gevent

log = logging.getLogger(__name__)


def install_drain(worker):
    """Chain a drain onto gunicorn's SIGTERM handler in this worker.

    The worker waits for the drain (`Server.hold`): WebSocket sessions run no greenlet of
    their own that would keep it alive until they are closed.
    """
    from .worker import Server
    server = worker.wsgi.extensions['notification_socketio']

    def on_sigterm(signum, frame):
        worker.handle_exit(signum, frame)
        if not draining:
            draining.append(Server.hold(close_connections, server))

    draining = []

    signal.signal(signal.SIGTERM, on_sigterm)


def close_connections(server):
    """Drop every Engine.IO connection, and idle HTTP keep-alives, until none can come.

    The registrations held here are released first, all in one call to the state, so that
    a slow Redis costs one timeout, not one per socket. The transport is dropped without
    a Socket.IO disconnect or an Engine.IO close packet: after either the official clients
    stop for good, whereas after a lost transport they reconnect (to another process, or
    to this one restarted) and recover what they missed. gunicorn stops accepting within a
    second; until then a connection may still arrive, so this repeats until the listener
    is closed and no socket is left.
    """
    from .worker import Handler, Server
    eio = server.socketio.server.eio
    log.info('SIGTERM: closing %d connections', len(eio.sockets))
    server.delivery.release_all()
    while True:
        Handler.drain()
        for sid, socket in list(eio.sockets.items()):
            socket.close(wait=False, abort=True, reason=eio.reason.SERVER_DISCONNECT)
            eio.sockets.pop(sid, None)
        if not Server.accepting() and not eio.sockets:
            return
        gevent.sleep(0.5)
