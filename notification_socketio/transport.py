"""Engine.IO sockets: direct WebSocket writes, timer PINGs, the heartbeat as acknowledgement.

This module owns everything the server adds to python-engineio's sockets.

python-engineio gives every WebSocket a writer greenlet fed by a queue, and every socket a
greenlet that sleeps until its next PING. Each message then costs two greenlet switches
per socket, and each idle session two parked greenlet stacks. Here, once a socket is on
WebSocket, `send` writes the frame to the kernel at once without blocking; only when the
kernel's buffer is full does a flusher greenlet start, and bytes wait behind it in order.
PINGs come from a timer on the event loop. Everything else (polling, the upgrade, the
heartbeat, closing) is python-engineio's own.

Reading is not a greenlet's either: once the session is on WebSocket, the request's
greenlet hands the connection over (worker.Handler.detach) and ends. A read watcher on
the event loop wakes a reader greenlet (a few wait, reused) when the client sends
something, and wsproto decodes the frames however the network cut them. An idle
session holds no greenlet stack, no pywsgi handler and no read buffer: a third of the
memory it took before. What a Socket.IO client sends nearly always (whole, short text
frames: PONGs, events, acknowledgements) is decoded here, at a twentieth of wsproto's
cost (`whole_text_frames`); the first read that holds anything else (a piece of a frame,
a control frame, a fragment, anything wsproto would refuse) goes to wsproto, which then
decodes everything that socket sends.

Order is kept: a frame is written directly only when nothing waits before it, so
messages, PINGs and closes leave in the order they were sent, which the delivery
acknowledgement (below) relies on.

Messages, PINGs and everything else leave in one order per socket, and a client answers
a PING with a PONG only after it has read what was queued before it. So a PONG proves that
the client received every message sent before the matching PING: the only acknowledgement
that unmodified Socket.IO clients send. `on_ping` and `on_pong` tell the delivery.

A long-poll on a connection of its own (`Connection: close`, as socket.io-client in Node
sends; HTTP/1.0 without keep-alive) is answered in a lull of the worker: once a message
waits for it, the answer goes out when the event loop has nothing else pending (at once
on a worker with time to spare), or after LULL_WAIT at the latest. Each such poll costs
both sides a TCP connection, and a worker saturated by those clients would otherwise
answer one message per poll and spend its time on polls; this way the messages that
arrive while it is busy leave together. A poll on a connection kept alive (a browser's)
costs little and is answered at once: under load the lull held those answers 60 to 100
ms for next to no gain. "At once" means in the same turn of the event loop: a poll that
waits for a packet wakes right after the greenlet that queued it (PollQueue, wakeup),
not after every other greenlet that the turn made ready.

Such a session that is answered back to back (its last two answers within twice
LONG_POLL_GATHER of each other: a stream of messages) is paced: its next answer leaves
no sooner than LONG_POLL_GATHER after the previous one, and carries what came meanwhile.
A worker with time to spare has no lull to gather in, and a stream would cost the client
and the worker a TCP connection per message. The first two answers after a quiet spell
go at once: a registration's CONNECT and acknowledgement (or the answer that ends the
poll when a client upgrades to WebSocket, as the official clients do while connecting),
a lone notification.

A client that stops reading cannot make the server hold its messages without bound:
past MAX_SOCKET_BUFFER_BYTES waiting for it (behind the flusher on WebSocket, in the
queue on long-polling), its transport is dropped. The official client then reconnects,
and its registration replays what it missed from the history.
"""
import contextlib
import io
import logging
import socket as _socket
import struct
import time

import gevent
import gevent.event
import gevent.hub
import gevent.queue
import greenlet
import wsproto
from wsproto import events as wsproto_events
from wsproto import utilities as wsproto_errors
from engineio import exceptions
from engineio import packet as eio_packet
from engineio import socket as eio_socket

from . import wakeup

_CLOSE_FRAME = b'\x88\x02\x03\xe8'   # WebSocket close, status 1000
_NO_BODY = io.BytesIO(b'')   # a finished request's wsgi.input
WS_READ_SIZE = 65536   # what one wake-up of a parked WebSocket reads at most
log = logging.getLogger(__name__)


def frame(pkt):
    """The WebSocket frame of an Engine.IO packet (kept on the packet for the next socket)."""
    cached = getattr(pkt, 'ws_frame', None)
    if cached is not None:
        return cached
    encoded = pkt.encode()
    if isinstance(encoded, str):
        opcode, payload = 0x81, encoded.encode()
    else:
        opcode, payload = 0x82, bytes(encoded)
    length = len(payload)
    if length < 126:
        header = bytes((opcode, length))
    elif length < 65536:
        header = struct.pack('!BBH', opcode, 126, length)
    else:
        header = struct.pack('!BBQ', opcode, 127, length)
    pkt.ws_frame = header + payload
    return pkt.ws_frame


# What decoding a packet raises when a client sent something else (JSON nested too deep
# included).
_MALFORMED = (ValueError, TypeError, KeyError, IndexError, RecursionError)


def whole_text_frames(data):
    """The texts of `data`'s frames, if it holds only whole text frames from a client:
    final (not fragmented), no extension bits, masked, up to 65,535 bytes (length in its
    shortest form), valid UTF-8. None otherwise, and wsproto decodes `data`.
    """
    texts = []
    start, end = 0, len(data)
    while start < end:
        if end - start < 6 or data[start] != 0x81:   # FIN, text, RSV bits clear
            return None
        length = data[start + 1] ^ 0x80   # with the mask bit a client must set
        if length < 126:
            head = start + 6
        elif length == 126 and end - start >= 8:
            length = (data[start + 2] << 8) | data[start + 3]
            head = start + 8
            if length < 126:   # wsproto refuses a length in more bytes than it needs
                return None
        else:   # unmasked, 64-bit length or not all there
            return None
        stop = head + length
        if stop > end:
            return None
        key = data[head - 4:head]
        payload = int.from_bytes(data[head:stop], 'little') ^ int.from_bytes(
            (key * ((length + 3) >> 2))[:length], 'little')
        try:
            texts.append(payload.to_bytes(length, 'little').decode('utf-8'))
        except UnicodeDecodeError:
            return None
        start = stop
    return texts


def malformed(eio_socket, error):
    """A client sent bytes that are no Engine.IO or Socket.IO packet: one line, no traceback."""
    log.warning('socket %s sent a malformed packet (%s: %.100s); dropping it',
                eio_socket.sid[:4] + '***', type(error).__name__, error)


_reported_off = set()


def _fast_path_off(name, why):
    """Say, once per process, that a fast path could not be used: never silently."""
    if name not in _reported_off:
        _reported_off.add(name)
        log.warning('fast path OFF: %s (%s); the server works, slower. A library upgrade '
                    'moved what it relies on: see tests/test_contract.py', name, why)


def fast_paths(eio):
    """The names of this module's fast paths that the installed libraries allow."""
    on = []
    if all(hasattr(eio_socket.Socket, name) for name in (
            '_websocket_handler', 'check_ping_timeout', 'schedule_ping', 'poll',
            'handle_post_request')):
        on.append('direct WebSocket writes')
    else:
        _fast_path_off('direct WebSocket writes', 'python-engineio\'s Socket changed')
    if hasattr(gevent.get_hub().loop, 'timer'):
        on.append('timer PINGs')
    else:
        _fast_path_off('timer PINGs', 'gevent\'s loop has no timer')
    if wakeup.available():
        on.append('prompt wake-ups of long-polls and Redis pushes')
    else:
        _fast_path_off('prompt wake-ups', 'gevent\'s watchers have no feed()')
    return on


def _size(pkt):
    """What a packet weighs in a long-polling queue (its encoding is cached on it)."""
    return len(pkt.encode()) if pkt.data is not None else 1


class Hooks:
    """What DirectSockets of one Engine.IO server report to, their buffer limit, and how
    long a stream's long-polls on connections of their own gather (module docstring)."""

    def __init__(self, max_buffer_bytes, on_ping, on_pong, on_overflow, poll_gather=0.0):
        self.max_buffer_bytes = max_buffer_bytes
        self.poll_gather = poll_gather  # LONG_POLL_GATHER, seconds
        self.on_ping = on_ping          # (eio_sid): a PING is queued behind what was sent
        self.on_pong = on_pong          # (eio_sid): the client answered it
        self.on_overflow = on_overflow  # (): a slow consumer was dropped


def install(eio, hooks):
    """Make every new Engine.IO socket of server `eio` a DirectSocket reporting to `hooks`.

    A Socket.IO packet that cannot be decoded drops its socket with one log line, where
    python-socketio would log a traceback per packet and keep the socket. The server has
    one namespace, "/": a CONNECT to any other gets the protocol's CONNECT_ERROR.
    """
    eio.nsio_hooks = hooks
    if wakeup.available():
        eio.create_queue = PollQueue   # every socket's queue (python-engineio's seam)
    on_message = eio.handlers['message']

    def message(sid, data):
        namespace = data[1:].split(',', 1)[0] if isinstance(data, str) and \
            data.startswith('0/') else '/'
        if namespace != '/':
            # A Socket.IO CONNECT to a namespace other than "/": the protocol's error
            # object, where python-socketio would send a bare string.
            eio.send(sid, '4%s,{"message":"Invalid namespace"}' % namespace)
            return None
        try:
            return on_message(sid, data)
        except _MALFORMED as error:
            socket = eio.sockets.get(sid)
            if socket is not None:
                malformed(socket, error)
                socket.close(wait=False, abort=True,
                             reason=eio.reason.TRANSPORT_ERROR)
            return None

    eio.on('message', message)
    on_connect = eio.handlers['connect']

    def connect(sid, environ):
        socket = eio.sockets.get(sid)
        if type(socket) is eio_socket.Socket:
            socket.__class__ = DirectSocket
        engineio3 = environ.get('nsio.engineio3', False)
        if engineio3:
            socket.engineio3 = True
        accepted = on_connect(sid, environ)
        if engineio3 and accepted is not False:
            # Socket.IO protocol 4 (socket.io-client 1.x, 2.x): the client joins "/"
            # without sending CONNECT; the server connects it at once.
            message(sid, '0')
        return accepted

    eio.on('connect', connect)


#: Reader greenlets waiting for the next WebSocket that has something to read, at most
#: MAX_IDLE_READERS. A greenlet spawned for each wake-up would cost a new stack each time
#: (memory mapped and unmapped, its spawning stack recorded): with 20,000 sessions, their
#: PONGs alone kept the worker busy.
_idle_readers = []
MAX_IDLE_READERS = 64


def _reader(socket):
    """Read `socket`, then wait to be given the next one (see DirectSocket._wake)."""
    hub = gevent.get_hub()
    while True:
        socket._read()
        socket = None
        if len(_idle_readers) >= MAX_IDLE_READERS:
            return
        _idle_readers.append(greenlet.getcurrent())
        socket = hub.switch()
        while not isinstance(socket, DirectSocket):   # not from _wake: still waiting
            socket = hub.switch()


#: Seconds a long-poll answer waits at most for a lull of the worker (module docstring).
LULL_WAIT = 0.1


class Lull:
    """Wakes whoever waits once the event loop has nothing else pending.

    One libev idle watcher for all waiters, started while some wait: libev runs it only
    in a loop turn with no other event pending.
    """

    def __init__(self):
        self.waiting = []
        self.watcher = None

    def wait(self, timeout):
        """Return True in the next lull, False if `timeout` seconds came first."""
        event = gevent.event.Event()
        self.waiting.append(event)
        if self.watcher is None:
            self.watcher = gevent.get_hub().loop.idle()
        if not self.watcher.active:
            self.watcher.start(self._lull)
        try:
            return event.wait(timeout)
        finally:
            with contextlib.suppress(ValueError):   # gone already if the lull came
                self.waiting.remove(event)

    def _lull(self):
        self.watcher.stop()
        waiting, self.waiting = self.waiting, []
        for event in waiting:
            event.set()


_LULL = Lull()


class PollQueue(gevent.queue.JoinableQueue):
    """A socket's packet queue whose put wakes a waiting long-poll in the same turn of the
    event loop (wakeup.soon), not after every other greenlet that the turn made ready."""

    poll = None   # the Waiter of the long-poll waiting in wait()

    def put(self, item, block=True, timeout=None):
        super().put(item, block, timeout)
        if self.poll is not None:
            wakeup.soon(self.wake, self.poll)

    def wait(self, timeout):
        """Wait for a packet (without taking it); gevent.queue.Empty after `timeout`."""
        if self.qsize() or self.poll is not None:
            return super().peek(timeout=timeout)
        self.poll = waiter = gevent.hub.Waiter()
        timer = gevent.get_hub().loop.timer(timeout)
        timer.start(self.wake, waiter)
        try:
            waiter.get()
        finally:
            timer.close()
            if self.poll is waiter:
                self.poll = None
        return super().peek(block=False)   # Empty if the time ran out

    def wake(self, waiter):
        """Resume `waiter`'s wait, unless something resumed it already."""
        if waiter is not None and self.poll is waiter:
            self.poll = None
            waiter.switch(None)


def one_shot(environ):
    """True if the request's connection closes after its answer (HTTP/1.1 with
    `Connection: close`, HTTP/1.0 without `Connection: keep-alive`)."""
    tokens = {token.strip().lower()
              for token in environ.get('HTTP_CONNECTION', '').split(',')}
    if environ.get('SERVER_PROTOCOL') == 'HTTP/1.0':
        return 'keep-alive' not in tokens
    return 'close' in tokens


class DirectSocket(eio_socket.Socket):
    """An Engine.IO socket that writes WebSocket frames without a writer greenlet."""

    engineio3 = False    # a client of Engine.IO 3 (socket.io-client 1.x, 2.x): it PINGs
    conn = None          # the connection's gevent socket, once on WebSocket
    backlog = None       # frames waiting behind a running flusher, or None
    backlog_bytes = 0
    shut = False         # shutdown() once the backlog is out
    ping_timer = None
    forget_timer = None   # long-polling: leaves python-engineio's sockets after closing
    ping_again = False   # PING again as soon as the PING under way is answered
    queued_bytes = 0     # on long-polling: what waits in the queue
    overflowed = False
    frames = None        # wsproto's state of the client's frames, once it decodes them
    watcher = None       # once parked: the event loop's read watcher on `conn`
    message_parts = None  # the parts of a message still arriving, once parked
    message_size = 0
    one_shot = False     # the poll under way came on a connection of its own (not the
                         # handshake's: its answer, the OPEN packet, has nothing to gather)
    answered = 0.0       # when the last two answers to such polls left (time.monotonic())
    answered_before = float('-inf')

    def send(self, pkt):
        """Send a packet to the client (never blocks)."""
        if self.overflowed:
            return
        if self.engineio3 and pkt.packet_type == eio_packet.MESSAGE and \
                isinstance(pkt.data, str) and pkt.data.startswith('0{'):
            # Socket.IO protocol 4's CONNECT carries no data; 2.x parsers refuse it.
            pkt = eio_packet.Packet(eio_packet.MESSAGE, '0')
        if pkt.packet_type == eio_packet.PING:
            self.server.nsio_hooks.on_ping(self.sid)
        if self.conn is None:
            super().send(pkt)
            if not self.closed:
                self.queued_bytes += _size(pkt)
                if self.queued_bytes > self.server.nsio_hooks.max_buffer_bytes:
                    self.overflow()
            return
        if self.check_ping_timeout():
            self._write(frame(pkt))

    def receive(self, pkt):
        """A packet from the client; a PONG acknowledges what was sent before its PING."""
        if self.engineio3 and pkt.packet_type == eio_packet.PING:
            self.send(eio_packet.Packet(eio_packet.PONG, pkt.data))
            self._expect_client_ping()
            return
        super().receive(pkt)
        if pkt.packet_type == eio_packet.PONG:
            self.server.nsio_hooks.on_pong(self.sid)

    def handle_post_request(self, environ):
        """A long-polling POST; a body that is no Engine.IO payload drops the socket."""
        try:
            return super().handle_post_request(environ)
        except _MALFORMED as error:
            malformed(self, error)
            self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_ERROR)
            raise exceptions.EngineIOError() from None   # python-engineio answers 400

    def poll(self):
        """Wait for packets to send on long-polling (python-engineio's), counting them out.

        Once one waits, the answer to a poll on a connection of its own waits for a lull
        of the worker, or is paced if the session is answered back to back (module
        docstring).
        """
        timeout = self.server.ping_interval + self.server.ping_timeout
        try:
            if self.one_shot or not isinstance(self.queue, PollQueue):
                self.queue.peek(timeout=timeout)   # the answer waits for a lull anyway
            else:
                self.queue.wait(timeout)
        except self.server.get_queue_empty_exception():
            raise exceptions.QueueEmpty() from None
        if self.one_shot:
            self._gather()
        packets = [self._exact_handshake(pkt) for pkt in super().poll()]
        self.queued_bytes = max(self.queued_bytes - sum(map(_size, packets)), 0)
        if self.engineio3:
            # An Engine.IO 3 client answers no PING, but it polls again only once it has
            # read this response: the next poll acknowledges what goes out now.
            self.server.nsio_hooks.on_ping(self.sid)
        return packets

    def _gather(self):
        """Before answering a poll on a connection of its own: pace a stream, else wait for
        a lull of the worker (module docstring)."""
        gather = self.server.nsio_hooks.poll_gather
        wait = self.answered + gather - time.monotonic()
        if wait > 0 and self.answered - self.answered_before < 2 * gather:
            gevent.sleep(wait)
        else:
            _LULL.wait(LULL_WAIT)
        self.answered_before, self.answered = self.answered, time.monotonic()

    def handle_get_request(self, environ, start_response):
        """A long-poll; from an Engine.IO 3 client, it acknowledges the previous one."""
        if self.engineio3 and not self.upgraded:
            self.server.nsio_hooks.on_pong(self.sid)
        self.one_shot = one_shot(environ)
        return super().handle_get_request(environ, start_response)

    def _exact_handshake(self, pkt):
        """The handshake with pingInterval in milliseconds, as the protocol has it.

        python-engineio truncates the interval to whole seconds first, so PING_INTERVAL=0.3
        was advertised as 0 and a client would ping (Engine.IO 3) or time out too early.
        """
        if pkt.packet_type == eio_packet.OPEN and isinstance(pkt.data, dict):
            pkt.data['pingInterval'] = round(1000 * (
                self.server.ping_interval + self.server.ping_interval_grace_period))
        return pkt

    def waiting_bytes(self):
        """What was sent and waits for the client (not counting the kernel's buffer)."""
        return self.queued_bytes if self.conn is None else self.backlog_bytes

    def wait_until_read(self):
        """Pause a long replay while the client reads it; False if the socket is gone.

        Past half of MAX_SOCKET_BUFFER_BYTES waiting, wait until the client took most of
        it, so that catching up on a big history never counts as a slow consumer. A
        client that reads nothing for a whole heartbeat is dropped.
        """
        limit = self.server.nsio_hooks.max_buffer_bytes
        if self.waiting_bytes() <= limit // 2:
            return True
        deadline = time.monotonic() + self.server.ping_interval + self.server.ping_timeout
        while self.waiting_bytes() > limit // 4:
            if self.closed:
                return False
            if time.monotonic() > deadline:
                self.overflow()
                return False
            gevent.sleep(0.01)
        return True

    def overflow(self):
        """The client does not read: drop its transport, from a greenlet of its own."""
        if self.overflowed:
            return
        self.overflowed = True
        log.warning('socket %s dropped: %d bytes waiting for a client that does not read '
                    '(MAX_SOCKET_BUFFER_BYTES); it recovers from the history on its return',
                    self.sid[:4] + '***', self.waiting_bytes())
        self.server.nsio_hooks.on_overflow()
        gevent.spawn(self.close, wait=False, abort=True,
                     reason=self.server.reason.TRANSPORT_ERROR)

    def _write(self, data):
        if self.backlog is not None:
            self.backlog.append(data)
            self.backlog_bytes += len(data)
            if self.backlog_bytes > self.server.nsio_hooks.max_buffer_bytes:
                self.overflow()
            return
        try:
            sent = self.conn.send(data, 0, 0.0)   # timeout 0: one attempt, never waits
        except BlockingIOError:
            sent = 0
        except OSError:
            self._drop()
            return
        if sent < len(data):
            self.backlog = [data[sent:]]
            self.backlog_bytes = len(data) - sent
            gevent.spawn(self._flush)

    def _flush(self):
        """Write what waits, in order, as the client reads it; then stop."""
        try:
            while self.backlog:
                data = b''.join(self.backlog)
                self.backlog = []
                self.backlog_bytes = 0
                self.conn.sendall(data)
        except OSError:
            self._drop()
        finally:
            self.backlog = None
            self.backlog_bytes = 0
        if self.shut:
            self._shutdown()

    def close(self, wait=True, abort=False, reason=None):
        """Close the socket; on WebSocket, end the connection once what was sent is out."""
        if self.ping_timer is not None:
            self.ping_timer.close()
        if self.conn is None:
            # python-engineio waits, unbounded, for the client to poll what was queued;
            # a client that never polls again (one that only POSTs, say) would hold the
            # caller forever. Wait a few seconds at most.
            if self.closed or self.closing:
                return None
            super().close(wait=False, abort=abort, reason=reason)
            # Forgotten once the client had time to poll the CLOSE packet (python-engineio
            # forgets it at once when it does).
            self.forget_timer = gevent.get_hub().loop.timer(self.server.ping_timeout)
            self.forget_timer.start(self._forget)
            if wait:
                self.queue.join(timeout=min(5.0, self.server.ping_timeout))
            return None
        if self.closed or self.closing:
            return
        self.closing = True
        self.server._trigger_event('disconnect', self.sid,
                                   reason or self.server.reason.SERVER_DISCONNECT,
                                   run_async=False)
        self._forget()
        if abort:   # dropped: no close packet, so that the client reconnects
            self.backlog = None
            self.closed = self.shut = True
            self._shutdown()
            return
        self._write(frame(eio_packet.Packet(eio_packet.CLOSE)))
        self._write(_CLOSE_FRAME)
        self.closed = True
        self.shut = True
        if self.backlog is None:
            self._shutdown()

    def _drop(self):
        """The connection failed: end it; the reader greenlet then closes the socket."""
        self.backlog = None
        self._shutdown()

    def _shutdown(self):
        try:
            self.conn.shutdown(_socket.SHUT_RDWR)
        except OSError:
            pass

    def schedule_ping(self):
        """The next PING after `ping_interval`, from a timer rather than a sleeping greenlet."""
        if self.engineio3:
            self.last_ping = None   # no PING of ours awaits an answer: never timed out so
            self._expect_client_ping()
            return
        if self.last_ping:
            self.last_ping = None
            if self.ping_again:
                self.ping_again = False
                self._ping()
                return
            self._arm(self.server.ping_interval, self._ping)

    def ping_soon(self):
        """PING now, behind what was sent: its PONG acknowledges it within a round trip.

        For messages whose sender waits to learn they arrived (a push with a fallback).
        Between heartbeats the PING goes at once and the next interval starts from its
        PONG; with a PING under way, another follows its PONG. Engine.IO 3 clients PING
        on their own clock: nothing to do.
        """
        if self.engineio3 or self.closing or self.closed:
            return
        if self.last_ping is None and self.ping_timer is not None:
            self.ping_timer.stop()
            self._ping()
        else:
            self.ping_again = True

    def _expect_client_ping(self):
        """Engine.IO 3: the client PINGs; one that does not for a heartbeat is gone."""
        self._arm(self.server.ping_interval + self.server.ping_timeout, self._client_gone)

    def _client_gone(self):
        self.close(wait=False, abort=True, reason=self.server.reason.PING_TIMEOUT)

    def _ping(self):
        if not self.closing and not self.closed:
            self.last_ping = time.time()
            self.send(eio_packet.Packet(eio_packet.PING))
            if self.closing or self.closed:   # the send found it gone
                return
            # Its PONG is due within ping_timeout (python-engineio's client-monitor task,
            # which looked for missed ones, is off: create_app).
            self._arm(self.server.ping_timeout, self._pong_missed)

    def _arm(self, seconds, callback):
        """The socket's one heartbeat timer: `callback` in a greenlet, `seconds` from now.

        A new timer each time: libev restarts a fired one-shot timer at once (it keeps no
        interval), which PINGed again right after every PONG.
        """
        if self.ping_timer is not None:
            self.ping_timer.close()
        self.ping_timer = gevent.get_hub().loop.timer(seconds)
        self.ping_timer.start(gevent.spawn, callback)

    def _pong_missed(self):
        if self.last_ping and not self.closing and not self.closed:
            self.close(wait=False, abort=False, reason=self.server.reason.PING_TIMEOUT)

    def _forget(self):
        """Leave python-engineio's sockets (its client-monitor task did it; it is off)."""
        if self.forget_timer is not None:
            self.forget_timer.close()
            self.forget_timer = None
        if self.server.sockets.get(self.sid) is self:
            del self.server.sockets[self.sid]

    def _websocket_handler(self, ws):
        """python-engineio's handler, writing directly once the upgrade is done."""
        conn = getattr(getattr(getattr(ws, '_sock', None), 'stream', None), 'handler', None)
        if conn is None:   # not gevent-websocket: python-engineio's writer greenlet
            _fast_path_off('direct WebSocket writes', f'no gevent-websocket connection '
                                                      f'behind {type(ws).__name__}')
            return super()._websocket_handler(ws)
        handler, conn = conn, conn.socket

        def websocket_wait():
            data = ws.wait()
            if data and len(data) > self.server.max_http_buffer_size:
                raise ValueError('packet is too large')
            return data

        if self.connected:
            # An upgrade from polling: sends queue up until it is done.
            self.upgrading = True
            pkt = websocket_wait()
            decoded = eio_packet.Packet(encoded_packet=pkt)
            if decoded.packet_type != eio_packet.PING or decoded.data != 'probe':
                self.upgrading = False
                return []
            ws.send(eio_packet.Packet(eio_packet.PONG, data='probe').encode())
            self.queue.put(eio_packet.Packet(eio_packet.NOOP))   # ends the pending poll
            pkt = websocket_wait()
            decoded = eio_packet.Packet(encoded_packet=pkt)
            if decoded.packet_type != eio_packet.UPGRADE:
                self.upgraded = False
                self.upgrading = False
                return []
            self.upgraded = True
            self.upgrading = False
        else:
            self.connected = True
            self.upgraded = True

        # What was queued goes first, then everything is written directly (no switch
        # happens between the two, so nothing can slip in between).
        self.conn = conn
        self._drain_queue()
        if self.closed:
            self.shut = True
            self._write(_CLOSE_FRAME)
            if self.backlog is None:
                self._shutdown()

        detach = getattr(handler, 'detach', None)
        taken = detach() if detach is not None and not self.closed else None
        if taken is not None:
            # python-socketio keeps this environ for the session's life (its copy, made by
            # Flask-SocketIO's middleware, that gevent-websocket's clean-up does not see):
            # without its WebSocket and request body, the handler and its read buffer go.
            ws.environ['wsgi.websocket'] = None
            ws.environ['wsgi.input'] = _NO_BODY
            self._park(*taken)
            return []
        if not self.closed:
            _fast_path_off('idle WebSockets read by the event loop',
                           f'{type(handler).__name__} cannot hand its connection over')
        while not self.closed:
            try:
                p = websocket_wait()
            except Exception:
                break
            if p is None:
                break
            if not self._dispatch(p):
                break

        self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
        return []

    def _dispatch(self, p):
        """A message from the client; False when the socket must end."""
        try:
            self.receive(eio_packet.Packet(encoded_packet=p))
        except _MALFORMED as error:   # not an Engine.IO packet
            malformed(self, error)
            return False
        except exceptions.UnknownPacketError:
            pass
        except exceptions.SocketIsClosedError:
            return False
        except Exception:
            self.server.logger.exception('Unknown receive error')
            return False
        return True

    def _park(self, conn, already_read):
        """Read the WebSocket from the event loop: a quiet client costs no greenlet.

        A read watcher on the connection wakes a reader greenlet (`_reader`) when the
        client has sent something; whole text frames are decoded at once, and wsproto
        decodes the rest, however the frames were cut (module docstring).
        """
        self.watcher = gevent.get_hub().loop.io(conn.fileno(), 1)
        alive = self._take(already_read) if already_read else not self.closed
        if alive:
            self.watcher.start(self._wake)
        else:
            self._end()

    def _wake(self):
        # In the event loop: nothing here may wait. The watcher stays off while a greenlet
        # reads, so that frames are handled one greenlet at a time, in order.
        self.watcher.stop()
        while _idle_readers:
            reader = _idle_readers.pop()
            if not reader.dead:
                reader.switch(self)   # as gevent wakes its own waits
                return
        gevent.spawn(_reader, self)

    def _read(self):
        try:
            data = self.conn.recv(WS_READ_SIZE)
            alive = bool(data) and self._take(data)
        except OSError:
            alive = False
        except Exception:   # never leave the connection without a reader
            log.exception('socket %s: reading its WebSocket failed', self.sid[:4] + '***')
            alive = False
        if alive:
            self.watcher.start(self._wake)
        else:
            self._end()

    def _take(self, data):
        """Handle what the client sent; False when the socket must end."""
        frames = self.frames
        if frames is None:
            texts = whole_text_frames(data)
            if texts is not None:
                for p in texts:
                    if not self._message(p):
                        return False
                return not self.closed
            frames = self.frames = wsproto.Connection(wsproto.ConnectionType.SERVER)
        frames.receive_data(data)
        for event in frames.events():
            if isinstance(event, (wsproto_events.TextMessage, wsproto_events.BytesMessage)):
                parts = self.message_parts
                if parts is None and event.message_finished:
                    p = event.data   # the usual case: a message in one piece
                else:   # in pieces: the attributes are set only then (an idle socket's
                    if parts is None:   # dict stays small)
                        parts = self.message_parts = []
                        self.message_size = 0
                    parts.append(event.data)
                    self.message_size += len(event.data)
                    if self.message_size > self.server.max_http_buffer_size:
                        return False
                    if not event.message_finished:
                        continue
                    self.message_parts = None
                    p = parts[0][:0].join(parts)
                if not self._message(p):
                    return False
            elif isinstance(event, wsproto_events.Ping):
                self._write(frames.send(event.response()))
            elif isinstance(event, wsproto_events.CloseConnection):
                # The client closes, or its bytes broke the protocol (the code says which).
                with contextlib.suppress(wsproto_errors.LocalProtocolError):
                    self._write(frames.send(event.response()))
                return False
        return not self.closed

    def _message(self, p):
        """A whole message from the client; False when the socket must end."""
        if len(p) > self.server.max_http_buffer_size:
            return False   # as python-engineio: the connection is dropped
        return self._dispatch(p) and not self.closed

    def _end(self):
        """The connection is over: close the socket, the watcher and the connection."""
        self.watcher.close()
        self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
        self.conn.close()
        if self.server.sockets.get(self.sid) is self:
            del self.server.sockets[self.sid]

    def _drain_queue(self):
        """Write the packets queued before the switch to direct writes.

        It stops at the None that close() queues: the socket is closed then.
        """
        empty = self.server.get_queue_empty_exception()
        while True:
            try:
                pkt = self.queue.get(block=False)
            except empty:
                return
            self.queue.task_done()
            if pkt is None:
                return
            self._write(frame(self._exact_handshake(pkt)))
