"""The state every process shares: registrations and each user's message history."""
import abc
import typing


class Entry(typing.NamedTuple):
    """One pushed message as kept in a user's history."""

    message_id: str
    ts: int
    message: object

    @property
    def meta(self):
        """The second argument of the Socket.IO `message` event."""
        return {'id': self.message_id, 'ts': self.ts}


#: The target of a broadcast: every registered session, whoever its user.
EVERYONE = None


class Sessions(typing.NamedTuple):
    """A user's presence."""

    online: int       # registrations held by a live socket
    registered: int   # valid registrations, held or not


class Appended(typing.NamedTuple):
    """What `append` did: the entries, and whether an earlier push with its key made them."""

    entries: list
    repeated: bool = False
    #: Per target, the sockets that held the user's registrations (None for a broadcast).
    online: list = ()


class MessageStatus(typing.NamedTuple):
    """What is known of one message of a user (GET /api/{userId}/messages/{id})."""

    acknowledged: bool   # a socket of the user confirmed receiving it
    in_history: bool     # a reconnecting socket would still get it


class Idempotency(typing.NamedTuple):
    """A backend's Idempotency-Key, and a fingerprint of the request it came with."""

    key: str
    fingerprint: str


class Claim(typing.NamedTuple):
    """What claiming a registration tells the claiming socket."""

    previous_sid: typing.Optional[str]   # the socket it was taken from, to disconnect
    delivered_id: typing.Optional[str]   # every message up to this id has been received


class NotRegistered(Exception):
    """No valid backend registration for this (userId, connectionId)."""


class TooManySessions(Exception):
    """The user has MAX_SESSIONS_PER_USER registrations, every one held by a live socket."""


class Revoked(Exception):
    """A connection token names a registration the backend revoked."""


class StateUnavailable(Exception):
    """The shared state (Redis) cannot be reached; nothing was changed, the caller may retry."""


class OutcomeUnknown(Exception):
    """The shared state did not answer a push in time: it may or may not have been made."""


class NotReplicated(OutcomeUnknown):
    """The push was made on the Redis primary, but no replica confirmed it in time
    (REDIS_WAIT_REPLICAS): a failover could still lose it."""


class IdempotencyConflict(Exception):
    """An Idempotency-Key came back with another request than the one it was first used for."""


#: Per user, the newest message ids kept to answer GET /api/{userId}/messages/{id}.
MESSAGE_RECORDS = 1000
#: And for at least this long (or HISTORY_TTL, if longer).
MESSAGE_RECORD_TTL = 3600
#: How long a revocation keeps connection tokens of the connection from registering it again
#: is REGISTRATION_TTL: a token's `exp` is never further ahead (tokens.py).


def parse_message_id(message_id):
    """Split a message id `<ms>-<seq>` into a sortable tuple; ValueError if malformed."""
    if not isinstance(message_id, str) or len(message_id) > 64:
        raise ValueError('a message id is a string like "1700000000000-0"')
    ms, sep, seq = message_id.partition('-')
    if not sep or not ms.isdigit() or not seq.isdigit():
        raise ValueError('a message id is a string like "1700000000000-0"')
    return int(ms), int(seq)


class State(abc.ABC):
    """What the server keeps: one interface, an in-memory and a Redis implementation.

    A registration is created by the backend, then held by one socket at a time. It
    remembers up to which message id its sockets have received the user's messages, so
    that the next socket claiming it gets the rest from the history.
    """

    #: True when messages reach sockets only in this process: Delivery then hands each
    #: appended entry to its own sockets. Otherwise the backend fans entries out to every
    #: process, this one included, in id order.
    local = True
    #: Calls that failed because the backend could not be reached (a metric).
    failures = 0
    #: How many shards the state is split in (on a Redis Cluster, more than one): message
    #: ids are drawn from one sequence per shard, so only ids of one shard compare, and a
    #: broadcast reaches each shard's users with that shard's own id.
    shard_count = 1

    def shard_of(self, user_id):
        """The shard that holds `user_id`'s registrations and history (0 when unsplit)."""
        return 0

    def __init__(self, config):
        self.webhook_urls = tuple(config.webhook_urls)
        #: Presence is followed only when someone is told of it.
        self.presence = bool(self.webhook_urls)
        self.offline_grace = config.offline_grace
        self.record_ttl = max(config.history_ttl, MESSAGE_RECORD_TTL)
        self.registration_ttl = config.registration_ttl
        self.max_sessions = config.max_sessions_per_user
        self.history_size = config.history_size
        self.history_ttl = config.history_ttl
        self.idempotency_ttl = config.idempotency_ttl
        # A held registration whose socket has not answered a heartbeat for this long is
        # not counted online (its process may be gone).
        self.online_timeout = 2 * (config.ping_interval + config.ping_timeout)

    @abc.abstractmethod
    def register(self, user_id, connection_id):
        """Create or refresh the backend's registration; it expires if nobody claims it.

        A new registration counts every message pushed before it as received: only what
        comes after is delivered or replayed to it. A user keeps at most
        MAX_SESSIONS_PER_USER registrations: a new one replaces the one that no socket
        holds and would expire first; if sockets hold them all, TooManySessions.
        """

    @abc.abstractmethod
    def register_token(self, user_id, connection_id, issued_at):
        """`register` for a verified connection token; Revoked if the backend revoked it.

        A token is refused after `revoke` of its connection (until REGISTRATION_TTL, which
        outlives every token), and after `revoke` of all the user's connections if it was
        issued (`iat`; None: unknown) before it. `register` lifts the first.
        """

    @abc.abstractmethod
    def claim(self, user_id, connection_id, sid):
        """Give the registration to socket `sid`; return a Claim.

        Raises NotRegistered when the registration does not exist or has expired.
        With webhooks, a user with no live socket before it is now online: `user.online`.
        """

    @abc.abstractmethod
    def confirm(self, user_id, connection_id, sid, message_id):
        """Socket `sid` still holds the registration and has received up to `message_id`.

        Ignored if `sid` no longer holds it. `message_id` None only keeps the
        registration alive. The user's messages after the registration's previous mark,
        up to `message_id`, are acknowledged: no `message.unacknowledged` for them.
        """

    @abc.abstractmethod
    def release(self, user_id, connection_id, sid):
        """Socket `sid` is gone: the registration starts its expiry clock, if `sid` held it."""

    def release_many(self, holds):
        """`release` each (user_id, connection_id, sid) of `holds`: on shutdown, at once."""
        for user_id, connection_id, sid in holds:
            self.release(user_id, connection_id, sid)

    @abc.abstractmethod
    def revoke(self, user_id, connection_id=None):
        """Delete one registration of the user (all of them if `connection_id` is None).

        Returns the sids of the sockets that held them, for the caller to disconnect.
        """

    @abc.abstractmethod
    def sessions(self, user_id):
        """The user's presence, as Sessions."""

    @abc.abstractmethod
    def message_status(self, user_id, message_id):
        """MessageStatus of a message pushed to the user, or None if it left every record."""

    @abc.abstractmethod
    def tick(self):
        """Send what fell due: `user.offline` after OFFLINE_GRACE, `message.unacknowledged`.

        Every process calls it about once a second; each event is decided once.
        """

    @abc.abstractmethod
    def append(self, targets, message, idempotency=None, fallback_after=None):
        """Give `message` one new id per target and keep it in each target's history.

        A target is a userId, or EVERYONE for a broadcast (kept in a history that every
        user's replay includes; a user's, only while the user has a registration). Ids
        increase across all targets, in the order given, so that one id can be compared
        with any other. Returns Appended, one Entry per target.

        With an Idempotency, a key seen within IDEMPOTENCY_TTL with the same fingerprint
        appends nothing and returns the first push's entries, `repeated`; with another
        fingerprint, IdempotencyConflict. The key is kept atomically with the append.
        With Redis, OutcomeUnknown when Redis did not answer (it is never retried).

        With `fallback_after` (seconds), a user whose sockets acknowledge none of it by
        then gets a `message.unacknowledged` webhook. `online` counts, per user, the
        sockets holding its registrations.
        """

    @abc.abstractmethod
    def history(self, user_id, after_id=None):
        """The user's and the broadcasts' kept entries newer than `after_id`, oldest first."""

    def close(self):
        """Let go of connections, if any."""
