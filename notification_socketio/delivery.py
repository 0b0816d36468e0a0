"""Delivery: the one path every message takes, from the history to the user's sockets.

Each socket that claimed a registration gets the user's messages in id order, live or
replayed from the history, never a gap between the two: while a claim (or a resync after
the message queue came back) reads the history, live messages for that socket wait in
`pending`, and those the replay already sent are dropped.

What a socket has received is learnt from Engine.IO's heartbeat, the one acknowledgement
every unmodified client sends: a PONG answers a PING that was queued behind the messages
sent before it, so when it arrives the client has them all (heartbeat.py). That id is
stored with the registration; the next socket to claim it gets everything after it.
"""
import logging

from engineio import packet as eio_packet
from socketio import packet as sio_packet

from .heartbeat import watch_heartbeat
from .state import EVERYONE, StateUnavailable, parse_message_id

NAMESPACE = '/'
log = logging.getLogger(__name__)


def user_room(user_id):
    """The Socket.IO room that holds every socket claiming a registration of `user_id`."""
    return 'user:' + user_id


def redact(connection_id):
    """A connectionId as it may appear in logs: enough to correlate, too little to claim."""
    return connection_id[:4] + '***'


class _Socket:
    """What this process knows of one socket that holds a registration."""

    __slots__ = ('user_id', 'connection_id', 'last_sent', 'ping_mark', 'pending')

    def __init__(self, user_id, connection_id, last_sent):
        self.user_id = user_id
        self.connection_id = connection_id
        self.last_sent = last_sent   # id of the newest message sent to it, or its start
        self.ping_mark = False       # last_sent when the unanswered PING was queued
        self.pending = []            # live entries held back while a replay runs; None: live


class Delivery:
    """Keeps which local socket holds which registration, and sends messages to them."""

    def __init__(self, socketio, state, metrics):
        self.socketio = socketio
        self.state = state
        self.sockets = {}   # sid -> _Socket
        self.register_failures = {}   # sid -> failed `register` attempts
        self._live = metrics.deliveries.labels('live')
        self._replayed = metrics.deliveries.labels('replayed')
        self._recoveries = metrics.recoveries
        self._revocations = metrics.revocations

    @property
    def server(self):
        """The python-socketio server (replaced when Flask-SocketIO initialises)."""
        return self.socketio.server

    def push(self, user_ids, message):
        """Keep `message` in each user's history and send it to their sockets; one Entry each."""
        entries = self.state.append(user_ids, message)
        if self.state.local:
            for user_id, entry in zip(user_ids, entries):
                self.deliver(user_id, entry)
        return entries

    def broadcast(self, message):
        """Keep `message` in the broadcast history and send it to every registered socket."""
        return self.push([EVERYONE], message)[0]

    def deliver(self, target, entry):
        """Send an appended entry to this process's sockets of a user, or all (never blocks)."""
        encoded = None
        sent = 0
        for sid, eio_sid in self._recipients(target):
            socket = self.sockets.get(sid)
            if socket is None:
                continue
            if socket.pending is not None:
                socket.pending.append(entry)
                continue
            encoded = encoded or self._encode(entry)
            self.server._send_eio_packet(eio_sid, encoded)
            socket.last_sent = entry.message_id
            sent += 1
        self._live.inc(sent)

    def revoke(self, user_id, connection_id=None):
        """Delete registrations and disconnect their sockets, on whichever process they are.

        A Socket.IO disconnect: the official client does not reconnect after it.
        """
        holders = self.state.revoke(user_id, connection_id)
        for sid in holders:
            self.server.disconnect(sid, namespace=NAMESPACE)
        self._revocations.inc(len(holders))
        log.info('revoked %s of user %s (%d sockets disconnected)',
                 'all connections' if connection_id is None
                 else 'connection ' + redact(connection_id), user_id, len(holders))

    def _recipients(self, target):
        if target is EVERYONE:
            manager = self.server.manager
            return [(sid, manager.eio_sid_from_sid(sid, NAMESPACE)) for sid in self.sockets]
        return self.server.manager.get_participants(NAMESPACE, user_room(target))

    def attach(self, sid, user_id, connection_id, since=None):
        """Socket `sid` claims a registration: the older holder goes, the backlog follows.

        Raises NotRegistered (or StateUnavailable), leaving the socket as it was.
        """
        current = self.sockets.get(sid)
        if current is not None and (current.user_id, current.connection_id) == (
                user_id, connection_id):
            return
        claim = self.state.claim(user_id, connection_id, sid)
        self.detach(sid)
        socket = self.sockets[sid] = _Socket(user_id, connection_id,
                                             since or claim.delivered_id)
        self.server.enter_room(sid, user_room(user_id), namespace=NAMESPACE)
        self._watch(sid)
        log.info('socket claimed connection %s of user %s', redact(connection_id), user_id)
        if claim.previous_sid is not None:
            # A newer claim wins: the client reconnected before its old socket timed out.
            log.info('socket replaced on connection %s of user %s',
                     redact(connection_id), user_id)
            self.server.disconnect(claim.previous_sid, namespace=NAMESPACE)
        try:
            self._replay(sid, socket)
        except StateUnavailable:
            self.detach(sid)
            raise

    def resync(self):
        """Catch every local socket up with the history (after the message queue was away)."""
        for sid, socket in list(self.sockets.items()):
            if socket.pending is None:
                socket.pending = []
                try:
                    self._replay(sid, socket)
                except StateUnavailable:
                    log.warning('resync failed: the state backend is unavailable')
                    return

    def detach(self, sid):
        """Socket `sid` lets its registration go (disconnect, or a claim of another one)."""
        socket = self.sockets.pop(sid, None)
        if socket is None:
            return
        self.server.leave_room(sid, user_room(socket.user_id), namespace=NAMESPACE)
        try:
            self.state.release(socket.user_id, socket.connection_id, sid)
        except StateUnavailable:
            # It stays held by a socket that is gone: the next claim takes it over.
            log.warning('could not release connection %s of user %s: state unavailable',
                        redact(socket.connection_id), socket.user_id)

    def _replay(self, sid, socket):
        """Send what the history has after `socket.last_sent`, then what waited meanwhile."""
        try:
            backlog = self.state.history(socket.user_id, socket.last_sent)
        except BaseException:
            socket.pending = None
            raise
        if self.sockets.get(sid) is not socket:
            return   # it disconnected, or claimed something else, while the history was read
        eio_sid = self.server.manager.eio_sid_from_sid(sid, NAMESPACE)
        eio_socket = self.server.eio.sockets.get(eio_sid)
        newest = backlog[-1].message_id if backlog else socket.last_sent
        live_count, batch = 0, backlog
        # Live messages keep waiting in `pending` until the replay is out: it may pause
        # (below) while the client reads, and they must not overtake it.
        while True:
            floor = parse_message_id(newest) if newest else None
            live = [entry for entry in socket.pending
                    if floor is None or parse_message_id(entry.message_id) > floor]
            socket.pending = []
            batch, live_count = batch + live, live_count + len(live)
            if not batch:
                break
            for entry in batch:
                self.server._send_eio_packet(eio_sid, self._encode(entry))
                socket.last_sent = newest = entry.message_id
                if not self._paced(eio_socket) or self.sockets.get(sid) is not socket:
                    socket.pending = None
                    return
            batch = []
        socket.pending = None
        self._replayed.inc(len(backlog))
        self._live.inc(live_count)   # held back during the replay, live all the same
        if backlog:
            self._recoveries.inc()
            log.info('replayed %d messages to connection %s of user %s', len(backlog),
                     redact(socket.connection_id), socket.user_id)

    @staticmethod
    def _paced(eio_socket):
        """Let the client read a long replay (transport.py); False if its socket is gone."""
        wait_until_read = getattr(eio_socket, 'wait_until_read', None)
        return wait_until_read is None or wait_until_read()

    def _watch(self, sid):
        """Confirm what the socket received each time it answers a heartbeat."""
        eio_sid = self.server.manager.eio_sid_from_sid(sid, NAMESPACE)
        eio_socket = self.server.eio.sockets.get(eio_sid)
        if eio_socket is not None:
            watch_heartbeat(eio_socket, lambda: self._on_ping(sid),
                            lambda: self._on_pong(sid))

    def _on_ping(self, sid):
        socket = self.sockets.get(sid)
        if socket is not None:
            socket.ping_mark = socket.last_sent

    def _on_pong(self, sid):
        socket = self.sockets.get(sid)
        if socket is None or socket.ping_mark is False:
            return
        received, socket.ping_mark = socket.ping_mark, False
        try:
            self.state.confirm(socket.user_id, socket.connection_id, sid, received)
        except StateUnavailable:
            log.warning('could not confirm delivery on connection %s: state unavailable',
                        redact(socket.connection_id))

    def _encode(self, entry):
        """The Engine.IO packet of a `message` event, encoded once for every socket."""
        packet = self.server.packet_class(
            sio_packet.EVENT, namespace=NAMESPACE,
            data=['message', entry.message, entry.meta], binary=False)   # JSON: no bytes
        return eio_packet.Packet(eio_packet.MESSAGE, packet.encode())
