"""State backends, picked by REDIS_URL like python-socketio picks its client manager."""
from .base import (EVERYONE, Appended, Claim, Entry, Idempotency, IdempotencyConflict,
                   MessageStatus, NotRegistered, NotReplicated, OutcomeUnknown, Revoked,
                   Sessions, State, StateUnavailable, TooManySessions, parse_message_id)


def create_state(config):
    """The state backend the configuration asks for: Redis if REDIS_URL is set, else memory."""
    if config.redis_url:
        from .redis import RedisState
        return RedisState(config)
    from .memory import MemoryState
    return MemoryState(config)


__all__ = ['EVERYONE', 'Appended', 'Claim', 'Entry', 'Idempotency', 'IdempotencyConflict',
           'MessageStatus', 'NotRegistered', 'NotReplicated', 'OutcomeUnknown', 'Revoked',
           'Sessions', 'State', 'StateUnavailable', 'TooManySessions', 'create_state',
           'parse_message_id']
