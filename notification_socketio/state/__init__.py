"""State backends, picked by REDIS_URL like python-socketio picks its client manager."""
from .base import Entry, NotRegistered, State, parse_message_id


def create_state(config):
    """The state backend the configuration asks for."""
    from .memory import MemoryState
    return MemoryState(config)


__all__ = ['Entry', 'NotRegistered', 'State', 'create_state', 'parse_message_id']
