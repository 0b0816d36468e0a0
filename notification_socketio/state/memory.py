"""State in this process's memory: the embedded default, for one process."""
import collections
import time

from .base import (EVERYONE, Claim, Entry, NotRegistered, Sessions, State, TooManySessions,
                   parse_message_id)

_SWEEP_INTERVAL = 5.0


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
        self._by_user = collections.defaultdict(set)   # user_id -> its connection ids
        self._histories = {}       # user_id (or EVERYONE) -> deque of Entry
        self._last_id = (0, -1)    # (ms, seq) of the newest message id, for every target
        self._next_sweep = 0.0
        # Never hold what expired for much longer than it lived.
        self._sweep_interval = min(_SWEEP_INTERVAL, self.registration_ttl,
                                   self.history_ttl or _SWEEP_INTERVAL)

    def register(self, user_id, connection_id):
        now = self._sweep()
        registration = self._registrations.get((user_id, connection_id))
        if registration is None:
            self._make_room_for(user_id)
            self._registrations[(user_id, connection_id)] = _Registration(
                now + self.registration_ttl, self._format_last_id())
            self._by_user[user_id].add(connection_id)
        elif registration.holder is None:
            registration.expires_at = now + self.registration_ttl

    def _make_room_for(self, user_id):
        """Below MAX_SESSIONS_PER_USER, or replace the unheld registration expiring first.

        One that expired already and awaits the sweep goes first of all.
        """
        connection_ids = self._by_user.get(user_id, ())
        if len(connection_ids) < self.max_sessions:
            return
        registrations = ((self._registrations[(user_id, connection_id)], connection_id)
                         for connection_id in connection_ids)
        unheld = [(registration.expires_at, connection_id)
                  for registration, connection_id in registrations
                  if registration.holder is None]
        if not unheld:
            raise TooManySessions()
        _, oldest = min(unheld)
        del self._registrations[(user_id, oldest)]
        self._forget(user_id, oldest)

    def claim(self, user_id, connection_id, sid):
        registration = self._live_registration(user_id, connection_id)
        if registration is None:
            raise NotRegistered()
        previous, registration.holder = registration.holder, sid
        registration.expires_at = None
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
            registration.expires_at = now + self.registration_ttl

    def revoke(self, user_id, connection_id=None):
        connection_ids = (list(self._by_user.get(user_id, ())) if connection_id is None
                          else [connection_id])
        holders = []
        for revoked in connection_ids:
            registration = self._registrations.pop((user_id, revoked), None)
            if registration is not None and registration.holder is not None:
                holders.append(registration.holder)
            self._forget(user_id, revoked)
        return holders

    def sessions(self, user_id):
        registrations = [self._live_registration(user_id, connection_id)
                         for connection_id in list(self._by_user.get(user_id, ()))]
        registrations = [r for r in registrations if r is not None]
        return Sessions(online=sum(r.holder is not None for r in registrations),
                        registered=len(registrations))

    def append(self, targets, message):
        now = self._sweep()
        entries = []
        for target in targets:
            ms = max(int(now * 1000), self._last_id[0])
            seq = self._last_id[1] + 1 if ms == self._last_id[0] else 0
            self._last_id = (ms, seq)
            entry = Entry(f'{ms}-{seq}', ms, message)
            entries.append(entry)
            if self.history_size and self.history_ttl:
                history = self._histories.get(target)
                if history is None:
                    history = self._histories[target] = collections.deque(
                        maxlen=self.history_size)
                history.append(entry)
        return entries

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

    def _live_registration(self, user_id, connection_id):
        now = self._sweep()
        registration = self._registrations.get((user_id, connection_id))
        if registration is not None and registration.holder is None \
                and registration.expires_at <= now:
            return None
        return registration

    def _forget(self, user_id, connection_id):
        connection_ids = self._by_user.get(user_id)
        if connection_ids is not None:
            connection_ids.discard(connection_id)
            if not connection_ids:
                del self._by_user[user_id]

    def _sweep(self):
        """Drop expired registrations and stale histories, at most every few seconds."""
        now = self._clock()
        if now < self._next_sweep:
            return now
        self._next_sweep = now + self._sweep_interval
        expired = [key for key, registration in self._registrations.items()
                   if registration.holder is None and registration.expires_at <= now]
        for user_id, connection_id in expired:
            del self._registrations[(user_id, connection_id)]
            self._forget(user_id, connection_id)
        oldest_kept = int((now - self.history_ttl) * 1000)
        stale = [target for target, history in self._histories.items()
                 if not history or history[-1].ts <= oldest_kept]
        for target in stale:
            del self._histories[target]
        return now
