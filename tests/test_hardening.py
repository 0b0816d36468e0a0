"""Against the real server: slow consumers, churn, idle crowds, and process faults."""
import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import uuid

import pytest
import requests
import websocket

from conftest import FAST_HEARTBEAT, TOKEN, missing, wait_for

BIG = 'x' * 60_000          # one message: close to MAX_MESSAGE_BYTES
BUFFER_LIMIT = 131_072       # MAX_SOCKET_BUFFER_BYTES of these servers (2 x MAX_MESSAGE_BYTES)


def unique(prefix):
    return f'{prefix}-{uuid.uuid4().hex[:10]}'


class StalledWebSocket:
    """A WebSocket client that claims its registration, then never reads again."""

    def __init__(self, server, user, connection_id):
        url = server.url.replace('http://', 'ws://') + '/socket.io/?EIO=4&transport=websocket'
        # A small receive buffer: the kernel stops taking bytes for it early.
        self.ws = websocket.create_connection(
            url, timeout=10, sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)])
        assert self.ws.recv().startswith('0{')         # Engine.IO OPEN
        self.ws.send('40')
        assert self.ws.recv().startswith('40')         # Socket.IO CONNECT
        self.ws.send('420' + json.dumps(['register', user, connection_id]))
        assert self.ws.recv() == '430[{"ok":true}]'

    def close(self):
        self.ws.sock and self.ws.sock.close()


class PollingSession:
    """A raw long-polling Socket.IO session, connected to the default namespace."""

    def __init__(self, server):
        self.url = server.url + '/socket.io/'
        self.http = requests.Session()
        opened = self.http.get(self.url, params={'EIO': '4', 'transport': 'polling'},
                               timeout=10).text
        self.sid = json.loads(opened[1:])['sid']
        self.post('40')
        assert self.poll().startswith('40')

    def post(self, payload, check=True):
        response = self.http.post(self.url, params=self.params(), data=payload, timeout=30)
        assert response.ok or not check
        return response

    def poll(self):
        return self.http.get(self.url, params=self.params(), timeout=10).text

    def params(self):
        return {'EIO': '4', 'transport': 'polling', 'sid': self.sid}

    def close(self):
        self.http.close()


class StalledPoll(PollingSession):
    """A long-polling client that claims its registration, then never polls again."""

    def __init__(self, server, user, connection_id):
        super().__init__(server)
        self.post('420' + json.dumps(['register', user, connection_id]))
        assert self.poll() == '430[{"ok":true}]'


@pytest.mark.parametrize('stalled_client', [StalledWebSocket, StalledPoll],
                         ids=['websocket', 'polling'])
def test_a_client_that_stops_reading_is_dropped_and_slows_nobody(
        start_server, listeners, stalled_client):
    server = start_server(env={'MAX_SOCKET_BUFFER_BYTES': str(BUFFER_LIMIT),
                               'HISTORY_SIZE': '1000'})
    slow_user, fast_user = unique('slow'), unique('fast')
    assert server.register(slow_user, 'slow-c').status_code == 200
    assert server.register(fast_user, 'fast-c').status_code == 200
    stalled = stalled_client(server, slow_user, 'slow-c')
    fast = listeners(server.url).connect()
    assert fast.register(fast_user, 'fast-c') == {'ok': True}

    pushed = []
    while server.metric('nsio_slow_consumers_total') == 0:
        assert len(pushed) < 400, 'the stalled client was never dropped'
        pushed.append(server.pushed(slow_user, BIG))
        # Everyone else is served at once, message after message.
        fast_id = server.pushed(fast_user, len(pushed))
        message, meta = fast.get(timeout=5)
        assert (message, meta['id']) == (len(pushed), fast_id)
    wait_for(lambda: server.sessions(slow_user)['online'] == 0,
             message='the stalled socket dropped')
    assert 'does not read' in server.log()
    stalled.close()

    # It comes back (as the official client would) and gets everything it missed, in order.
    back = listeners(server.url).connect()
    assert back.register(slow_user, 'slow-c') == {'ok': True}
    assert back.until_received(pushed) == pushed


class Crowd:
    """tests/js/crowd.js: many official socket.io clients in one Node process."""

    def __init__(self, js_modules, **options):
        self.process = subprocess.Popen(
            ['node', str(js_modules.parent / 'crowd.js'), json.dumps(options)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def next_line(self, timeout):
        """The next JSON line it prints (a reader thread keeps the deadline)."""
        lines = queue.Queue()
        threading.Thread(target=lambda: lines.put(self.process.stdout.readline()),
                         daemon=True).start()
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            self.process.kill()
            raise AssertionError(f'crowd.js printed nothing within {timeout}s') from None
        if not line:
            raise AssertionError(f'crowd.js failed: {self.process.stderr.read()[-3000:]}')
        return json.loads(line)

    def go_on(self):
        self.process.stdin.write('go\n')
        self.process.stdin.flush()

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def crowds(js_modules):
    if shutil.which('node') is None:
        missing('node is needed for the crowd tests')
    made = []

    def make(**options):
        crowd = Crowd(js_modules, token=TOKEN, **options)
        made.append(crowd)
        return crowd
    yield make
    for crowd in made:
        crowd.kill()


SETTLED_AFTER = 2_000


@pytest.mark.parametrize('cycles', [6_000, pytest.param(20_000, marks=pytest.mark.slow)])
def test_churn_leaves_no_socket_room_or_registration_behind_and_memory_flat(
        start_server, crowds, cycles):
    # Short lifetimes so that what a cycle rightly leaves (a registration for reconnects,
    # the user's history) goes within seconds and cannot pass for a leak.
    server = start_server(env={'REGISTRATION_TTL': '1', 'HISTORY_TTL': '1'})
    crowd = crowds(mode='churn', url=server.url, cycles=cycles, checkpoint=SETTLED_AFTER,
                   concurrency=20, users=1000)
    assert crowd.next_line(timeout=300) == {'checkpoint': SETTLED_AFTER}
    settled = server.rss_kib()
    crowd.go_on()
    assert crowd.next_line(timeout=900)['cycles'] == cycles
    after = server.rss_kib()
    figures = f'{settled} KiB after {SETTLED_AFTER} cycles, {after} KiB after {cycles}'
    print('churn:', figures)
    assert after <= settled * 1.10, figures

    for gauge in ('nsio_sockets_connected', 'nsio_registrations_held', 'nsio_users_online',
                  'nsio_user_rooms'):
        wait_for(lambda: server.metric(gauge) == 0, message=f'{gauge} back to 0')
    # Once their TTL is over, none of the users keeps a registration.
    wait_for(lambda: all(server.sessions(f'churn-{n}')['registered'] == 0
                         for n in range(0, 1000, 97)),
        timeout=15, message='registrations expired')


@pytest.mark.parametrize('sessions', [500, pytest.param(2_000, marks=pytest.mark.slow)])
def test_thousands_of_idle_connections_are_all_kept_over_many_ping_intervals(
        start_server, crowds, sessions):
    server = start_server(env=FAST_HEARTBEAT)   # a ping every second
    crowd = crowds(mode='idle', url=server.url, sessions=sessions, holdSeconds=8)
    assert crowd.next_line(timeout=300) == {'opened': sessions}
    assert server.metric('nsio_registrations_held') == sessions
    assert crowd.next_line(timeout=60) == {'connected': sessions, 'disconnects': 0}


@pytest.mark.parametrize('transport', ['websocket', 'polling'])
def test_sigterm_under_load_loses_no_message_the_backend_was_answered_200_for(
        start_server, listeners, redis_server, transport):
    # A history that keeps the whole run, so that the check below sees every message.
    env = {'REDIS_URL': redis_server.url, 'HISTORY_SIZE': '100000'}
    server = start_server(env=env)
    user = unique('user')
    assert server.register(user, 'tab').status_code == 200
    client = listeners(server.url, transport, reconnection=True).follow(user, 'tab')

    answered, stop = [], threading.Event()

    def backend():
        http = requests.Session()
        while not stop.is_set():
            try:
                response = http.post(f'{server.url}/api/{user}/push', timeout=5,
                                     json={'message': 'load'}, headers={'X-AUTH-TOKEN': TOKEN})
            except requests.RequestException:
                continue   # refused while the server is down: the backend would retry
            if response.status_code == 200:
                answered.append(response.json()['id'])
    pushers = [threading.Thread(target=backend) for _ in range(4)]
    for pusher in pushers:
        pusher.start()
    try:
        wait_for(lambda: len(answered) > 200, message='pushes under way')
        assert server.stop(signal.SIGTERM) == 0
        before_restart = len(answered)
        start_server(env=env, port=server.port)
        wait_for(lambda: len(answered) > before_restart + 100, message='pushes again')
    finally:
        stop.set()
        for pusher in pushers:
            pusher.join()

    # Every 200 is in the history, and reaches the client once it is back.
    kept = {entry_id for entry_id, _ in redis_server.client().xrange(f'nsio:history:{user}')}
    assert set(answered) <= kept
    assert client.next_ack() == {'ok': True}
    assert set(client.until_received(answered, timeout=60)) >= set(answered)


def test_a_killed_worker_is_replaced_and_its_clients_recover(
        start_server, listeners, redis_server):
    env = {'REDIS_URL': redis_server.url}
    server, other = start_server(env=env), start_server(env=env)
    user = unique('user')
    assert server.register(user, 'tab').status_code == 200
    client = listeners(server.url, 'websocket', reconnection=True).follow(user, 'tab')
    first = server.pushed(user, 'before')
    assert client.until_received([first]) == [first]

    worker = server.worker_pid()
    os.kill(worker, signal.SIGKILL)
    meanwhile = other.pushed(user, 'while the worker was dead')
    wait_for(lambda: server.worker_pid() != worker, message='a new worker')
    assert client.next_ack() == {'ok': True}   # re-registered on the new worker
    # At least once: `before` comes again if its PONG had not been seen before the kill.
    assert client.until_received([meanwhile]) in ([meanwhile], [first, meanwhile])
    after = server.pushed(user, 'after')
    assert client.until_received([after]) == [after]


GARBAGE = ['4garbage', '42[', '42["register"', '9', '', '4' + '[' * 5000 + ']' * 5000,
           '42{"a":1}', '45-["x"]', '451-["register",{"_placeholder":true,"num":0}]',
           '40/nope,', '5', 'x' * 70_000, '\x1e\x1e', 'bAAAAAAAAAA',
           '42' + json.dumps(['register', 'u', 'c', {'since': 'x' * 10_000}])]


def test_malformed_packets_drop_their_socket_in_one_log_line(start_server, listeners):
    server = start_server()
    ws_url = server.url.replace('http://', 'ws://') + '/socket.io/?EIO=4&transport=websocket'
    for garbage in GARBAGE:
        ws = websocket.create_connection(ws_url, timeout=10)
        assert ws.recv().startswith('0{')
        ws.send('40')
        assert ws.recv().startswith('40')
        with contextlib.suppress(websocket.WebSocketException, OSError):
            ws.send(garbage)
        ws.close()

        poll = PollingSession(server)
        assert poll.post(garbage.encode(), check=False).status_code in (200, 400)
        poll.close()

    # Still serving, and said so without a traceback.
    user = unique('user')
    assert server.register(user, 'tab').status_code == 200
    client = listeners(server.url).follow(user, 'tab')
    message_id = server.pushed(user, 'fine')
    assert client.until_received([message_id]) == [message_id]
    assert 'sent a malformed packet' in server.log()
    assert 'Traceback' not in server.log()
