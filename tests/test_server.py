"""End to end: the real server under gunicorn, python-socketio clients on both transports."""
import queue
import signal
import subprocess
import sys
import time
import uuid

import pytest
import requests
import socketio

from conftest import TOKEN, TRANSPORTS, ServerProcess, free_port, wait_for


def unique(prefix):
    """An id no other test uses, so tests can share one server."""
    return f'{prefix}-{uuid.uuid4().hex[:12]}'


def claimed(server, listener, user_id, connection_id=None):
    """Register through REST, then claim it from the listener's socket."""
    connection_id = connection_id or unique('conn')
    assert server.register(user_id, connection_id).status_code == 200
    assert listener.register(user_id, connection_id) == {'ok': True}
    return connection_id


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_a_push_reaches_the_registered_socket_with_its_meta(server, listeners, transport):
    user = unique('user')
    listener = listeners(server.url, transport).connect()
    assert listener.sio.transport() == transport
    claimed(server, listener, user)
    before = int(time.time() * 1000)
    response = server.push(user, {'title': 'hello', 'n': [1, 2.5, None, True]})
    assert response.status_code == 200
    message, meta = listener.get()
    assert message == {'title': 'hello', 'n': [1, 2.5, None, True]}
    assert meta['id'] == response.json()['id']
    assert before - 1000 <= meta['ts'] <= int(time.time() * 1000) + 1000


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_unicode_survives_the_round_trip(server, listeners, transport):
    user = unique('usér-名前')
    listener = listeners(server.url, transport).connect()
    claimed(server, listener, user)
    payloads = ['Grüße', '世界', '🚀 emoji', 'mixed \u2028 separators \u0000 nul',
                {'clé': 'valeur', '键': ['值']}]
    for payload in payloads:
        assert server.push(user, payload).status_code == 200
    assert [listener.get()[0] for _ in payloads] == payloads


def test_form_encoded_pushes_arrive_as_strings(server, listeners):
    user = unique('user')
    listener = listeners(server.url).connect()
    claimed(server, listener, user)
    response = requests.post(f'{server.url}/api/{user}/push', data={'message': 'from a form'},
                             headers={'X-AUTH-TOKEN': TOKEN}, timeout=10)
    assert response.status_code == 200
    message, meta = listener.get()
    assert message == 'from a form' and meta['id'] == response.json()['id']


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_every_session_of_a_user_receives_and_no_other_user_does(
        server, listeners, transport):
    alice, bob = unique('alice'), unique('bob')
    alice_tabs = [listeners(server.url, transport).connect() for _ in range(3)]
    for tab in alice_tabs:
        claimed(server, tab, alice)
    bob_tab = listeners(server.url, transport).connect()
    claimed(server, bob_tab, bob)
    stranger = listeners(server.url, transport).connect()   # connected, never registered

    server.push(alice, 'for alice')
    server.push(bob, 'for bob')
    for tab in alice_tabs:
        assert tab.get()[0] == 'for alice'
    assert bob_tab.get()[0] == 'for bob'
    # Both pushes have been delivered in order; nothing else may follow.
    server.push(bob, 'marker')
    assert bob_tab.get()[0] == 'marker'
    for tab in alice_tabs:
        assert tab.received_nothing()
    assert stranger.received_nothing(within=0.1)


def test_a_client_cannot_claim_what_the_backend_did_not_register(server, listeners):
    user = unique('user')
    listener = listeners(server.url).connect()
    ack = listener.register(user, 'never-registered')
    assert ack['ok'] is False
    assert listener.register(123, None)['ok'] is False
    server.push(user, 'private')
    owner = listeners(server.url).connect()
    claimed(server, owner, user)
    server.push(user, 'second')
    assert owner.get()[0] == 'second'
    assert listener.received_nothing()


def test_a_newer_claim_disconnects_the_older_socket(server, listeners):
    user = unique('user')
    old = listeners(server.url, 'polling').connect()
    connection_id = claimed(server, old, user)
    new = listeners(server.url, 'websocket').connect()
    assert new.register(user, connection_id) == {'ok': True}
    wait_for(lambda: not old.sio.connected, message='the older socket to be disconnected')
    server.push(user, 'to the newer socket')
    assert new.get()[0] == 'to the newer socket'


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_a_reconnecting_client_claims_its_registration_again(server, listeners, transport):
    user = unique('user')
    first = listeners(server.url, transport).connect()
    connection_id = claimed(server, first, user)
    first.close()
    again = listeners(server.url, transport).connect()
    assert again.register(user, connection_id) == {'ok': True}
    server.push(user, 'after the reconnect')
    assert again.get()[0] == 'after the reconnect'


def test_connection_ids_and_tokens_stay_out_of_the_log(server, listeners):
    user = unique('user')
    connection_id = 'secret-connection-' + uuid.uuid4().hex
    listener = listeners(server.url, 'polling').connect()
    claimed(server, listener, user, connection_id)
    server.push(user, 'x')
    listener.get()
    listener.close()
    log = server.log()
    assert connection_id[:4] + '***' in log
    assert connection_id not in log and connection_id[:8] not in log
    assert TOKEN not in log



def test_the_access_log_is_gunicorns_and_holds_no_query_string(start_server, listeners):
    server = start_server(args=['--access-logfile', '-'])
    user = unique('user')
    connection_id = 'secret-connection-' + uuid.uuid4().hex
    listener = listeners(server.url, 'polling').connect()
    claimed(server, listener, user, connection_id)
    assert server.push(user, 'x').status_code == 200   # answered before Flask (fastpush.py)
    listener.get()
    wait_for(lambda: f'"POST /api/{user}/push" 200' in server.log())
    wait_for(lambda: f'"PUT /api/{user}/register" 200' in server.log())
    assert '"GET /socket.io/' in server.log()
    assert connection_id not in server.log() and 'EIO=4' not in server.log()

@pytest.mark.parametrize('env, args', [
    ({'AUTH_TOKEN': ''}, []),
    ({'AUTH_TOKEN': ' , '}, []),
    ({'AUTH_TOKEN': 't', 'PORT': 'http'}, []),
    ({'AUTH_TOKEN': 't'}, ['-w', '2']),
])
def test_the_server_fails_closed_with_one_line(start_server, env, args):
    server = start_server(env=env, args=args, wait=False)
    assert server.process.wait(timeout=60) != 0
    output = server.log()
    assert 'notification-socketio: ' in output
    assert 'Traceback' not in output
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + '/api/status/ping', timeout=2)


def test_the_app_fails_closed_without_the_gunicorn_settings_too(start_server, tmp_path):
    bare_config = tmp_path / 'bare.conf.py'
    bare_config.write_text('')
    server = start_server(env={'AUTH_TOKEN': ''}, wait=False, args=[
        '-c', str(bare_config), '--no-control-socket',
        '-k', 'geventwebsocket.gunicorn.workers.GeventWebSocketWorker'])
    assert server.process.wait(timeout=60) != 0
    assert 'notification-socketio: AUTH_TOKEN is not set' in server.log()
    assert 'Traceback' not in server.log()


def test_the_console_script_fails_closed_too():
    result = subprocess.run([sys.executable, '-m', 'notification_socketio.cli', 'serve'],
                            env={'PATH': '/usr/bin:/bin'}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        result.stderr.strip().splitlines()[0]]
    assert 'AUTH_TOKEN' in result.stderr


def test_the_console_script_serves(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, '-m', 'notification_socketio.cli', 'serve',
         '--bind', f'127.0.0.1:{port}'],
        cwd=tmp_path, env={'PATH': '/usr/bin:/bin', 'AUTH_TOKEN': TOKEN},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        server = ServerProcess(port=port)
        server.process = process
        wait_for(server.answers, timeout=30, message='the console script server')
        assert server.register('u', 'c').status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_port_comes_from_the_environment_and_web_concurrency_is_ignored(start_server):
    port = free_port()
    server = start_server(env={'PORT': str(port), 'WEB_CONCURRENCY': '4'}, port=port,
                          bind=False)
    assert f'Listening at: http://0.0.0.0:{port}' in server.log()
    assert server.log().count('Booting worker') == 1


def test_cors_allows_only_the_configured_origins(start_server):
    server = start_server(env={'CORS_ALLOWED_ORIGINS': 'https://app.example'})
    handshake = server.url + '/socket.io/?EIO=4&transport=polling'
    allowed = requests.get(handshake, headers={'Origin': 'https://app.example'}, timeout=10)
    assert allowed.status_code == 200
    assert allowed.headers['Access-Control-Allow-Origin'] == 'https://app.example'
    refused = requests.get(handshake, headers={'Origin': 'https://evil.example'}, timeout=10)
    assert refused.status_code == 400
    assert 'Access-Control-Allow-Origin' not in refused.headers


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_sigterm_drops_connections_so_that_clients_reconnect(start_server, transport):
    server = start_server()
    connects = queue.Queue()
    client = socketio.Client(reconnection=True, reconnection_delay=0.2,
                             reconnection_delay_max=0.5)
    client.on('connect', lambda: connects.put(client.transport()))
    try:
        client.connect(server.url, transports=[transport], wait_timeout=10)
        assert connects.get(timeout=10) == transport
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=15) == 0
        assert 'Worker graceful timeout' not in server.log()
        # The client was not told to go away: it comes back once a server is there again.
        start_server(port=server.port)
        assert connects.get(timeout=20) == transport
    finally:
        client.disconnect()


def test_sigterm_does_not_wait_for_idle_keep_alive_connections(start_server):
    server = start_server()
    backend = requests.Session()   # a backend's pool: its connection stays open, idle
    assert backend.get(server.url + '/api/status/ping', timeout=10).text == 'pong'
    server.process.send_signal(signal.SIGTERM)
    # gunicorn would otherwise wait for it until graceful_timeout (15 s) and then kill.
    assert server.process.wait(timeout=10) == 0
    assert 'SIGTERM: closing' in server.log()
    backend.close()


def test_sigterm_with_a_redis_that_hangs_ends_within_the_graceful_timeout(
        redis_server, proxies, start_server, listeners):
    # Each socket used to release its registration in a call of its own, one after the
    # other: behind a Redis that no longer answers, 30 sockets took 30 timeouts.
    proxy = proxies(redis_server.port)
    server = start_server(env={'REDIS_URL': f'redis://127.0.0.1:{proxy.port}/0'})
    user = 'user-' + uuid.uuid4().hex[:8]
    for n in range(30):
        assert server.register(user, f'tab-{n}').status_code == 200
        listeners(server.url).follow(user, f'tab-{n}')
    proxy.mute()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    log = server.log()
    # The worker ended by itself; gunicorn would otherwise kill it after graceful_timeout.
    assert 'Worker exiting' in log
    assert 'could not release 30 registrations on shutdown' in log


def test_a_socket_disconnected_for_failed_registers_is_told_why(server, listeners):
    # The last acknowledgement used to be lost: the socket was closed before it went out.
    guesser = listeners(server.url).connect()
    answers = [guesser.register(unique('nobody'), f'guess-{n}') for n in range(5)]
    assert all(answer['ok'] is False for answer in answers)
    assert 'disconnected' in answers[-1]['error']
    wait_for(lambda: not guesser.sio.connected, message='the disconnect')


def test_the_worker_raises_its_open_files_limit_and_says_it():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def as_under_systemd():   # a low soft limit under a higher hard one
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
    server = ServerProcess(preexec_fn=as_under_systemd).start()
    try:
        wait_for(lambda: 'open files: at most' in server.log(), message='the log line')
        assert f'open files: at most {hard:,}' in server.log()
        limits = open(f'/proc/{server.worker_pid()}/limits').read()
        line = next(line for line in limits.splitlines() if line.startswith('Max open files'))
        assert line.split()[3] == str(hard), line
    finally:
        server.stop()


def test_a_small_response_leaves_in_one_send_and_a_large_one_whole():
    # pywsgi sends a response's head and its body in two sends: with TCP_NODELAY (which
    # gunicorn sets), two segments for the client to read, on every poll and every push.
    import gevent
    from gevent import pywsgi, socket as gsocket

    from notification_socketio.worker import ONE_SEND, Handler
    sends = []

    class Counting(Handler):
        def _sendall(self, data):
            sends.append(bytes(data))
            return super()._sendall(data)

    class Log:
        access_log_enabled = False
    bodies = {'/small': b'{"id":"1","online":1}\n', '/large': b'x' * (ONE_SEND + 1)}

    def app(environ, start_response):
        body = bodies[environ['PATH_INFO']]
        start_response('200 OK', [('Content-Type', 'application/json'),
                                  ('Content-Length', str(len(body)))])
        return [body]
    server = pywsgi.WSGIServer(('127.0.0.1', 0), app, handler_class=Counting, log=None)
    server.log = Log()
    server.start()

    def get(path):
        sends.clear()
        with gsocket.create_connection(server.address) as client:
            client.sendall(f'GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n'
                           .encode())
            return b''.join(iter(lambda: client.recv(65536), b''))
    try:
        small = gevent.spawn(get, '/small').get(timeout=10)
        assert small.endswith(b'\r\n\r\n' + bodies['/small'])
        assert len(sends) == 1 and sends[0] == small, sends
        large = gevent.spawn(get, '/large').get(timeout=10)
        assert large.endswith(b'\r\n\r\n' + bodies['/large'])
        assert b''.join(sends) == large
    finally:
        server.stop()
