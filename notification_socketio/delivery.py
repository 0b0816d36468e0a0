"""Delivery: the one path every message takes, from the history to the user's sockets.

`DeliveryManager` is python-socketio's client manager (rooms, participants), extended
the way its own managers are: it encodes a message once and sends it to each socket of
the user's room. It also knows which socket holds which registration (`Holder`), so that
each gets the user's messages in id order, live or replayed from the history, with no
gap between the two: while a claim (or a catch-up after the message queue was away)
reads the history, live messages for that socket are held back, and a message is never
sent to a socket that already got it or a newer one.

What a socket has received is learnt from Engine.IO's heartbeat, the one acknowledgement
every unmodified client sends: a PONG answers a PING that was queued behind the messages
sent before it, so when it arrives the client has them all (transport.py calls
`on_ping` and `on_pong`). That id is stored with the registration; the next socket to
claim it gets everything after it.

One socket's `register` and disconnect take effect one at a time, in the order they
came (python-socketio runs event handlers concurrently), and every step after a wait on
the state checks that the socket is still there.
"""
import contextlib
import logging

import gevent
import gevent.lock
import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from .state import EVERYONE, StateUnavailable, parse_message_id

NAMESPACE = '/'
#: Sorts before every message id.
_BEFORE_ALL = (-1, -1)
#: Catch-ups reading the history at once after the message queue came back.
_CATCH_UP_CONCURRENCY = 32
_CATCH_UP_MAX_DELAY = 2.0
log = logging.getLogger(__name__)


def user_room(user_id):
    """The Socket.IO room that holds every socket claiming a registration of `user_id`."""
    return 'user:' + user_id


def redact(connection_id):
    """A connectionId as it may appear in logs: enough to correlate, too little to claim."""
    return connection_id[:4] + '***'


class Holder:
    """What this process knows of one socket that holds a registration."""

    __slots__ = ('user_id', 'connection_id', 'shard', 'last_sent', 'last_key', 'replaying',
                 'held_back', 'history_stale', 'ping_unanswered', 'sent_before_ping')

    def __init__(self, user_id, connection_id, start, shard=0):
        self.user_id = user_id
        self.connection_id = connection_id
        self.shard = shard   # of the state: its broadcasts are the ones with its ids
        # The newest message id sent to the socket (or where it starts), and its sort key.
        self.last_sent = start
        self.last_key = parse_message_id(start) if start else _BEFORE_ALL
        # While a replay runs, live messages wait in `held_back`, in id order.
        self.replaying = True
        self.held_back = []
        # The message queue was away while a replay ran: read the history once more.
        self.history_stale = False
        # A PING is on its way; what had been sent before it, which its PONG confirms.
        self.ping_unanswered = False
        self.sent_before_ping = None

    def sent(self, message_id, key):
        """The message `message_id` (sort key `key`) went out to the socket."""
        self.last_sent, self.last_key = message_id, key


class DeliveryManager(socketio.Manager):
    """python-socketio's in-process manager, delivering the users' messages.

    With the in-memory state, a push is delivered here at once; a subclass on a message
    queue (fanout.py) delivers what every process published instead.
    """

    def __init__(self, state, metrics, **manager_options):
        super().__init__(**manager_options)
        self.state = state
        self.holders = {}             # sid -> Holder
        self.register_failures = {}   # sid -> failed `register` attempts
        self._locks = {}              # sid -> [lock, greenlets using it]
        self._catch_up_slots = gevent.lock.BoundedSemaphore(_CATCH_UP_CONCURRENCY)
        self._live = metrics.deliveries.labels('live')
        self._replayed = metrics.deliveries.labels('replayed')
        self._recoveries = metrics.recoveries
        self._revocations = metrics.revocations

    # The backend's side: push, broadcast, revoke.

    def push(self, targets, message, idempotency=None, fallback_after=None):
        """Keep `message` in each target's history and send it to its sockets.

        A target is a userId, or EVERYONE (a broadcast). Returns the state's Appended,
        one Entry per target; a push repeated with its Idempotency is sent no more. With
        `fallback_after`, its sockets are asked to acknowledge it at once (`ping_soon`).
        """
        appended = self.state.append(targets, message, idempotency, fallback_after)
        if self.state.local and not appended.repeated:
            for target, entry in zip(targets, appended.entries):
                self.deliver(target, entry, bool(fallback_after))
        return appended

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

    def deliver(self, target, entry, acknowledge_soon=False, shard=None):
        """Send an appended entry to this process's sockets of a user, or all (never blocks).

        `acknowledge_soon`: the push waits to learn that it arrived (a fallback). `shard`:
        the state's shard the entry is from; a broadcast goes to the sockets of its users.
        """
        key = parse_message_id(entry.message_id)
        encoded = None
        sent = 0
        for sid, eio_sid in self._recipients(target, shard):
            holder = self.holders.get(sid)
            if holder is None:
                continue
            if holder.replaying:
                holder.held_back.append(entry)
                continue
            if key <= holder.last_key:
                continue   # a late copy of a message a replay sent already
            encoded = encoded or self.encode(entry)
            self.server._send_eio_packet(eio_sid, encoded)
            holder.sent(entry.message_id, key)
            sent += 1
            if acknowledge_soon:
                self._ping_soon(eio_sid)
        self._live.inc(sent)

    def _ping_soon(self, eio_sid):
        ping_soon = getattr(self.server.eio.sockets.get(eio_sid), 'ping_soon', None)
        if ping_soon is not None:
            ping_soon()

    def basic_disconnect(self, sid, namespace, **kwargs):
        """python-socketio's, without its walk through every room of the namespace.

        It copies and searches the namespace's rooms (one per socket, one per user) for
        the socket: O(sockets) per disconnect, O(n²) for a crowd that leaves. A socket
        here is only ever in python-socketio's all-sockets room and its own (checked by
        tests/test_contract.py), and its user's, which it leaves first; python-socketio's
        method then does the rest of its clean-up with no rooms to search.
        """
        if namespace not in self.rooms:
            return super().basic_disconnect(sid, namespace, **kwargs)
        holder = self.holders.get(sid)
        for room in (None, sid, user_room(holder.user_id) if holder else None):
            self.basic_leave_room(sid, namespace, room)
        kept = self.rooms.get(namespace)
        self.rooms[namespace] = {}   # nothing left to find; no greenlet switch until restored
        try:
            super().basic_disconnect(sid, namespace, **kwargs)
        finally:
            if kept:
                self.rooms[namespace] = kept
            else:
                self.rooms.pop(namespace, None)

    def _recipients(self, target, shard=None):
        if target is EVERYONE:
            return [(sid, self.eio_sid_from_sid(sid, NAMESPACE))
                    for sid, holder in self.holders.items()
                    if shard is None or holder.shard == shard]
        return self.get_participants(NAMESPACE, user_room(target))

    # The socket's side: claim a registration, let it go.

    def attach(self, sid, user_id, connection_id, since=None):
        """Socket `sid` claims a registration: the older holder goes, the backlog follows.

        Raises NotRegistered (or StateUnavailable), leaving the socket as it was.
        """
        with self._one_at_a_time(sid):
            current = self.holders.get(sid)
            if current is not None and (current.user_id, current.connection_id) == (
                    user_id, connection_id):
                return
            claim = self.state.claim(user_id, connection_id, sid)
            if not self.is_connected(sid, NAMESPACE):
                # The socket went while the claim was on its way.
                self._release(user_id, connection_id, sid)
                return
            if current is not None:
                self._let_go(sid, current)
            holder = self.holders[sid] = Holder(user_id, connection_id,
                                                since or claim.delivered_id,
                                                self.state.shard_of(user_id))
            self.basic_enter_room(sid, NAMESPACE, user_room(user_id))
            log.info('socket claimed connection %s of user %s', redact(connection_id), user_id)
            if claim.previous_sid is not None:
                # A newer claim wins: the client reconnected before its old socket timed out.
                log.info('socket replaced on connection %s of user %s',
                         redact(connection_id), user_id)
                self.server.disconnect(claim.previous_sid, namespace=NAMESPACE)
            try:
                self._replay(sid, holder)
            except StateUnavailable:
                if self.holders.get(sid) is holder:
                    self._let_go(sid, holder)
                raise

    def detach(self, sid):
        """Socket `sid` is gone: its registration starts its expiry clock."""
        with self._one_at_a_time(sid):
            self.register_failures.pop(sid, None)
            holder = self.holders.get(sid)
            if holder is not None:
                self._let_go(sid, holder)

    def release_all(self):
        """On shutdown: let every registration held here go, in one call to the state.

        The sockets then leave without a call each (their clients reconnect elsewhere).
        """
        holders, self.holders = self.holders, {}
        for sid, holder in holders.items():
            self.basic_leave_room(sid, NAMESPACE, user_room(holder.user_id))
        try:
            self.state.release_many([(holder.user_id, holder.connection_id, sid)
                                     for sid, holder in holders.items()])
        except StateUnavailable:
            log.warning('could not release %d registrations on shutdown: state '
                        'unavailable; the next claim of each takes it over', len(holders))
            return
        log.info('released %d registrations on shutdown', len(holders))

    @contextlib.contextmanager
    def _one_at_a_time(self, sid):
        """Run one socket's claims and release in the order they came, one at a time."""
        lock = self._locks.get(sid)
        if lock is None:
            lock = self._locks[sid] = [gevent.lock.RLock(), 0]
        lock[1] += 1
        try:
            with lock[0]:
                yield
        finally:
            lock[1] -= 1
            if not lock[1]:
                del self._locks[sid]

    def _let_go(self, sid, holder):
        del self.holders[sid]
        self.basic_leave_room(sid, NAMESPACE, user_room(holder.user_id))
        self._release(holder.user_id, holder.connection_id, sid)

    def _release(self, user_id, connection_id, sid):
        try:
            self.state.release(user_id, connection_id, sid)
        except StateUnavailable:
            # It stays held by a socket that is gone: the next claim takes it over.
            log.warning('could not release connection %s of user %s: state unavailable',
                        redact(connection_id), user_id)

    # Replays: after a claim, and after the message queue was away.

    def resync(self, shard=None):
        """Catch every local socket up with the history: the message queue was away.

        Call it before any message published after the queue came back is delivered:
        from then on, live messages wait behind each socket's catch-up. With `shard`, only
        the sockets of that shard's users (its messages' queue was away). Returns the
        catch-up greenlets it started.
        """
        catch_ups = []
        for sid, holder in self.holders.items():
            if shard is not None and holder.shard != shard:
                continue
            if holder.replaying:
                holder.history_stale = True
            else:
                holder.replaying = True
                catch_ups.append(gevent.spawn(self._catch_up, sid, holder))
        return catch_ups

    def _catch_up(self, sid, holder):
        delay = 0.1
        with self._catch_up_slots:
            while self.holders.get(sid) is holder:
                try:
                    self._replay(sid, holder)
                    return
                except StateUnavailable:
                    log.warning('could not catch connection %s of user %s up: state '
                                'unavailable; retrying in %.1fs',
                                redact(holder.connection_id), holder.user_id, delay)
                gevent.sleep(delay)
                delay = min(delay * 2, _CATCH_UP_MAX_DELAY)

    def _replay(self, sid, holder):
        """Send what the history has after `holder.last_sent`, then what was held back.

        Raises StateUnavailable with the socket still replaying (live messages held).
        """
        replayed = live = 0
        while True:
            holder.history_stale = False
            batch = self.state.history(holder.user_id, holder.last_sent)
            if self.holders.get(sid) is not holder:
                return   # it disconnected, or claimed something else, meanwhile
            eio_sid = self.eio_sid_from_sid(sid, NAMESPACE)
            eio_socket = self.server.eio.sockets.get(eio_sid)
            from_history = True
            while True:
                for entry in batch:
                    key = parse_message_id(entry.message_id)
                    if key <= holder.last_key:
                        continue
                    self.server._send_eio_packet(eio_sid, self.encode(entry))
                    holder.sent(entry.message_id, key)
                    if from_history:
                        replayed += 1
                    else:
                        live += 1
                    # Live messages keep waiting while the client reads a long replay.
                    if not self._paced(eio_socket) or self.holders.get(sid) is not holder:
                        return
                if not holder.held_back:
                    break
                batch, holder.held_back, from_history = holder.held_back, [], False
            if not holder.history_stale:
                break
        holder.replaying = False
        if replayed or live:
            # A reconnecting client's replay may hold messages whose sender waits for them.
            self._ping_soon(self.eio_sid_from_sid(sid, NAMESPACE))
        self._replayed.inc(replayed)
        self._live.inc(live)   # held back during the replay, live all the same
        if replayed:
            self._recoveries.inc()
            log.info('replayed %d messages to connection %s of user %s', replayed,
                     redact(holder.connection_id), holder.user_id)

    @staticmethod
    def _paced(eio_socket):
        """Let the client read a long replay (transport.py); False if its socket is gone."""
        wait_until_read = getattr(eio_socket, 'wait_until_read', None)
        return wait_until_read is None or wait_until_read()

    # The heartbeat as an acknowledgement (called by transport.py).

    def on_ping(self, eio_sid):
        """A PING is queued to the socket, behind every message sent to it so far."""
        holder = self.holders.get(self.sid_from_eio_sid(eio_sid, NAMESPACE))
        if holder is not None:
            holder.ping_unanswered = True
            holder.sent_before_ping = holder.last_sent

    def on_pong(self, eio_sid):
        """The socket answered: it received what was sent before the PING."""
        sid = self.sid_from_eio_sid(eio_sid, NAMESPACE)
        holder = self.holders.get(sid)
        if holder is None or not holder.ping_unanswered:
            return
        holder.ping_unanswered = False
        try:
            self.state.confirm(holder.user_id, holder.connection_id, sid,
                               holder.sent_before_ping)
        except StateUnavailable:
            log.warning('could not confirm delivery on connection %s: state unavailable',
                        redact(holder.connection_id))

    def encode(self, entry):
        """The Engine.IO packet of a `message` event, encoded once for every socket."""
        packet = self.server.packet_class(
            sio_packet.EVENT, namespace=NAMESPACE,
            data=['message', entry.message, entry.meta], binary=False)   # JSON: no bytes
        return eio_packet.Packet(eio_packet.MESSAGE, packet.encode())
