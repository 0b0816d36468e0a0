"""State in this process's memory: the embedded default, for one process."""
import collections
import time

from .base import Claim, Entry, NotRegistered, State, parse_message_id

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
        self._histories = {}       # user_id -> deque of Entry
        self._last_ids = {}        # user_id -> (ms, seq) of its newest message
        self._next_sweep = 0.0

    def register(self, user_id, connection_id):
        now = self._sweep()
        registration = self._registrations.get((user_id, connection_id))
        if registration is None:
            last = self._last_ids.get(user_id)
            self._registrations[(user_id, connection_id)] = _Registration(
                now + self.registration_ttl, last and f'{last[0]}-{last[1]}')
        elif registration.holder is None:
            registration.expires_at = now + self.registration_ttl

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

    def append(self, user_id, message):
        now = self._sweep()
        ms = int(now * 1000)
        last_ms, last_seq = self._last_ids.get(user_id, (0, -1))
        seq = last_seq + 1 if ms <= last_ms else 0
        ms = max(ms, last_ms)
        self._last_ids[user_id] = (ms, seq)
        entry = Entry(f'{ms}-{seq}', ms, message)
        if self.history_size and self.history_ttl:
            history = self._histories.get(user_id)
            if history is None:
                history = self._histories[user_id] = collections.deque(
                    maxlen=self.history_size)
            history.append(entry)
        return entry

    def history(self, user_id, after_id=None):
        oldest_kept = int((self._clock() - self.history_ttl) * 1000)
        after = parse_message_id(after_id) if after_id is not None else (-1, -1)
        return [entry for entry in self._histories.get(user_id, ())
                if entry.ts > oldest_kept
                and parse_message_id(entry.message_id) > after]

    def _live_registration(self, user_id, connection_id):
        now = self._sweep()
        registration = self._registrations.get((user_id, connection_id))
        if registration is not None and registration.holder is None \
                and registration.expires_at <= now:
            return None
        return registration

    def _sweep(self):
        """Drop expired registrations and stale histories, at most every few seconds."""
        now = self._clock()
        if now < self._next_sweep:
            return now
        self._next_sweep = now + _SWEEP_INTERVAL
        expired = [key for key, registration in self._registrations.items()
                   if registration.holder is None and registration.expires_at <= now]
        for key in expired:
            del self._registrations[key]
        # A user's last id outlives its history by a little, so ids never repeat.
        oldest_kept = int((now - max(self.history_ttl, _SWEEP_INTERVAL)) * 1000)
        stale = [user_id for user_id, (ms, _) in self._last_ids.items()
                 if ms <= oldest_kept]
        for user_id in stale:
            del self._last_ids[user_id]
            self._histories.pop(user_id, None)
        return now
