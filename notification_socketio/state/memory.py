"""State in this process's memory: the embedded default, for one process.

What expires (registrations no socket holds, histories, idempotency records) sits in
queues ordered by expiry, so that dropping it costs what expired, never a scan of
everyone: every such deadline is "now + a fixed TTL", so the order of the last refresh
is the order of expiry.
"""
import collections
import time

from .base import (EVERYONE, Appended, Claim, Entry, IdempotencyConflict, NotRegistered,
                   Sessions, State, TooManySessions, parse_message_id)


class _Registration:
    __slots__ = ('holder', 'expires_at', 'delivered_id')

    def __init__(self, expires_at, delivered_id):
        self.holder = None
        self.expires_at = expires_at
        self.delivered_id = delivered_id


class MemoryState(State):
    """Registrations and histories in dicts; gevent never switches inside a method."""

    local = True

    def __init__(self, config, clock=time.time):
        super().__init__(config)
        self._clock = clock
        self._registrations = {}   # (user_id, connection_id) -> _Registration
        self._by_user = {}         # user_id -> set of its connection ids
        self._unheld = collections.OrderedDict()   # (user_id, connection_id) -> expiry
        self._histories = {}       # user_id (or EVERYONE) -> deque of Entry
        self._history_expiry = collections.OrderedDict()   # target -> newest entry's ts
        self._idempotency = collections.OrderedDict()   # key -> (fingerprint, ids, expiry)
        self._last_id = (0, -1)    # (ms, seq) of the newest message id, for every target

    def register(self, user_id, connection_id):
        now = self._sweep()
        registration = self._registrations.get((user_id, connection_id))
        if registration is None:
            self._make_room_for(user_id)
            self._registrations[(user_id, connection_id)] = _Registration(
                None, self._format_last_id())
            self._by_user.setdefault(user_id, set()).add(connection_id)
            self._expire_later((user_id, connection_id), now)
        elif registration.holder is None:
            self._expire_later((user_id, connection_id), now)

    def _make_room_for(self, user_id):
        """Below MAX_SESSIONS_PER_USER, or replace the unheld registration expiring first."""
        connection_ids = self._by_user.get(user_id, ())
        if len(connection_ids) < self.max_sessions:
            return
        unheld = [(self._registrations[(user_id, connection_id)].expires_at, connection_id)
                  for connection_id in connection_ids
                  if self._registrations[(user_id, connection_id)].holder is None]
        if not unheld:
            raise TooManySessions()
        _, oldest = min(unheld)
        self._delete(user_id, oldest)

    def claim(self, user_id, connection_id, sid):
        self._sweep()
        registration = self._registrations.get((user_id, connection_id))
        if registration is None:
            raise NotRegistered()
        previous, registration.holder = registration.holder, sid
        registration.expires_at = None
        self._unheld.pop((user_id, connection_id), None)
        return Claim(previous if previous != sid else None, registration.delivered_id)

    def confirm(self, user_id, connection_id, sid, message_id):
        registration = self._registrations.get((user_id, connection_id))
        if registration is not None and registration.holder == sid and message_id:
            registration.delivered_id = message_id

    def release(self, user_id, connection_id, sid):
        now = self._sweep()
        registration = self._registrations.get((user_id, connection_id))
        if registration is not None and registration.holder == sid:
            registration.holder = None
            self._expire_later((user_id, connection_id), now)

    def revoke(self, user_id, connection_id=None):
        connection_ids = (list(self._by_user.get(user_id, ())) if connection_id is None
                          else [connection_id])
        holders = []
        for revoked in connection_ids:
            registration = self._registrations.get((user_id, revoked))
            if registration is not None:
                if registration.holder is not None:
                    holders.append(registration.holder)
                self._delete(user_id, revoked)
        return holders

    def sessions(self, user_id):
        self._sweep()
        registrations = [self._registrations[(user_id, connection_id)]
                         for connection_id in self._by_user.get(user_id, ())]
        return Sessions(online=sum(r.holder is not None for r in registrations),
                        registered=len(registrations))

    def append(self, targets, message, idempotency=None):
        now = self._sweep()
        if idempotency is not None:
            record = self._idempotency.get(idempotency.key)
            if record is not None:
                fingerprint, message_ids, _ = record
                if fingerprint != idempotency.fingerprint:
                    raise IdempotencyConflict()
                return Appended([Entry(message_id, parse_message_id(message_id)[0], message)
                                 for message_id in message_ids], repeated=True)
        entries = []
        for target in targets:
            ms = max(int(now * 1000), self._last_id[0])
            seq = self._last_id[1] + 1 if ms == self._last_id[0] else 0
            self._last_id = (ms, seq)
            entry = Entry(f'{ms}-{seq}', ms, message)
            entries.append(entry)
            # Only a registration replays a history, and a new one starts after this.
            if self.history_size and self.history_ttl and (
                    target is EVERYONE or target in self._by_user):
                history = self._histories.get(target)
                if history is None:
                    history = self._histories[target] = collections.deque(
                        maxlen=self.history_size)
                history.append(entry)
                self._history_expiry[target] = ms
                self._history_expiry.move_to_end(target)
        if idempotency is not None:
            self._idempotency[idempotency.key] = (
                idempotency.fingerprint, [entry.message_id for entry in entries],
                now + self.idempotency_ttl)
        return Appended(entries)

    def history(self, user_id, after_id=None):
        oldest_kept = int((self._clock() - self.history_ttl) * 1000)
        after = parse_message_id(after_id) if after_id is not None else (-1, -1)
        kept = [*self._histories.get(user_id, ()), *self._histories.get(EVERYONE, ())]
        newer = [(parse_message_id(entry.message_id), entry) for entry in kept
                 if entry.ts > oldest_kept]
        return [entry for key, entry in sorted(newer, key=lambda pair: pair[0])
                if key > after]

    def _format_last_id(self):
        ms, seq = self._last_id
        return f'{ms}-{seq}' if seq >= 0 else None

    def _expire_later(self, key, now):
        """Start (or restart) the expiry clock of an unheld registration."""
        self._registrations[key].expires_at = self._unheld[key] = now + self.registration_ttl
        self._unheld.move_to_end(key)

    def _delete(self, user_id, connection_id):
        del self._registrations[(user_id, connection_id)]
        self._unheld.pop((user_id, connection_id), None)
        connection_ids = self._by_user[user_id]
        connection_ids.discard(connection_id)
        if not connection_ids:
            del self._by_user[user_id]

    def _sweep(self):
        """Drop what expired: each queue is read from its oldest end, as far as it expired."""
        now = self._clock()
        while self._unheld:
            (user_id, connection_id), expires_at = next(iter(self._unheld.items()))
            if expires_at > now:
                break
            self._delete(user_id, connection_id)
        oldest_kept = int((now - self.history_ttl) * 1000)
        while self._history_expiry:
            target, newest = next(iter(self._history_expiry.items()))
            if newest > oldest_kept:
                break
            del self._history_expiry[target]
            del self._histories[target]
        while self._idempotency:
            key, (_, _, expires_at) = next(iter(self._idempotency.items()))
            if expires_at > now:
                break
            del self._idempotency[key]
        return now
