"""The state interface: every backend passes the same tests."""
import subprocess
import sys
import time

import pytest
from redis.crc import key_slot
from conftest import RedisClusterNodes, SentinelSet

from notification_socketio.config import Config
from notification_socketio.state import (EVERYONE, Idempotency, IdempotencyConflict,
                                         NotRegistered, NotReplicated, OutcomeUnknown,
                                         Sessions, StateUnavailable, TooManySessions,
                                         parse_message_id)
from notification_socketio.state.memory import MemoryState
from notification_socketio.state.redis import RedisState, shard_prefixes

TTL = 1.0   # seconds, for registrations and history alike


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 1_700_000_000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class RealClock:
    """Redis keeps its own time: the test waits for it to pass."""

    def __call__(self):
        return time.time()

    @staticmethod
    def advance(seconds):
        time.sleep(seconds)


@pytest.fixture(scope='module')
def shared_topologies(tmp_path_factory):
    """A Redis Cluster and a Sentinel set, started once for a module's tests (lazily)."""
    started = {}

    def get(kind):
        if kind not in started:
            directory = tmp_path_factory.mktemp(kind)
            started[kind] = (RedisClusterNodes(directory) if kind == 'cluster'
                             else SentinelSet(directory)).start()
        return started[kind]

    yield get
    for topology in started.values():
        topology.stop()


def redis_url(request):
    """The URL of the test's Redis: its own redis-server, or the shared Cluster or Sentinel
    set of this file, emptied."""
    if request.param == 'redis':
        return request.getfixturevalue('redis_server').url
    topology = request.getfixturevalue('shared_topologies')(request.param)
    if request.param == 'cluster':
        topology.flush()
    else:
        with topology.server_on(topology.primary_port()).client() as client:
            client.flushall()
    return topology.url


@pytest.fixture(params=['memory', 'redis', 'cluster', 'sentinel'])
def backend(request, tmp_path):
    """Make (state, clock) pairs of one backend, with configuration overrides.

    `cluster` is a real three-node Redis Cluster, `sentinel` a real primary, replica and
    three Sentinels: the same scripts, reached through redisconn's URLs.
    """
    made = []

    def make(**overrides):
        settings = {'registration_ttl': TTL, 'history_size': 5, 'history_ttl': TTL,
                    **overrides}
        if request.param == 'memory':
            clock = FakeClock()
            return MemoryState(Config.for_testing(**settings), clock=clock), clock
        state = RedisState(Config.for_testing(redis_url=redis_url(request), **settings))
        made.append(state)
        return state, RealClock()

    yield make
    for state in made:
        state.close()


def registered(state, *user_ids):
    """Give each user a registration: only then is a user's history kept."""
    for user_id in user_ids:
        state.register(user_id, 'any')


@pytest.fixture
def state_and_clock(backend):
    return backend()


@pytest.fixture
def state(state_and_clock):
    return state_and_clock[0]


@pytest.fixture
def clock(state_and_clock):
    return state_and_clock[1]


def test_claim_needs_a_registration(state):
    with pytest.raises(NotRegistered):
        state.claim('u1', 'c1', 'sid1')
    state.register('u1', 'c1')
    assert state.claim('u1', 'c1', 'sid1').previous_sid is None
    with pytest.raises(NotRegistered):
        state.claim('u1', 'c2', 'sid1')
    with pytest.raises(NotRegistered):
        state.claim('u2', 'c1', 'sid1')


def test_keys_of_similar_ids_do_not_collide(state):
    state.register('a:b', 'c')
    with pytest.raises(NotRegistered):
        state.claim('a', 'b:c', 'sid1')
    assert state.claim('a:b', 'c', 'sid1').previous_sid is None


def test_a_newer_claim_returns_the_older_holder(state):
    state.register('u1', 'c1')
    state.claim('u1', 'c1', 'old')
    assert state.claim('u1', 'c1', 'new').previous_sid == 'old'
    assert state.claim('u1', 'c1', 'new').previous_sid is None


def test_an_unclaimed_registration_expires_after_the_ttl(state, clock):
    state.register('u1', 'c1')
    clock.advance(TTL * 0.6)
    state.claim('u1', 'c1', 'sid1')
    state.release('u1', 'c1', 'sid1')
    clock.advance(TTL * 0.6)
    assert state.claim('u1', 'c1', 'sid2').previous_sid is None
    state.release('u1', 'c1', 'sid2')
    clock.advance(TTL * 1.2)
    with pytest.raises(NotRegistered):
        state.claim('u1', 'c1', 'sid3')


def test_a_held_registration_stays_while_its_socket_confirms(state, clock):
    state.register('u1', 'c1')
    state.claim('u1', 'c1', 'sid1')
    for _ in range(3):
        clock.advance(TTL * 0.6)
        state.confirm('u1', 'c1', 'sid1', None)
    assert state.claim('u1', 'c1', 'sid2').previous_sid == 'sid1'


def test_registering_again_refreshes_the_ttl(state, clock):
    state.register('u1', 'c1')
    clock.advance(TTL * 0.6)
    state.register('u1', 'c1')
    clock.advance(TTL * 0.6)
    assert state.claim('u1', 'c1', 'sid1').previous_sid is None


def test_release_by_a_former_holder_changes_nothing(state):
    state.register('u1', 'c1')
    state.claim('u1', 'c1', 'old')
    state.claim('u1', 'c1', 'new')
    state.release('u1', 'c1', 'old')
    state.confirm('u1', 'c1', 'old', '5-0')
    claim = state.claim('u1', 'c1', 'newest')
    assert claim.previous_sid == 'new' and claim.delivered_id is None


def test_a_new_registration_counts_earlier_messages_as_received(state):
    earlier = [state.append(['u1'], n).entries[0] for n in range(3)]
    state.register('u1', 'c1')
    claim = state.claim('u1', 'c1', 'sid1')
    assert claim.delivered_id == earlier[-1].message_id
    assert state.history('u1', claim.delivered_id) == []
    later = state.append(['u1'], 'later').entries[0]
    assert state.history('u1', claim.delivered_id) == [later]


def test_a_registration_of_a_user_without_messages_gets_everything(state):
    state.register('u1', 'c1')
    assert state.claim('u1', 'c1', 'sid1').delivered_id is None
    first = state.append(['u1'], 'first').entries[0]
    assert state.history('u1', None) == [first]


def test_the_holder_confirms_what_it_received_for_the_next_claim(state):
    state.register('u1', 'c1')
    state.claim('u1', 'c1', 'sid1')
    entries = [state.append(['u1'], n).entries[0] for n in range(4)]
    state.confirm('u1', 'c1', 'sid1', entries[1].message_id)
    state.release('u1', 'c1', 'sid1')
    claim = state.claim('u1', 'c1', 'sid2')
    assert claim.delivered_id == entries[1].message_id
    assert state.history('u1', claim.delivered_id) == entries[2:]


def test_message_ids_increase_per_user(state):
    registered(state, 'u1', 'u2')
    entries = [state.append(['u1'], n).entries[0] for n in range(20)]
    keys = [parse_message_id(entry.message_id) for entry in entries]
    assert keys == sorted(keys) and len(set(keys)) == 20
    assert all(entry.ts == key[0] for entry, key in zip(entries, keys))


def test_memory_ids_increase_even_when_the_clock_steps_back():
    clock = FakeClock()
    state = MemoryState(Config.for_testing(), clock=clock)
    first = state.append(['u1'], 1).entries[0]
    clock.advance(-10)
    second = state.append(['u1'], 2).entries[0]
    assert parse_message_id(second.message_id) > parse_message_id(first.message_id)


def test_history_keeps_the_newest_entries_after_an_id(state):
    registered(state, 'u1', 'u2')
    entries = [state.append(['u1'], {'n': n, 'text': 'é世🚀'}).entries[0] for n in range(8)]
    state.append(['u2'], 'other user')
    assert [e.message['n'] for e in state.history('u1')] == [3, 4, 5, 6, 7]
    assert state.history('u1', entries[5].message_id) == entries[6:]
    assert state.history('u1', entries[7].message_id) == []
    assert state.history('nobody') == []


def test_history_forgets_entries_older_than_its_ttl(state, clock):
    registered(state, 'u1', 'u2')
    state.append(['u1'], 'old')
    clock.advance(TTL * 0.6)
    new = state.append(['u1'], 'new').entries[0]
    clock.advance(TTL * 0.6)
    assert state.history('u1') == [new]
    clock.advance(TTL * 0.6)
    assert state.history('u1') == []


def test_history_can_be_turned_off(backend):
    state, _ = backend(history_size=0)
    first = state.append(['u1'], 'x').entries[0]
    second = state.append(['u1'], 'y').entries[0]
    assert parse_message_id(second.message_id) > parse_message_id(first.message_id)
    assert state.history('u1') == []


def test_an_unreachable_redis_is_reported_as_unavailable(redis_server):
    state = RedisState(Config.for_testing(redis_url=redis_server.url))
    state.register('u1', 'c1')
    redis_server.stop()
    for call in (lambda: state.register('u1', 'c1'), lambda: state.append(['u1'], 'x'),
                 lambda: state.claim('u1', 'c1', 'sid'), lambda: state.history('u1')):
        with pytest.raises(StateUnavailable):
            call()


def test_ids_increase_across_users_and_broadcasts_of_a_shard(state):
    registered(state, 'u1', 'u2', 'u3')
    targets = ['u1', 'u2', 'u3', EVERYONE, 'u1']
    entries = state.append(targets[:3], 'batch').entries
    entries += state.append([EVERYONE], 'broadcast').entries
    entries += state.append(['u1'], 'single').entries
    by_shard = {}   # one, but on a Cluster (ids compare within a shard only)
    for target, entry in zip(targets, entries):
        shard = 0 if target is EVERYONE else state.shard_of(target)
        by_shard.setdefault(shard, []).append(parse_message_id(entry.message_id))
    for keys in by_shard.values():
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert all(entry.message in ('batch', 'broadcast', 'single') for entry in entries)
    # Whatever the shards, a user gets its messages, broadcasts included, in id order.
    for user_id in ('u1', 'u2'):
        history = state.history(user_id)
        keys = [parse_message_id(entry.message_id) for entry in history]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        assert [entry.message for entry in history] == \
            ['batch', 'broadcast', 'single'][:3 if user_id == 'u1' else 2]


def test_every_user_history_includes_the_broadcasts_in_id_order(state):
    registered(state, 'u1', 'u2')
    mine = state.append(['u1'], 'mine').entries[0]
    everyone = state.append([EVERYONE], 'for everyone').entries[0]
    theirs = state.append(['u2'], 'theirs').entries[0]
    mine_again = state.append(['u1'], 'mine again').entries[0]
    first, broadcast, last = state.history('u1')
    assert (first, broadcast.message, last) == (mine, 'for everyone', mine_again)
    assert state.history('u1', mine.message_id) == [broadcast, mine_again]
    other_broadcast, other = state.history('u2')
    assert (other_broadcast.message, other) == ('for everyone', theirs)
    if state.shard_of('u2') == state.shard_of('u1'):
        assert other_broadcast == broadcast
    # The answer's id is the broadcast's in the first shard (the only one, but on a Cluster).
    assert broadcast == everyone or state.shard_of('u1') != 0


def test_sessions_count_registrations_and_the_held_ones(state):
    assert state.sessions('u1') == Sessions(online=0, registered=0)
    for connection_id in ('c1', 'c2', 'c3'):
        state.register('u1', connection_id)
    state.register('u2', 'c1')
    state.claim('u1', 'c1', 'sid1')
    state.claim('u1', 'c2', 'sid2')
    assert state.sessions('u1') == Sessions(online=2, registered=3)
    state.release('u1', 'c2', 'sid2')
    assert state.sessions('u1') == Sessions(online=1, registered=3)
    assert state.sessions('u2') == Sessions(online=0, registered=1)


def test_expired_registrations_leave_the_sessions(state, clock):
    state.register('u1', 'c1')
    clock.advance(TTL * 0.6)
    state.register('u1', 'c2')
    clock.advance(TTL * 0.6)
    assert state.sessions('u1') == Sessions(online=0, registered=1)


def test_revoking_one_registration_returns_its_holder(state):
    state.register('u1', 'c1')
    state.register('u1', 'c2')
    state.claim('u1', 'c1', 'sid1')
    assert state.revoke('u1', 'c1') == ['sid1']
    with pytest.raises(NotRegistered):
        state.claim('u1', 'c1', 'sid9')
    assert state.sessions('u1') == Sessions(online=0, registered=1)
    assert state.revoke('u1', 'unknown') == []


def test_revoking_all_registrations_of_a_user(state):
    for connection_id in ('c1', 'c2', 'c3'):
        state.register('u1', connection_id)
    state.register('u2', 'c1')
    state.claim('u1', 'c1', 'sid1')
    state.claim('u1', 'c2', 'sid2')
    assert sorted(state.revoke('u1')) == ['sid1', 'sid2']
    assert state.sessions('u1') == Sessions(online=0, registered=0)
    assert state.claim('u2', 'c1', 'sid3').previous_sid is None


def test_redis_counts_a_holder_that_stopped_answering_as_offline(redis_server):
    config = Config.for_testing(redis_url=redis_server.url, ping_interval=0.5,
                                ping_timeout=0.5)
    state = RedisState(config)
    state.register('u1', 'c1')
    state.claim('u1', 'c1', 'sid-of-a-killed-process')
    assert state.sessions('u1') == Sessions(online=1, registered=1)
    time.sleep(2.2)   # two heartbeats and their timeouts, unanswered
    assert state.sessions('u1') == Sessions(online=0, registered=1)
    state.confirm('u1', 'c1', 'sid-of-a-killed-process', None)
    assert state.sessions('u1') == Sessions(online=1, registered=1)


@pytest.mark.parametrize('bad', [None, 5, '', 'abc', '1-', '-1', '1-2-3', 'x' * 100])
def test_malformed_message_ids_are_refused(bad):
    with pytest.raises(ValueError):
        parse_message_id(bad)


def test_a_user_keeps_at_most_max_sessions_registrations(backend):
    state, clock = backend(max_sessions_per_user=3, registration_ttl=30)
    for n in range(3):
        state.register('u', f'c{n}')
        clock.advance(0.01)
    state.claim('u', 'c1', 'sid-1')
    # A fourth replaces the unheld one that would expire first (c0), not the held one.
    state.register('u', 'c3')
    with pytest.raises(NotRegistered):
        state.claim('u', 'c0', 'sid-0')
    assert state.sessions('u').registered == 3
    state.register('u', 'c2')   # refreshing one that exists is no new registration
    assert state.sessions('u').registered == 3
    for n, connection_id in enumerate(['c2', 'c3']):
        state.claim('u', connection_id, f'sid-{n + 2}')
    with pytest.raises(TooManySessions):
        state.register('u', 'c4')   # all three held: refused, nothing changed
    assert state.sessions('u') == Sessions(online=3, registered=3)
    state.release('u', 'c2', 'sid-2')
    state.register('u', 'c4')
    assert state.claim('u', 'c4', 'sid-4').previous_sid is None
    with pytest.raises(NotRegistered):
        state.claim('u', 'c2', 'sid-9')   # c2 made room for c4
    state.register('other', 'c0')   # the limit is per user
    assert state.sessions('other').registered == 1


def test_the_default_limit_lets_one_user_hold_thousands_of_sessions(backend):
    # The benchmark's S2 (and the harness): one user, 2,000 live WebSockets.
    state, _ = backend(registration_ttl=30)
    for n in range(2000):
        state.register('many', f'c{n}')
        state.claim('many', f'c{n}', f'sid-{n}')
    assert state.sessions('many') == Sessions(online=2000, registered=2000)


def test_a_user_without_registrations_keeps_no_history(state):
    state.append(['u1'], 'for nobody')
    state.register('u1', 'c1')
    assert state.history('u1') == []
    kept = state.append(['u1'], 'for c1').entries[0]
    assert state.history('u1') == [kept]


def test_a_repeated_idempotency_key_appends_nothing_and_answers_the_first_ids(state):
    registered(state, 'u1', 'u2')
    key = Idempotency('key-1', 'fingerprint-a')
    first = state.append(['u1', 'u2'], 'once', key)
    assert not first.repeated
    again = state.append(['u1', 'u2'], 'once', key)
    assert again.repeated and again.entries == first.entries
    assert [entry.message for entry in state.history('u1')] == ['once']
    with pytest.raises(IdempotencyConflict):
        state.append(['u1', 'u2'], 'another body', Idempotency('key-1', 'fingerprint-b'))
    other = state.append(['u1'], 'once', Idempotency('key-2', 'fingerprint-a'))
    assert not other.repeated
    assert [entry.message for entry in state.history('u1')] == ['once', 'once']


def test_an_idempotency_key_is_forgotten_after_its_window(backend):
    state, clock = backend(idempotency_ttl=1)
    key = Idempotency('key', 'fingerprint')
    first = state.append(['u1'], 'x', key).entries[0]
    clock.advance(1.2)
    second = state.append(['u1'], 'x', key)
    assert not second.repeated and second.entries[0] != first


def test_a_push_to_a_redis_that_does_not_answer_is_sent_once(redis_server, proxies):
    proxy = proxies(redis_server.port)
    state = RedisState(Config.for_testing(redis_url=f'redis://127.0.0.1:{proxy.port}/0'))
    state.register('u1', 'c1')
    state.append(['u1'], 'before')   # Redis knows the script now
    proxy.mute()
    with pytest.raises(OutcomeUnknown):
        state.append(['u1'], 'maybe')
    proxy.restore()
    with redis_server.client() as admin:
        assert admin.xlen(state.keys_of('u1').history('u1')) == 2
    assert [entry.message for entry in state.history('u1')] == ['before', 'maybe']
    state.close()


# Under gevent, as the server runs: every push of a process goes on one connection.
_ONE_TURN = """
import sys
from gevent import monkey
monkey.patch_all()
import gevent
import redis
from notification_socketio.config import Config
from notification_socketio.state.redis import RedisState

class Counting(redis.Connection):
    sends = 0

    def send_packed_command(self, command, check_health=True):
        Counting.sends += 1
        super().send_packed_command(command, check_health)

state = RedisState(Config.for_testing(redis_url=sys.argv[1]))
state._node(state.shards[0]).connection_pool.connection_class = Counting
state.register('u1', 'c1')
state.append(['u1'], 'first')   # Redis knows the script from here on
before = Counting.sends
pushes = [gevent.spawn(state.append, ['u1'], n) for n in range(20)]
gevent.joinall(pushes, raise_error=True)
print(Counting.sends - before)
print(' '.join(push.value.entries[0].message_id for push in pushes))
print(' '.join(str(entry.message) for entry in state.history('u1')))
"""


def test_pushes_made_in_one_turn_of_the_event_loop_reach_redis_in_one_write(redis_server):
    result = subprocess.run([sys.executable, '-c', _ONE_TURN, redis_server.url],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    writes, ids, history = result.stdout.splitlines()
    assert int(writes) == 1
    ids = ids.split()
    # Answered each its own id, in the order they were made.
    assert sorted(ids, key=parse_message_id) == ids and len(set(ids)) == 20
    assert history.split() == ['first', *map(str, range(20))]


def test_with_a_replica_to_wait_for_a_push_is_confirmed_on_it_or_not_replicated(
        redis_server, tmp_path):
    replica = redis_server.start_replica(tmp_path / 'replica')
    state = RedisState(Config.for_testing(redis_url=redis_server.url, redis_wait_replicas=1))
    try:
        state.register('u1', 'c1')
        first = state.append(['u1'], 'on both').entries[0]
        # Answered once the replica confirmed it: a failover now would keep it.
        with replica.client() as client:
            history = client.xrange(state.keys_of('u1').history('u1'))
            assert [entry_id for entry_id, _ in history] == [first.message_id]
        replica.stop()
        with pytest.raises(NotReplicated):
            state.append(['u1'], 'on the primary only')
        # Made on the primary all the same: the live sockets have it, and the history.
        assert [entry.message for entry in state.history('u1')] == ['on both',
                                                                  'on the primary only']
    finally:
        state.close()
        replica.stop()


def test_cluster_shards_spread_evenly_over_the_slots():
    assert shard_prefixes(1) == ['{nsio}:']   # every key in one slot, as before shards
    for count in (2, 3, 16, 1024):
        prefixes = shard_prefixes(count)
        assert len(set(prefixes)) == count
        for number, prefix in enumerate(prefixes):
            assert number * 16384 // count <= key_slot(prefix.encode()) < \
                (number + 1) * 16384 // count


@pytest.fixture(params=['cluster'])
def cluster_state(request):
    state = RedisState(Config.for_testing(redis_url=redis_url(request),
                                          registration_ttl=TTL, history_ttl=TTL))
    yield state
    state.close()


def users_of_shards(state, *shards):
    """A user of each shard given."""
    return [next(f'u{n}' for n in range(100000) if state.shard_of(f'u{n}') == shard)
            for shard in shards]


def test_a_broadcast_reaches_every_shard_each_with_its_own_id(cluster_state):
    state = cluster_state
    assert state.shard_count == 16
    users = users_of_shards(state, *range(16))
    registered(state, *users)
    for user_id in users:
        state.append([user_id], 'before')
    answered = state.append([EVERYONE], 'everyone').entries[0]
    for shard, user_id in enumerate(users):
        before, broadcast = state.history(user_id)
        assert broadcast.message == 'everyone'
        assert parse_message_id(broadcast.message_id) > parse_message_id(before.message_id)
        if shard == 0:
            assert broadcast == answered   # the answer gives the first shard's id


def test_a_push_made_in_some_shards_only_is_unknown_and_a_keyed_retry_makes_the_rest(
        cluster_state, monkeypatch):
    state = cluster_state
    made, refused = users_of_shards(state, 1, 2)
    registered(state, made, refused)
    key = Idempotency('key-1', 'fingerprint')
    run_once = state._run_once

    def refusing(shard, name, keys, args):
        if shard is state.keys_of(refused):
            raise StateUnavailable('Redis: refused (a node that is down, for the test)')
        return run_once(shard, name, keys, args)
    monkeypatch.setattr(state, '_run_once', refusing)
    with pytest.raises(OutcomeUnknown, match='made in 1 of 2 shards'):
        state.append([made, refused], 'both', key)
    assert [entry.message for entry in state.history(made)] == ['both']
    assert state.history(refused) == []
    monkeypatch.setattr(state, '_run_once', lambda shard, *call: refusing(
        state.keys_of(refused), *call))
    with pytest.raises(StateUnavailable):   # refused by every shard: made nowhere
        state.append([made, refused], 'neither')

    monkeypatch.setattr(state, '_run_once', run_once)
    again = state.append([made, refused], 'both', key)
    assert not again.repeated   # made now in one shard
    assert again.entries == [state.history(made)[0], state.history(refused)[0]]
    assert [entry.message for entry in state.history(made)] == ['both']
    assert [entry.message for entry in state.history(refused)] == ['both']
    assert state.append([made, refused], 'both', key).repeated
