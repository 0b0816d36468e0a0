"""The state interface; every backend must pass the same tests."""
import pytest

from notification_socketio.config import Config
from notification_socketio.state import NotRegistered, parse_message_id
from notification_socketio.state.memory import MemoryState


class Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 1_700_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def make_state(clock):
    """Build a state backend with configuration overrides, on the test's clock."""
    def make(**overrides):
        settings = {'registration_ttl': 60, 'history_size': 5, 'history_ttl': 30,
                    **overrides}
        config = Config.for_testing(**settings)
        return MemoryState(config, clock=clock)
    return make


@pytest.fixture
def state(make_state):
    return make_state()


def test_claim_needs_a_registration(state):
    with pytest.raises(NotRegistered):
        state.claim('u1', 'c1', 'sid1')
    state.register('u1', 'c1')
    assert state.claim('u1', 'c1', 'sid1') is None
    with pytest.raises(NotRegistered):
        state.claim('u1', 'c2', 'sid1')
    with pytest.raises(NotRegistered):
        state.claim('u2', 'c1', 'sid1')


def test_a_newer_claim_returns_the_older_holder(state):
    state.register('u1', 'c1')
    state.claim('u1', 'c1', 'old')
    assert state.claim('u1', 'c1', 'new') == 'old'
    assert state.claim('u1', 'c1', 'new') is None


def test_an_unclaimed_registration_expires_after_the_ttl(state, clock):
    state.register('u1', 'c1')
    clock.now += 59
    state.claim('u1', 'c1', 'sid1')
    state.release('u1', 'c1', 'sid1')
    clock.now += 59
    assert state.claim('u1', 'c1', 'sid2') is None
    state.release('u1', 'c1', 'sid2')
    clock.now += 61
    with pytest.raises(NotRegistered):
        state.claim('u1', 'c1', 'sid3')


def test_a_held_registration_does_not_expire(state, clock):
    state.register('u1', 'c1')
    state.claim('u1', 'c1', 'sid1')
    clock.now += 3600
    assert state.claim('u1', 'c1', 'sid2') == 'sid1'


def test_registering_again_refreshes_the_ttl(state, clock):
    state.register('u1', 'c1')
    clock.now += 50
    state.register('u1', 'c1')
    clock.now += 50
    assert state.claim('u1', 'c1', 'sid1') is None


def test_release_by_a_former_holder_changes_nothing(state, clock):
    state.register('u1', 'c1')
    state.claim('u1', 'c1', 'old')
    state.claim('u1', 'c1', 'new')
    state.release('u1', 'c1', 'old')
    clock.now += 3600
    assert state.claim('u1', 'c1', 'newest') == 'new'


def test_message_ids_increase_per_user_even_within_a_millisecond(state, clock):
    entries = [state.append('u1', n) for n in range(4)]
    clock.now -= 10   # a clock that steps back must not reorder ids
    entries.append(state.append('u1', 4))
    keys = [parse_message_id(entry.message_id) for entry in entries]
    assert keys == sorted(keys) and len(set(keys)) == 5
    assert [entry.message for entry in entries] == [0, 1, 2, 3, 4]


def test_history_keeps_the_newest_entries_after_an_id(state):
    entries = [state.append('u1', n) for n in range(8)]
    state.append('u2', 'other user')
    assert [e.message for e in state.history('u1')] == [3, 4, 5, 6, 7]
    assert [e.message for e in state.history('u1', entries[5].message_id)] == [6, 7]
    assert state.history('u1', entries[7].message_id) == []
    assert state.history('nobody') == []


def test_history_forgets_entries_older_than_its_ttl(state, clock):
    state.append('u1', 'old')
    clock.now += 20
    state.append('u1', 'new')
    clock.now += 15
    assert [e.message for e in state.history('u1')] == ['new']
    clock.now += 20
    assert state.history('u1') == []


def test_history_can_be_turned_off(make_state):
    state = make_state(history_size=0)
    assert state.append('u1', 'x').message_id
    assert state.history('u1') == []


@pytest.mark.parametrize('bad', [None, 5, '', 'abc', '1-', '-1', '1-2-3', 'x' * 100])
def test_malformed_message_ids_are_refused(bad):
    with pytest.raises(ValueError):
        parse_message_id(bad)
