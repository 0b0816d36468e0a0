"""REDIS_URL beyond one server: a real Redis Cluster and a real Sentinel set.

Server processes (gunicorn, the gevent worker) on a three-node Cluster or behind three
Sentinels act as one, as on one redis-server; a failover of the primary during pushes
loses no message the socket was told of, and no push gets an error other than 503/504.
"""
import concurrent.futures
import threading
import uuid

import pytest
import requests

from conftest import FAST_HEARTBEAT, TOKEN, RedisClusterNodes, cluster_shard, wait_for
from notification_socketio.config import Config
from notification_socketio.state import OutcomeUnknown, StateUnavailable
from notification_socketio.state import parse_message_id
from notification_socketio.state.redis import CLUSTER_SHARDS, RedisState, shard_prefixes


@pytest.fixture
def user():
    return 'user-' + uuid.uuid4().hex[:8]


@pytest.fixture(params=['cluster', 'sentinel'])
def topology(request):
    return request.getfixturevalue('redis_' + request.param)


def test_processes_on_a_cluster_or_behind_sentinels_act_as_one(
        topology, start_server, listeners, user):
    a, b = (start_server(env={'REDIS_URL': topology.url, **FAST_HEARTBEAT}) for _ in range(2))
    for connection_id in ('tab-1', 'tab-2'):
        assert a.register(user, connection_id).status_code == 200
    on_b = listeners(b.url, 'websocket').follow(user, 'tab-1')
    on_a = listeners(a.url, 'polling').follow(user, 'tab-2')
    pushed = [server.pushed(user, f'via {n}') for n, server in enumerate((a, b, a, b))]
    b.pushed_broadcast({'notice': 'to everyone'})
    for tab in (on_a, on_b):
        assert tab.until_received(pushed) == pushed
        message, meta = tab.get()   # with the id of the user's shard (on a Cluster)
        assert message == {'notice': 'to everyone'}
        assert parse_message_id(meta['id']) > parse_message_id(pushed[-1])
        assert tab.received_nothing(), 'a message arrived twice'
    assert a.sessions(user) == {'userId': user, 'online': 2, 'registered': 2}

    # python-socketio's own channel: the newer claim on `a` disconnects the socket on `b`.
    newer = listeners(a.url, 'websocket').follow(user, 'tab-1')
    wait_for(lambda: not on_b.sio.connected, message='the older socket on b to go')
    message_id = b.pushed(user, 'only the newer socket')
    assert newer.until_received([message_id]) == [message_id]


def test_a_cluster_spreads_its_users_over_every_primary_in_shards(
        redis_cluster, start_server, listeners):
    a, b = (start_server(env={'REDIS_URL': redis_cluster.url, **FAST_HEARTBEAT})
            for _ in range(2))
    with redis_cluster.client() as client:
        primaries = {node.name: node for node in client.get_primaries()}
        users = {}   # a primary's name -> a user whose shard it serves
        for n in range(1000):
            users.setdefault(client.get_node_from_key(cluster_shard(f'u{n}')).name, f'u{n}')
        assert users.keys() == primaries.keys()
    tabs = {}
    for n, user_id in enumerate(users.values()):
        assert a.register(user_id, 'tab').status_code == 200
        server, transport = ((a, 'websocket'), (b, 'polling'), (b, 'websocket'))[n % 3]
        tabs[user_id] = listeners(server.url, transport).follow(user_id, 'tab')

    # Each user's own push, then one push to all of them (a script in each shard, at once),
    # then a broadcast: each tab gets all three, in id order, once.
    own = {user_id: a.pushed(user_id, 'own') for user_id in users.values()}
    together = requests.post(f'{b.url}/api/push', json={'users': list(users.values()),
                                                         'message': 'together'},
                             headers={'X-AUTH-TOKEN': TOKEN, 'Idempotency-Key': 'k1'},
                             timeout=10)
    assert together.status_code == 200, together.text
    ids = together.json()['ids']
    assert a.pushed_broadcast('everyone')
    for user_id, tab in tabs.items():
        assert tab.until_received([own[user_id], ids[user_id]]) == \
            [own[user_id], ids[user_id]]
        message, meta = tab.get()
        assert message == 'everyone'
        assert parse_message_id(meta['id']) > parse_message_id(ids[user_id])
        assert tab.received_nothing(), 'a message arrived twice'

    # Repeated with its Idempotency-Key, on another process: the same ids, nothing sent.
    again = requests.post(f'{a.url}/api/push', json={'users': list(users.values()),
                                                      'message': 'together'},
                          headers={'X-AUTH-TOKEN': TOKEN, 'Idempotency-Key': 'k1'},
                          timeout=10)
    assert again.status_code == 200 and again.json()['ids'] == ids
    assert again.headers.get('Idempotent-Replayed') == 'true'
    last = {user_id: b.pushed(user_id, 'last') for user_id in users.values()}
    for user_id, tab in tabs.items():
        assert tab.until_received([last[user_id]]) == [last[user_id]]

    # Every primary holds keys, and every key is in a shard's slot.
    with redis_cluster.client() as client:
        slots = {client.keyslot(prefix) for prefix in shard_prefixes(CLUSTER_SHARDS)}
        for node in primaries.values():
            keys = client.get_redis_connection(node).keys('*')
            assert keys and {client.keyslot(key) for key in keys} <= slots, keys


@pytest.fixture(params=['cluster', 'sentinel'])
def replicated(request, tmp_path):
    """A topology whose primary has a replica to fail over to."""
    if request.param == 'sentinel':
        return request.getfixturevalue('redis_sentinel')
    nodes = RedisClusterNodes(tmp_path, primaries=3, replicas=1).start()
    request.addfinalizer(nodes.stop)
    return nodes


def _primary(topology, user_id):
    if isinstance(topology, RedisClusterNodes):
        return topology.primary_of(cluster_shard(user_id))
    return topology.server_on(topology.primary_port())


def test_a_failover_of_the_primary_during_pushes_loses_nothing_the_socket_was_sent(
        replicated, start_server, listeners, user):
    server = start_server(env={'REDIS_URL': replicated.url, **FAST_HEARTBEAT})
    assert server.register(user, 'tab').status_code == 200
    tab = listeners(server.url, 'websocket').follow(user, 'tab')
    kept, statuses, stop = [], [], threading.Event()

    def push():
        n = 0
        while not stop.is_set():
            response = requests.post(f'{server.url}/api/{user}/push', json={'message': n},
                                     headers={'X-AUTH-TOKEN': TOKEN}, timeout=30)
            statuses.append(response.status_code)
            if response.status_code == 200:
                kept.append(response.json()['id'])
            n += 1

    pusher = threading.Thread(target=push)
    pusher.start()
    try:
        wait_for(lambda: len(kept) >= 20, message='pushes before the failover')
        _primary(replicated, user).stop()
        wait_for(lambda: any(status != 200 for status in statuses), timeout=30,
                 message='a push to notice the primary is gone')
        failed_at = len(statuses)
        wait_for(lambda: statuses[failed_at:].count(200) >= 20, timeout=60,
                 message='pushes to succeed again on the new primary')
    finally:
        stop.set()
        pusher.join(timeout=60)
    assert set(statuses) <= {200, 503, 504}, statuses
    # Every push answered 200 reaches the socket, in order: those the old primary took
    # were published before it answered; the rest come from the new one.
    seen = tab.until_received(kept, timeout=60)
    assert [message_id for message_id in seen if message_id in set(kept)] == kept
    # Anything else is a push whose answer was lost (504: it may have been made).
    assert len(seen) - len(kept) <= statuses.count(504)
    after = server.pushed(user, 'after the failover')
    assert tab.until_received([after]) == [after]


def test_a_push_sent_to_a_primary_demoted_since_is_known_not_to_be_made(redis_sentinel):
    # READONLY: redis-py's Sentinel connection turns it into a ConnectionError (DEMOTED);
    # it is not "no answer": the backend gets 503 (not made), never 504 (unknown).
    state = RedisState(Config.for_testing(redis_url=redis_sentinel.url))
    state.register('u1', 'c1')
    state.append(['u1'], 'before')   # the pool now holds a connection to the primary
    with redis_sentinel.replica.client() as client:
        client.replicaof('NO', 'ONE')
    with redis_sentinel.primary.client() as client:
        client.replicaof('127.0.0.1', redis_sentinel.replica.port)
    with pytest.raises(StateUnavailable):
        state.append(['u1'], 'refused')
    state.close()


def test_a_push_with_no_answer_is_still_unknown_behind_sentinels(redis_sentinel, proxies):
    # The other side of the line above: silence after sending is OutcomeUnknown (504).
    state = RedisState(Config.for_testing(redis_url=redis_sentinel.url))
    state.register('u1', 'c1')
    state.append(['u1'], 'before')
    redis_sentinel.primary.process.send_signal(__import__('signal').SIGSTOP)
    try:
        with pytest.raises(OutcomeUnknown):
            state.append(['u1'], 'maybe')
    finally:
        redis_sentinel.primary.process.send_signal(__import__('signal').SIGCONT)
    state.close()


def test_with_a_replica_to_wait_for_pushes_are_answered_once_it_has_them(
        start_server, redis_server, tmp_path):
    # The server's own path (gevent, the pushes of a loop turn in one write, then WAIT).
    replica = redis_server.start_replica(tmp_path / 'replica')
    server = start_server({'REDIS_URL': redis_server.url, 'REDIS_WAIT_REPLICAS': '1'})
    try:
        assert server.register('u1', 'c1').status_code == 200
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(lambda n: server.pushed('u1', n), range(32)))
        with replica.client() as client:
            assert {entry_id for entry_id, _ in client.xrange('nsio:history:u1')} == set(ids)

        replica.stop()
        plain = server.push('u1', 'no key')   # no key: answered before Flask
        assert plain.status_code == 504, plain.text
        assert 'no replica confirmed it' in plain.json()['error']
        headers = {'X-AUTH-TOKEN': TOKEN, 'Idempotency-Key': 'push-1'}
        push = {'url': f'{server.url}/api/u1/push', 'json': {'message': 'wanted'},
                'headers': headers, 'timeout': 30}
        response = requests.post(**push)
        assert response.status_code == 504, response.text
        assert 'no replica confirmed it' in response.json()['error']
        with redis_server.client() as admin:
            assert admin.xlen('nsio:history:u1') == 34   # both made on the primary

        replica.follow(redis_server)
        again = requests.post(**push)   # the same key: nothing sent twice
        assert again.status_code == 200, again.text
        with replica.client() as client:
            assert client.xlen('nsio:history:u1') == 34
            assert [entry_id for entry_id, _ in client.xrange('nsio:history:u1')][-1] \
                == again.json()['id']
    finally:
        replica.stop()
