"""The delivery promise when things overlap: message-queue cuts, late copies, racing events.

Every test here reads `Listener.arrivals`, the ids in the order the client saw them,
duplicates included: on one connection ids only go up, and nothing is missing.
"""
import threading
import uuid

import gevent
import pytest
import socketio

from conftest import auth, wait_for
from notification_socketio.state import Entry


@pytest.fixture
def user():
    return 'user-' + uuid.uuid4().hex[:8]


@pytest.fixture
def pair(redis_server, start_server):
    """Two processes on one Redis, with the default (slow) heartbeat: `online` stays exact."""
    env = {'REDIS_URL': redis_server.url}
    return start_server(env=env), start_server(env=env)


def assert_in_order_and_complete(client, pushed):
    """The client saw exactly `pushed`, in order: no gap, no duplicate, no reordering."""
    try:
        wait_for(lambda: len(client.arrivals) >= len(pushed), timeout=30,
                 message='every message')
    finally:
        missing = [message_id for message_id in pushed if message_id not in client.arrivals]
        assert client.arrivals == pushed, f'missing {missing} of {pushed}; saw {client.arrivals}'



class Pusher(threading.Thread):
    """Pushes to `users` round-robin from another thread until stopped; keeps each user's ids."""

    def __init__(self, server, users, count):
        super().__init__(daemon=True)
        self.server, self.users, self.count = server, users, count
        self.pushed = {user: [] for user in users}
        self.done = threading.Event()
        self.error = None

    def run(self):
        try:
            for n in range(self.count):
                user = self.users[n % len(self.users)]
                self.pushed[user].append(self.server.pushed(user, f'message {n} é'))
        except BaseException as error:   # reported by the test, not lost in a thread
            self.error = error
        finally:
            self.done.set()

    def wait(self):
        assert self.done.wait(120), 'the pushes did not finish'
        assert self.error is None, self.error
        return self.pushed


def test_cuts_of_the_message_queue_during_pushes_lose_and_reorder_nothing(
        pair, redis_server, listeners):
    here, there = pair
    users = [f'user-{uuid.uuid4().hex[:6]}-{n}' for n in range(64)]
    clients = {}
    for user in users:
        assert here.register(user, 'tab').status_code == 200
        clients[user] = listeners(here.url).follow(user, 'tab')
    pusher = Pusher(there, users, 640)
    pusher.start()
    with redis_server.client() as admin:
        for cut in range(4):
            wait_for(lambda: sum(map(len, pusher.pushed.values())) >= 120 * (cut + 1)
                     or pusher.done.is_set(), message='pushes under way')
            # Only the subscriber connections: every process misses what is published
            # until it has subscribed again, and must catch its sockets up.
            admin.client_kill_filter(_type='pubsub')
    pushed = pusher.wait()
    for user in users:
        assert_in_order_and_complete(clients[user], pushed[user])


def test_claims_during_pushes_never_send_an_older_id_after_a_newer_one(
        pair, listeners, user):
    here, there = pair
    connection_ids = [f'tab-{n}' for n in range(4)]
    for connection_id in connection_ids:
        assert here.register(user, connection_id).status_code == 200
    pusher = Pusher(there, [user], 300)
    pusher.start()
    sockets = []
    while not pusher.done.is_set():
        # Each claim replays from the registration's mark while live copies arrive.
        for connection_id in connection_ids:
            sockets.append(listeners(here.url).follow(user, connection_id))
    pushed = pusher.wait()[user]
    for client in sockets:
        ids = client.arrivals
        assert ids == sorted(set(ids)), f'out of order or repeated on one connection: {ids}'
    last = sockets[-len(connection_ids):]
    for client in last:
        client.until_received(pushed[-1:])


def _raw_client(url):
    client = socketio.Client(reconnection=False)
    client.connect(url, transports=['websocket'], wait_timeout=10)
    return client


class Stall(threading.Thread):
    """Keep Redis busy with a script for `seconds`: every other command waits meanwhile."""

    SCRIPT = """
    local start = redis.call('TIME')
    repeat
      local now = redis.call('TIME')
    until (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > tonumber(ARGV[1])
    """

    def __init__(self, redis_server, seconds=0.3):
        super().__init__(daemon=True)
        self.redis_server, self.seconds = redis_server, seconds
        self.started = threading.Event()

    def run(self):
        with self.redis_server.client() as admin:
            admin.ping()
            self.started.set()
            admin.eval(self.SCRIPT, 0, int(self.seconds * 1_000_000))

    def __enter__(self):
        self.start()
        self.started.wait(10)
        return self

    def __exit__(self, *exc_info):
        self.join(10)


def test_a_disconnect_while_register_waits_leaves_no_registration_held(
        pair, redis_server, user):
    here, _ = pair
    for n in range(30):
        assert here.register(user, f'tab-{n}').status_code == 200
        client = _raw_client(here.url)
        with Stall(redis_server):
            client.emit('register', (user, f'tab-{n}'))
            client.disconnect()   # while the claim waits for Redis
    wait_for(lambda: here.sessions(user)['online'] == 0, timeout=10,
             message='every registration released')
    # And nothing is held by a socket that is gone: a new claim gets it without a takeover.
    assert here.metric('nsio_registrations_held') == 0


def test_two_registers_of_one_socket_keep_its_hold(pair, redis_server, listeners, user):
    here, there = pair
    for n in range(10):
        connection_id = f'tab-{n}'
        assert here.register(user, connection_id).status_code == 200
        client = listeners(here.url).connect()
        acks = []
        with Stall(redis_server, 0.1):
            for _ in range(2):   # without waiting for the first acknowledgement
                client.sio.emit('register', (user, connection_id), callback=acks.append)
        wait_for(lambda: len(acks) == 2, message='both acknowledgements')
        assert acks == [{'ok': True}, {'ok': True}]
        assert there.sessions(user)['online'] == 1, f'attempt {n}: the hold was dropped'
        message_id = there.pushed(user, 'still held')
        assert_in_order_and_complete(client, [message_id])
        client.close()
        wait_for(lambda: there.sessions(user)['online'] == 0, message='released')


def test_concurrent_registers_of_one_socket_take_effect_in_order(
        pair, redis_server, listeners, user):
    here, there = pair
    for connection_id in ('first', 'second'):
        assert here.register(user, connection_id).status_code == 200
    client = listeners(here.url).connect()
    acks = []
    with Stall(redis_server, 0.1):
        client.sio.emit('register', (user, 'first'), callback=acks.append)
        client.sio.emit('register', (user, 'second'), callback=acks.append)
    wait_for(lambda: len(acks) == 2, message='both acknowledgements')
    assert acks == [{'ok': True}, {'ok': True}]
    # The later register wins: the socket holds `second` and let `first` go, so a
    # newcomer claiming `first` takes it from nobody.
    newcomer = listeners(there.url).connect()
    assert newcomer.register(user, 'first') == {'ok': True}
    assert there.sessions(user)['online'] == 2, 'the socket had kept "first"'


def test_a_late_live_copy_of_a_replayed_message_is_not_sent_again(app, rest, socket_client):
    # With Redis, a message's pub/sub copy can reach a process after the history read of
    # a claim already sent it; it must not go out again after newer ones.
    server = app.extensions['notification_socketio']
    assert rest.put('/api/u/register?connectionId=tab', headers=auth()).status_code == 200
    [first] = server.delivery.push(['u'], 'first').entries
    [second] = server.delivery.push(['u'], 'second').entries
    client = socket_client()
    assert client.emit('register', 'u', 'tab', callback=True) == {'ok': True}
    server.delivery.deliver('u', first)    # the late copies
    server.delivery.deliver('u', second)
    [third] = server.delivery.push(['u'], 'third').entries
    received = [event['args'] for event in client.get_received()]
    assert received == ['first', 'second', 'third']


def test_a_message_held_back_during_a_catch_up_with_nothing_to_replay_is_sent(
        app, rest, socket_client):
    # After the message queue came back, a socket's catch-up found nothing new in the
    # history, while a live message arrived meanwhile: it must go out, not be dropped.
    server = app.extensions['notification_socketio']
    assert rest.put('/api/u/register?connectionId=tab', headers=auth()).status_code == 200
    client = socket_client()
    assert client.emit('register', 'u', 'tab', callback=True) == {'ok': True}
    catch_ups = server.delivery.resync()   # as after a resubscription
    live = Entry('9999999999999-0', 9999999999999, 'published while catching up')
    server.delivery.deliver('u', live)   # held back: the catch-up has not run yet
    assert gevent.joinall(catch_ups, timeout=10) == catch_ups
    assert [event['args'] for event in client.get_received()] == [
        'published while catching up']
