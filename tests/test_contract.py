"""What the server relies on inside its libraries: a release that moves any of it fails here.

setup.cfg caps each of these libraries below its next major, and constraints.txt pins the
tested set; this module is what to run first on newer releases (`.ci/newest` does). Each
check names the module of ours that needs it.
"""
import concurrent.futures
import http.client
import inspect
import logging
import re

import engineio
import gevent
import gevent.baseserver
import gevent.server
import pytest
import redis
import socketio
from engineio import socket as eio_socket
from flask_socketio import SocketIO
from gevent import pywsgi
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from gunicorn.workers.ggevent import PyWSGIHandler

from conftest import TOKEN, wait_for
from notification_socketio import create_app
from notification_socketio.config import Config


def has(owner, *names):
    missing = [name for name in names if not hasattr(owner, name)]
    assert not missing, f'{owner!r} lost {missing}'


def parameters(function):
    return list(inspect.signature(function).parameters)


def test_python_engineio_socket_as_transport_extends_it():
    # transport.py: DirectSocket subclasses python-engineio's Socket.
    has(eio_socket.Socket, 'send', 'receive', 'poll', 'handle_get_request',
        'handle_post_request', 'close', 'schedule_ping', 'check_ping_timeout',
        '_websocket_handler')
    assert parameters(eio_socket.Socket.close) == ['self', 'wait', 'abort', 'reason']
    app = create_app(Config.for_testing())
    eio = app.extensions['notification_socketio'].socketio.server.eio
    has(eio, 'handlers', 'sockets', 'reason', 'on', 'send', '_trigger_event', 'ping_interval',
        'ping_interval_grace_period', 'ping_timeout', 'max_http_buffer_size',
        'get_queue_empty_exception',
        '_cors_allowed_origins')   # worker.py: the origin rule, before the handshake
    has(eio.reason, 'TRANSPORT_ERROR', 'TRANSPORT_CLOSE', 'SERVER_DISCONNECT', 'PING_TIMEOUT')
    # monitor_clients=False reached python-engineio: no client-monitor task, whose two jobs
    # (missed PONGs, forgetting closed sockets) transport.py does on timers.
    assert eio.start_service_task is False
    # engineio_front.py translates Engine.IO 4 long-polling payloads: packets joined by
    # a record separator.
    from engineio import payload
    assert payload.Payload(packets=[eio_socket.packet.Packet(eio_socket.packet.MESSAGE, 'a'),
                                    eio_socket.packet.Packet(eio_socket.packet.MESSAGE, 'b')]
                           ).encode() == '4a\x1e4b'
    socket = eio_socket.Socket(eio, 'sid')
    has(socket, 'queue', 'closed', 'closing', 'connected', 'upgraded', 'upgrading',
        'last_ping', 'sid', 'server')
    has(socket.queue, 'peek')   # DirectSocket.poll waits for a packet without taking it
    # transport.PollQueue: each socket's queue comes from the server's create_queue, and
    # gevent's watchers take fed events (the prompt wake-up of a waiting long-poll).
    assert 'self.queue = self.server.create_queue()' in inspect.getsource(
        eio_socket.base_socket.BaseSocket.__init__)
    assert type(socket.queue).__name__ == 'PollQueue'
    has(gevent.get_hub().loop.check(), 'feed')
    assert set(eio.handlers) >= {'connect', 'message'}
    # transport.py swaps the class of each new socket as python-engineio makes it.
    assert 'socket.Socket(self, sid)' in inspect.getsource(engineio.Server._handle_connect)


def test_python_engineio_hands_gevent_websocket_s_connection_through():
    # transport.py writes to the connection under `ws._sock.stream.handler.socket`.
    from engineio.async_drivers import gevent as gevent_driver
    source = inspect.getsource(gevent_driver)
    assert "self._sock = environ['wsgi.websocket']" in source
    assert 'self.environ = environ' in source   # the environ python-socketio keeps
    from geventwebsocket import handler
    from geventwebsocket.websocket import Stream
    assert 'WebSocket(self.environ, Stream(self), self)' in inspect.getsource(handler)
    assert 'self.handler = handler' in inspect.getsource(Stream.__init__)


def test_a_websocket_handed_to_its_session_is_left_open_by_what_ran_it():
    # worker.Handler.detach: the request's greenlet ends, and none of gevent-websocket,
    # pywsgi, gevent's server or gunicorn's worker may close the connection or write to
    # it. If one of these moved, every WebSocket would end right after it opened.
    from geventwebsocket.handler import WebSocketHandler
    from geventwebsocket.websocket import WebSocket
    written = []
    stream = type('Stream', (), {'read': None, 'write': written.append})()
    handler = type('Handler', (), {'server': type('S', (), {'application': None})(),
                                   'logger': logging.getLogger('contract')})()
    websocket = WebSocket({}, stream, handler)
    websocket.closed = True   # what detach() does
    websocket.stream = websocket.raw_write = websocket.raw_read = None
    websocket.close()
    assert written == []
    # detach() also makes it a HandedOver, whose close() (which __del__ calls) does nothing.
    from notification_socketio.worker import HandedOver
    assert 'self.close()' in inspect.getsource(WebSocket.__del__)
    websocket = WebSocket({}, stream, handler)
    websocket.__class__ = HandedOver   # no TypeError: the same layout
    websocket.close()
    assert 'if not self.websocket.closed:' in inspect.getsource(WebSocketHandler.run_websocket)
    handle = inspect.getsource(pywsgi.WSGIHandler.handle)
    assert 'while self.socket is not None:' in handle
    assert 'if self.socket is not None:' in handle
    assert 'close(*args_tuple)' in inspect.getsource(
        gevent.baseserver._handle_and_close_when_done)
    assert 'do_close(self, sock' in inspect.getsource(gevent.server.StreamServer)
    # The worker exits once its servers' pools are empty: the drain is held in one.
    from gunicorn.workers.ggevent import GeventWorker
    run = inspect.getsource(GeventWorker.run)
    assert 'server_class(' in run and 'server.pool.free_count()' in run


def test_python_socketio_manager_seams_that_delivery_uses():
    # delivery.py: a Manager subclass; fanout.py: a RedisManager subclass with _listen.
    has(socketio.Manager, 'basic_enter_room', 'basic_leave_room', 'is_connected',
        'get_participants', 'eio_sid_from_sid', 'sid_from_eio_sid', 'initialize')
    has(socketio.PubSubManager, '_listen', '_publish', '_thread')
    assert 'self._listen()' in inspect.getsource(socketio.PubSubManager._thread)
    assert {'url', 'channel', 'redis_options'} <= set(parameters(socketio.RedisManager))
    manager = socketio.RedisManager('redis://127.0.0.1:9/0', redis_options={'a': 1})
    assert (manager.redis_url, manager.redis_options) == ('redis://127.0.0.1:9/0', {'a': 1})
    # Every built-in manager sends through the server this way; delivery.py too.
    has(socketio.Server, '_send_eio_packet', '_send_packet', 'disconnect')
    has(socketio.Server(), 'packet_class', 'eio')
    assert '_send_eio_packet(eio_sid' in inspect.getsource(socketio.Manager.emit)
    # attach() relies on a socket leaving `is_connected` before its disconnect handler runs.
    source = inspect.getsource(socketio.Server._handle_disconnect)
    assert source.index('pre_disconnect') < source.index("_trigger_event('disconnect'")
    # events.py: reserved event names are refused before python-socketio dispatches them.
    assert parameters(socketio.Server._handle_event) == ['self', 'eio_sid', 'namespace', 'id',
                                                         'data']
    has(socketio.Server, 'reserved_events')


def test_python_socketio_redis_manager_reaches_redis_only_through_the_two_seams():
    # fanout.py overrides _listen and _publish, so python-socketio never connects with its
    # own code (which knows neither Cluster URLs nor rediss+sentinel://): nothing else of
    # RedisManager or PubSubManager may open a connection or use one.
    for cls in (socketio.RedisManager, socketio.PubSubManager):
        for name, member in vars(cls).items():
            if name in ('_listen', '_publish', '_redis_listen_with_retries', '_redis_connect',
                        '__init__') or not callable(member):
                continue
            source = inspect.getsource(member)
            assert '_redis_connect' not in source and 'self.redis.' not in source and \
                'self.pubsub' not in source, f'{cls.__name__}.{name} uses Redis itself'
    assert '_redis_listen_with_retries' in inspect.getsource(socketio.RedisManager._listen)
    # redisconn.py reads Sentinel URLs with python-socketio's own parser.
    from socketio.redis_manager import parse_redis_sentinel_url
    assert parse_redis_sentinel_url('redis+sentinel://u:p@a:1,b:2/3/main') == (
        [('a', 1), ('b', 2)], 'main', {'username': 'u', 'password': 'p', 'db': 3})


def test_redis_py_sentinel_says_a_primary_was_demoted_as_state_redis_expects():
    # state/redis.py tells "refused: not made" (503) from "no answer" (504) by this text.
    import redis.sentinel
    from notification_socketio.state.redis import DEMOTED
    assert f'raise ConnectionError("{DEMOTED}")' in inspect.getsource(
        redis.sentinel.SentinelManagedConnection.read_response)


def manager_state(manager):
    return ({namespace: {room: dict(members) for room, members in rooms.items()}
             for namespace, rooms in manager.rooms.items()},
            manager.callbacks, manager.pending_connect, manager.pending_disconnect)


def test_a_disconnect_leaves_the_manager_as_python_socketio_s_own_would():
    # delivery.py: basic_disconnect leaves the all-sockets room, the socket's own room and
    # its user's room, then lets python-socketio clean up without searching every room.
    from notification_socketio.delivery import DeliveryManager, Holder, user_room
    from notification_socketio.metrics import Metrics
    from notification_socketio.state.memory import MemoryState
    ours = DeliveryManager(MemoryState(Config.for_testing()), Metrics())
    stock = socketio.Manager()
    for manager in (ours, stock):
        manager.set_server(socketio.Server())
        manager.initialize()
        for n in range(5):
            sid = manager.connect(f'eio{n}', '/')
            manager.basic_enter_room(sid, '/', user_room(f'user{n % 2}'))
            manager.callbacks[sid] = {1: print}
            if manager is ours:   # as attach() does: a user's room comes with a Holder
                ours.holders[sid] = Holder(f'user{n % 2}', 'c', None)
        # python-socketio puts a socket in these rooms, and no other: what ours relies on.
        sid = manager.sid_from_eio_sid('eio0', '/')
        assert {room for room, members in manager.rooms['/'].items() if sid in members} == {
            None, sid, 'user:user0'}
        manager.pre_disconnect(manager.sid_from_eio_sid('eio1', '/'), '/')
    sids = {manager: [manager.sid_from_eio_sid(f'eio{n}', '/') for n in range(5)]
            for manager in (ours, stock)}
    for n in (1, 0, 2, 3, 4):
        for manager in (ours, stock):
            manager.basic_disconnect(sids[manager][n], '/')
        rename = dict(zip(sids[ours], sids[stock]))
        rooms, *rest = manager_state(ours)
        rooms = {namespace: {rename.get(room, room): {rename[sid]: eio for sid, eio in
                                                      members.items()}
                             for room, members in by_room.items()}
                 for namespace, by_room in rooms.items()}
        rest = [{rename.get(key, key): value for key, value in part.items()}
                if isinstance(part, dict) else part for part in rest]
        assert (rooms, *rest) == manager_state(stock), n


def test_flask_socketio_takes_our_manager():
    app = create_app(Config.for_testing())
    server = app.extensions['notification_socketio']
    assert server.socketio.server.manager is server.delivery
    assert isinstance(server.socketio, SocketIO)


def test_gunicorn_and_gevent_handler_hooks_that_worker_py_overrides():
    has(pywsgi.WSGIHandler, 'read_requestline', 'start_response', 'log_request')
    assert parameters(pywsgi.WSGIHandler.__init__)[:5] == ['self', 'sock', 'address', 'server',
                                                           'rfile']
    has(PyWSGIHandler, 'log_request')
    has(GeventWebSocketWorker, 'wsgi_handler', 'handle_exit')
    has(gevent.get_hub().loop, 'timer')   # transport.py: PINGs from a loop timer
    has(gevent.get_hub().loop, 'idle')   # transport.py: long-poll answers in a lull
    # gunicorn_conf.py: the logging HOWTO's switches for lean records.
    has(logging, '_srcfile', 'logThreads', 'logMultiprocessing')
    assert 'if _srcfile:' in inspect.getsource(logging.Logger._log)
    # worker.py: RequestHeaders replaces pywsgi's MessageClass; what is used of it.
    assert 'self.MessageClass(self.rfile, 0)' in inspect.getsource(pywsgi.WSGIHandler.read_request)
    used = set(re.findall(r'self\.headers\.(\w+)', inspect.getsource(pywsgi.WSGIHandler)))
    assert used <= {'status', 'get', 'getheader', 'typeheader', 'headers'}, used
    assert 'self.headers.items()' in inspect.getsource(PyWSGIHandler.log_request)
    # worker.py: the Date header formatted once a second, and no access-log data built
    # when no access log is on.
    assert 'if self.provided_date is None:' in inspect.getsource(
        pywsgi.WSGIHandler.finalize_headers)
    assert pywsgi.format_date_time(0) == b'Thu, 01 Jan 1970 00:00:00 GMT'
    from gunicorn.glogging import Logger
    assert isinstance(inspect.getattr_static(Logger, 'access_log_enabled'), property)
    # worker.py: Handler._write_with_headers is pywsgi's with the head and a small body
    # in one send; what it repeats of pywsgi's.
    has(pywsgi.WSGIHandler, '_write_with_headers', '_sendall', '_write', 'headers_sent',
        'response_use_chunked')
    source = inspect.getsource(pywsgi.WSGIHandler._write_with_headers)
    for line in ('self.headers_sent = True', 'self.finalize_headers()',
                 "towrite = bytearray(b'HTTP/1.1 ')", 'towrite += self.status',
                 'for header, value in self.response_headers:', 'self._sendall(towrite)',
                 'self._write(data)'):
        assert line in source, line


HEADS = [
    b'Host: a\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n',
    b'Host: a\r\nX-Twice: 1\r\nx-twice: 2\r\nConnection: Upgrade\r\n\r\n',
    b'Host: a\r\nX-Folded: one\r\n two\r\n\r\n',
    b'Host:  spaced  \r\nEmpty:\r\n\r\n',
    b'Host: a\nBare-LF: yes\n\n',
    b'Host: \xe9t\xe9\r\n\r\n',
    b'X-Long: ' + b'a' * 70000 + b'\r\n\r\n',
    b''.join(b'X-%d: v\r\n' % n for n in range(101)) + b'\r\n',
]


@pytest.mark.parametrize('head', HEADS, ids=range(len(HEADS)))
def test_request_headers_read_as_pywsgi_reads_them(head):
    import io

    from notification_socketio.worker import RequestHeaders
    ours = RequestHeaders(io.BytesIO(head))
    try:
        theirs = pywsgi.headers_factory(io.BytesIO(head))
    except http.client.HTTPException:   # more than 100 headers: pywsgi refuses it too
        assert ours.status
        return
    assert bool(ours.status) == bool(theirs.status)
    if ours.status:
        return

    def value(text):
        # Ours leaves out the whitespace around a value and joins folded lines with a
        # space (RFC 9112 5.2); pywsgi strips both before they reach the environ.
        return text if text is None else ' '.join(text.split())
    for name in ('host', 'Content-Type', 'content-length', 'x-twice', 'X-Folded', 'Empty',
                 'bare-lf', 'missing'):
        assert ours.get(name) == value(theirs.get(name)), name
        assert ours.getheader(name) == value(theirs.getheader(name)), name
    assert ours.typeheader == theirs.typeheader
    assert ours.items() == [(name, value(text)) for name, text in theirs.items()]
    del ours['content-length']
    del theirs['content-length']
    assert ours.get('Content-Length') is None and theirs.get('Content-Length') is None
    assert ours.headers == [f'{name}: {value(text)}\r\n' for name, text in theirs.items()]


def test_redis_py_reads_and_writes_with_hiredis():
    # state/redis.py: fast_paths() looks at the parser's class name; hiredis parses and
    # packs in C (a tenth of the worker's time per push with Redis, py-spy).
    connection = redis.Redis().connection_pool.make_connection()
    assert type(connection._parser).__name__ == '_HiredisParser'
    assert type(connection._command_packer).__name__ == 'HiredisRespSerializer'


def test_redis_connections_as_the_append_uses_them(redis_server):
    # state/redis.py sends a push itself, never retried: a pooled connection that is
    # connected once handed out, then one command and one answer.
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    script = client.register_script('return ARGV[1]')
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_command('EVALSHA', script.sha, 0, 'x')
        with pytest.raises(redis.exceptions.NoScriptError):
            connection.read_response()
        connection.send_command('EVAL', script.script, 0, 'x')
        assert connection.read_response() == 'x'
    finally:
        pool.release(connection)
    client.close()
    unreachable = redis.Redis.from_url('redis://127.0.0.1:9/0', socket_connect_timeout=1)
    with pytest.raises(redis.ConnectionError):
        unreachable.connection_pool.get_connection()


def test_the_real_server_runs_every_fast_path(start_server, listeners):
    server = start_server()
    listener = listeners(server.url, 'websocket').connect()
    assert listener.sio.transport() == 'websocket'
    wait_for(lambda: server.metric('nsio_websockets_direct') == 1,
             message='the WebSocket written directly')
    log = server.log()
    assert ('fast paths on: direct WebSocket writes, timer PINGs, prompt wake-ups of long-polls '
            'and Redis pushes, fast push and register routes, orjson') in log
    assert 'fast paths on: gunicorn handler' in log
    assert 'log records without thread or caller lookups' in log
    assert 'fast path OFF' not in log
    assert TOKEN not in log


def test_the_real_server_on_redis_runs_hiredis_and_pipelined_pushes(
        start_server, redis_server):
    server = start_server({'REDIS_URL': redis_server.url})
    wait_for(lambda: 'fast paths on: direct' in server.log(), message='the start-up line')
    assert 'fast push and register routes, orjson, hiredis, pipelined pushes' in server.log()


def test_concurrent_pushes_share_one_connection_to_redis(start_server, redis_server):
    # The pipelined pushes at work: 64 pushes at once (each answered with its own id)
    # open no connection per push; a pooled connection each would be dozens.
    server = start_server({'REDIS_URL': redis_server.url})
    assert server.register('u1', 'c1').status_code == 200
    with redis_server.client() as admin:
        before = int(admin.info('clients')['connected_clients'])
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            ids = list(pool.map(lambda n: server.pushed('u1', n), range(64)))
        assert len(set(ids)) == 64
        assert int(admin.info('clients')['connected_clients']) - before <= 2
    assert 'fast path OFF' not in server.log()
