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


class Claim(typing.NamedTuple):
    """What claiming a registration tells the claiming socket."""

    previous_sid: typing.Optional[str]   # the socket it was taken from, to disconnect
    delivered_id: typing.Optional[str]   # every message up to this id has been received


class NotRegistered(Exception):
    """No valid backend registration for this (userId, connectionId)."""


class StateUnavailable(Exception):
    """The shared state (Redis) cannot be reached; nothing was changed, the caller may retry."""


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

    def __init__(self, config):
        self.registration_ttl = config.registration_ttl
        self.history_size = config.history_size
        self.history_ttl = config.history_ttl

    @abc.abstractmethod
    def register(self, user_id, connection_id):
        """Create or refresh the backend's registration; it expires if nobody claims it.

        A new registration counts every message pushed to the user before it as received:
        only what comes after is delivered or replayed to it.
        """

    @abc.abstractmethod
    def claim(self, user_id, connection_id, sid):
        """Give the registration to socket `sid`; return a Claim.

        Raises NotRegistered when the registration does not exist or has expired.
        """

    @abc.abstractmethod
    def confirm(self, user_id, connection_id, sid, message_id):
        """Socket `sid` still holds the registration and has received up to `message_id`.

        Ignored if `sid` no longer holds it. `message_id` None only keeps the
        registration alive.
        """

    @abc.abstractmethod
    def release(self, user_id, connection_id, sid):
        """Socket `sid` is gone: the registration starts its expiry clock, if `sid` held it."""

    @abc.abstractmethod
    def append(self, user_id, message):
        """Give `message` the user's next id, keep it in the history; return the Entry."""

    @abc.abstractmethod
    def history(self, user_id, after_id=None):
        """The user's kept entries newer than `after_id` (all kept ones if None), oldest first."""

    def close(self):
        """Let go of connections, if any."""
