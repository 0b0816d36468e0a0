"""State in this process's memory: the embedded default, for one process.

What expires (registrations no socket holds, histories, idempotency records) sits in
queues ordered by expiry, so that dropping it costs what expired, never a scan of
everyone: every such deadline is "now + a fixed TTL", so the order of the last refresh
is the order of expiry.
"""
import collections
import heapq
import time

from .base import (EVERYONE, MESSAGE_RECORDS, Appended, Claim, Entry, IdempotencyConflict,
                   MessageStatus, NotRegistered, Revoked, Sessions, State, TooManySessions,
                   parse_message_id)


class _Registration:
    __slots__ = ('holder', 'expires_at', 'delivered_id')

    def __init__(self, expires_at, delivered_id):
        self.holder = None
        self.expires_at = expires_at
        self.delivered_id = delivered_id


class MemoryState(State):
    """Registrations and histories in dicts; gevent never switches inside a method."""

    local = True

    def __init__(self, config, clock=time.time, outbox=None):
        super().__init__(config)
        if outbox is None:
            from ..webhooks import MemoryOutbox
            outbox = MemoryOutbox(self.webhook_urls, config.webhook_queue_size)
        self.outbox = outbox
        self._clock = clock
        self._held = collections.Counter()   # user_id -> registrations held by a socket
        self._online = set()                 # users told online (with webhooks)
        self._offline_due = collections.OrderedDict()   # user_id -> when to tell offline
        self._records = {}         # user_id -> deque of its newest message ids, oldest first
        self._acked = {}           # user_id -> ids of its records a socket acknowledged
        self._record_expiry = collections.OrderedDict()   # user_id -> newest record's ms
        self._pending = {}         # user_id -> {message id: key} awaiting acknowledgement
        self._fallbacks = []       # heap of (due, message id, user_id, message)
        self._revoked = collections.OrderedDict()   # (user_id, connection_id) -> expiry
        self._revoked_all = collections.OrderedDict()   # user_id -> (when, expiry)
        self._registrations = {}   # (user_id, connection_id) -> _Registration
        self._by_user = {}         # user_id -> set of its connection ids
        self._unheld = collections.OrderedDict()   # (user_id, connection_id) -> expiry
        self._histories = {}       # user_id (or EVERYONE) -> deque of Entry
        self._history_expiry = collections.OrderedDict()   # target -> newest entry's ts
        self._idempotency = collections.OrderedDict()   # key -> (fingerprint, ids, online, expiry)
        self._last_id = (0, -1)    # (ms, seq) of the newest message id, for every target

    def register(self, user_id, connection_id):
        self._revoked.pop((user_id, connection_id), None)
        self._register(user_id, connection_id)

    def register_token(self, user_id, connection_id, issued_at):
        self._sweep()
        revoked_all = self._revoked_all.get(user_id)
        if (user_id, connection_id) in self._revoked or (
                revoked_all is not None and (issued_at is None or issued_at <= revoked_all[0])):
            raise Revoked()
        self._register(user_id, connection_id)

    def _register(self, user_id, connection_id):
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
        if previous is None:
            self._held[user_id] += 1
        registration.expires_at = None
        self._unheld.pop((user_id, connection_id), None)
        if self.presence:
            self._offline_due.pop(user_id, None)
            if user_id not in self._online:
                self._online.add(user_id)
                self.outbox.add('user.online', {'userId': user_id})
        return Claim(previous if previous != sid else None, registration.delivered_id)

    def confirm(self, user_id, connection_id, sid, message_id):
        registration = self._registrations.get((user_id, connection_id))
        if registration is not None and registration.holder == sid and message_id:
            previous = registration.delivered_id
            registration.delivered_id = message_id
            self._acknowledge(user_id, parse_message_id(previous) if previous else (-1, -1),
                              parse_message_id(message_id))

    def _acknowledge(self, user_id, after, upto):
        """The user's messages with ids in (after, upto] reached a socket."""
        if upto <= after:
            return
        records = self._records.get(user_id)
        if records:
            acked = self._acked.setdefault(user_id, set())
            for message_id in reversed(records):
                key = parse_message_id(message_id)
                if key <= after:
                    break
                if key <= upto:
                    acked.add(message_id)
            if len(acked) > MESSAGE_RECORDS:   # forget what left the records
                acked.intersection_update(records)
        pending = self._pending.get(user_id)
        if pending:
            for message_id, key in list(pending.items()):
                if after < key <= upto:
                    del pending[message_id]
            if not pending:
                del self._pending[user_id]

    def release(self, user_id, connection_id, sid):
        now = self._sweep()
        registration = self._registrations.get((user_id, connection_id))
        if registration is not None and registration.holder == sid:
            registration.holder = None
            self._let_go(user_id, now)
            self._expire_later((user_id, connection_id), now)

    def _let_go(self, user_id, now):
        """One registration of the user is no longer held."""
        self._held[user_id] -= 1
        if self._held[user_id] <= 0:
            del self._held[user_id]
            if user_id in self._online:
                self._offline_due[user_id] = now + self.offline_grace

    def revoke(self, user_id, connection_id=None):
        now = self._sweep()
        expiry = now + self.registration_ttl
        if connection_id is None:
            self._revoked_all[user_id] = (now, expiry)
            self._revoked_all.move_to_end(user_id)
        else:
            self._revoked[(user_id, connection_id)] = expiry
            self._revoked.move_to_end((user_id, connection_id))
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

    def message_status(self, user_id, message_id):
        self._sweep()
        recorded = message_id in self._records.get(user_id, ())
        oldest_kept = int((self._clock() - self.history_ttl) * 1000)
        in_history = any(entry.message_id == message_id and entry.ts > oldest_kept
                         for entry in self._histories.get(user_id, ()))
        if not recorded or parse_message_id(message_id)[0] < (
                self._clock() - self.record_ttl) * 1000:
            if not in_history:
                return None
            return MessageStatus(acknowledged=False, in_history=True)
        return MessageStatus(acknowledged=message_id in self._acked.get(user_id, ()),
                             in_history=in_history)

    def tick(self):
        now = self._sweep()
        while self._offline_due:
            user_id, due = next(iter(self._offline_due.items()))
            if due > now:
                break
            del self._offline_due[user_id]
            if not self._held.get(user_id):
                self._online.discard(user_id)
                self.outbox.add('user.offline', {'userId': user_id})
        while self._fallbacks and self._fallbacks[0][0] <= now:
            _, message_id, user_id, message = heapq.heappop(self._fallbacks)
            pending = self._pending.get(user_id)
            if pending and pending.pop(message_id, None) is not None:
                if not pending:
                    del self._pending[user_id]
                self.outbox.add('message.unacknowledged',
                                {'userId': user_id, 'id': message_id, 'message': message})

    def append(self, targets, message, idempotency=None, fallback_after=None):
        now = self._sweep()
        if idempotency is not None:
            record = self._idempotency.get(idempotency.key)
            if record is not None:
                fingerprint, message_ids, online, _ = record
                if fingerprint != idempotency.fingerprint:
                    raise IdempotencyConflict()
                return Appended([Entry(message_id, parse_message_id(message_id)[0], message)
                                 for message_id in message_ids], repeated=True, online=online)
        entries = []
        online = []
        # One ms for the whole push; its targets' ids follow each other by seq.
        last_ms, seq = self._last_id
        ms = max(int(now * 1000), last_ms)
        if ms != last_ms:
            seq = -1
        keep_history = self.history_size and self.history_ttl
        histories, held, by_user = self._histories, self._held, self._by_user
        all_records, record_expiry = self._records, self._record_expiry
        fallback = fallback_after and self.webhook_urls
        for target in targets:
            seq += 1
            message_id = f'{ms}-{seq}'
            entry = Entry(message_id, ms, message)
            entries.append(entry)
            # Only a registration replays a history, and a new one starts after this.
            if keep_history and (target is EVERYONE or target in by_user):
                history = histories.get(target)
                if history is None:
                    history = histories[target] = collections.deque(
                        maxlen=self.history_size)
                history.append(entry)
                self._history_expiry[target] = ms
                self._history_expiry.move_to_end(target)
            if target is EVERYONE:
                online.append(None)
                continue
            online.append(held.get(target, 0))
            records = all_records.get(target)
            if records is None:
                records = all_records[target] = collections.deque(maxlen=MESSAGE_RECORDS)
            records.append(message_id)
            record_expiry[target] = ms
            record_expiry.move_to_end(target)
            if fallback:
                self._pending.setdefault(target, {})[message_id] = (ms, seq)
                heapq.heappush(self._fallbacks,
                               (now + fallback_after, message_id, target, message))
        self._last_id = (ms, seq)
        if idempotency is not None:
            self._idempotency[idempotency.key] = (
                idempotency.fingerprint, [entry.message_id for entry in entries], online,
                now + self.idempotency_ttl)
        return Appended(entries, online=online)

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
        if self._registrations[(user_id, connection_id)].holder is not None:
            self._let_go(user_id, self._clock())
        del self._registrations[(user_id, connection_id)]
        self._unheld.pop((user_id, connection_id), None)
        connection_ids = self._by_user[user_id]
        connection_ids.discard(connection_id)
        if not connection_ids:
            del self._by_user[user_id]

    def _sweep(self):
        """Drop what expired: each queue is read from its oldest end, as far as it expired."""
        now = self._clock()
        for user_id, connection_id in _expired(self._unheld, now):
            self._delete(user_id, connection_id)
        for target in _expired(self._history_expiry, int((now - self.history_ttl) * 1000)):
            del self._histories[target]
        _expired(self._idempotency, now, time_of=lambda record: record[3])
        oldest_record = (now - self.record_ttl) * 1000
        while self._record_expiry:
            user_id, newest = next(iter(self._record_expiry.items()))
            if newest >= oldest_record:
                break
            del self._record_expiry[user_id]
            del self._records[user_id]   # every record of the user is too old
            self._acked.pop(user_id, None)
        _expired(self._revoked, now)
        _expired(self._revoked_all, now, time_of=lambda revocation: revocation[1])
        return now


def _expired(queue, deadline, time_of=lambda value: value):
    """Remove from the front of `queue`, an OrderedDict in the order of its times, every
    key whose time is at or before `deadline`; return those keys."""
    keys = []
    while queue:
        key, value = next(iter(queue.items()))
        if time_of(value) > deadline:
            break
        del queue[key]
        keys.append(key)
    return keys
