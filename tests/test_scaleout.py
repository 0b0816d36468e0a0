"""Several gunicorn processes sharing one real redis-server act as one server."""
import os
import shutil
import subprocess
import uuid

import pytest
import requests

from conftest import FAST_HEARTBEAT, ROOT, TOKEN, free_port, wait_for


@pytest.fixture
def cluster(redis_server, start_server):
    """Three server processes on one Redis."""
    env = {'REDIS_URL': redis_server.url, **FAST_HEARTBEAT}
    return [start_server(env=env) for _ in range(3)]


@pytest.fixture
def user():
    return 'user-' + uuid.uuid4().hex[:8]


def test_register_on_one_claim_on_another_push_on_a_third(cluster, listeners, user):
    a, b, c = cluster
    assert a.register(user, 'tab-on-b').status_code == 200
    assert c.register(user, 'tab-on-a').status_code == 200
    on_b = listeners(b.url, 'websocket').follow(user, 'tab-on-b')
    on_a = listeners(a.url, 'polling').follow(user, 'tab-on-a')
    pushed = [server.pushed(user, f'via {n}: é世🚀') for n, server in enumerate((c, a, b, c))]
    for tab in (on_a, on_b):
        assert tab.until_received(pushed) == pushed
        assert tab.received_nothing(), 'a message arrived twice'


def test_users_stay_apart_across_processes(cluster, listeners, user):
    a, b, _ = cluster
    other = user + '-other'
    assert a.register(user, 'tab').status_code == 200
    assert a.register(other, 'tab').status_code == 200
    mine = listeners(b.url).follow(user, 'tab')
    theirs = listeners(a.url).follow(other, 'tab')
    for_them = b.pushed(other, 'for the other user')
    for_me = a.pushed(user, 'for me')
    assert theirs.until_received([for_them]) == [for_them]
    assert mine.until_received([for_me]) == [for_me]
    assert mine.received_nothing()


def test_a_newer_claim_on_another_process_disconnects_the_older_socket(
        cluster, listeners, user):
    a, b, c = cluster
    assert c.register(user, 'tab').status_code == 200
    older = listeners(a.url).follow(user, 'tab')
    newer = listeners(b.url).follow(user, 'tab')
    wait_for(lambda: not older.sio.connected, message='the older socket to be disconnected')
    message_id = c.pushed(user, 'only for the newer socket')
    assert newer.until_received([message_id]) == [message_id]


def test_presence_and_revocation_work_across_processes(cluster, listeners, user):
    a, b, c = cluster
    for connection_id in ('tab-a', 'tab-b'):
        assert a.register(user, connection_id).status_code == 200
    on_a = listeners(a.url, 'polling').follow(user, 'tab-a')
    on_b = listeners(b.url, 'websocket').follow(user, 'tab-b')
    assert c.sessions(user) == {'userId': user, 'online': 2, 'registered': 2}

    assert revoke(a, user, 'tab-b').status_code == 200
    wait_for(lambda: not on_b.sio.connected, message='the revoked socket on b to go')
    assert on_a.sio.connected
    assert c.sessions(user) == {'userId': user, 'online': 1, 'registered': 1}
    intruder = listeners(c.url).connect()
    assert intruder.register(user, 'tab-b')['ok'] is False

    assert revoke(b, user).status_code == 200
    wait_for(lambda: not on_a.sio.connected, message='every socket of the user to go')
    assert a.sessions(user) == {'userId': user, 'online': 0, 'registered': 0}


def test_a_broadcast_reaches_every_process_and_is_recovered(
        cluster, proxies, listeners, user):
    a, b, c = cluster
    other = user + '-other'
    assert a.register(user, 'tab').status_code == 200
    assert a.register(other, 'tab').status_code == 200
    proxy = proxies(b.port)
    mine = listeners(proxy.url, 'websocket', reconnection=True).follow(user, 'tab')
    theirs = listeners(a.url, 'polling').follow(other, 'tab')
    first = c.pushed_broadcast({'notice': 'maintenance at noon'})
    for client in (mine, theirs):
        assert client.until_received([first]) == [first]
    proxy.blackhole()
    proxy.cut()
    missed = [c.pushed_broadcast('while away'), a.pushed(user, 'also while away')]
    proxy.restore()
    assert mine.next_ack() == {'ok': True}
    assert [i for i in mine.until_received(missed) if i != first] == missed


def revoke(server, user_id, connection_id=None):
    if connection_id is None:
        return requests.delete(f'{server.url}/api/{user_id}/sessions',
                               headers={'X-AUTH-TOKEN': TOKEN}, timeout=10)
    return requests.delete(f'{server.url}/api/{user_id}/register',
                           params={'connectionId': connection_id},
                           headers={'X-AUTH-TOKEN': TOKEN}, timeout=10)


def test_clients_of_a_killed_process_reconnect_elsewhere_and_catch_up(
        cluster, proxies, listeners, user):
    a, b, c = cluster
    balancer = proxies(a.port)   # a sticky load balancer, sending this client to a
    pushed = []
    clients = []
    for transport in ('websocket', 'polling'):
        connection_id = 'tab-' + transport
        assert c.register(user, connection_id).status_code == 200
        clients.append(listeners(balancer.url, transport, reconnection=True)
                       .follow(user, connection_id))
    pushed.append(c.pushed(user, 'before the crash'))
    a.kill()
    pushed += [c.pushed(user, f'while a is dead {n}') for n in range(5)]
    balancer.retarget(b.port)
    balancer.cut()
    for client in clients:
        assert client.next_ack() == {'ok': True}
    pushed.append(b.pushed(user, 'after the move'))
    for client in clients:
        assert client.until_received(pushed) == pushed


def test_pushes_fail_cleanly_while_redis_is_down_and_work_again_after(
        redis_server, cluster, listeners, user):
    a, b, _ = cluster
    assert a.register(user, 'tab').status_code == 200
    client = listeners(b.url, 'websocket').follow(user, 'tab')
    before = a.pushed(user, 'before')
    client.until_received([before])

    redis_server.stop(save=True)
    refused = a.push(user, 'while redis is down')
    assert refused.status_code == 503
    assert 'retry' in refused.json()['error']
    register = requests.put(f'{a.url}/api/{user}/register', params={'connectionId': 'x'},
                            headers={'X-AUTH-TOKEN': TOKEN}, timeout=30)
    assert register.status_code == 503
    assert a.answers() and b.answers()

    redis_server.start()
    after = wait_for(lambda: accepted(a.push(user, 'after')), timeout=30,
                     message='pushes to be accepted again')
    seen = client.until_received([after])
    assert seen == [after], 'the refused push must never arrive'
    assert client.sio.connected


def test_a_push_to_a_redis_that_stops_answering_is_made_once_and_says_so(
        redis_server, proxies, start_server, user):
    # Redis reads the push and runs it, but its answer never comes back: the server must
    # not run it again (a second message with a new id), and must say the outcome is
    # unknown, soon, rather than 503 "nothing was done" after tens of seconds.
    proxy = proxies(redis_server.port)
    server = start_server(env={'REDIS_URL': f'redis://127.0.0.1:{proxy.port}/0'})
    assert server.register(user, 'tab').status_code == 200
    made = [server.pushed(user, 'before')]
    for content_type in ('text/plain', 'application/json'):   # Flask route, fast path
        proxy.mute()
        response = requests.post(f'{server.url}/api/{user}/push', data='{"message": 1}',
                                 headers={'X-AUTH-TOKEN': TOKEN,
                                          'Content-Type': content_type}, timeout=20)
        assert response.status_code == 504, response.text
        assert 'unknown' in response.json()['error']
        proxy.restore()
        made.append(wait_for(lambda: accepted(server.push(user, 'after')), timeout=30,
                             message='pushes to be accepted again'))
    with redis_server.client() as admin:
        # Each push made once: the two unknown ones did happen, and nothing more.
        assert admin.xlen(f'nsio:history:{user}') == len(made) + 2


def accepted(response):
    """The message id of a push that succeeded, else None."""
    return response.json()['id'] if response.status_code == 200 else None



NGINX_MAIN = """
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/site.conf;
}}
"""


@pytest.fixture
def nginx(tmp_path, cluster):
    """nginx with deploy/nginx.conf, as README gives it, in front of two processes."""
    binary = shutil.which('nginx') or '/usr/sbin/nginx'
    if not os.path.exists(binary):
        message = 'nginx is not installed (apt-get install nginx)'
        if os.environ.get('CI'):
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    site = (ROOT / 'deploy' / 'nginx.conf').read_text()
    site = (site.replace('127.0.0.1:3001', f'127.0.0.1:{cluster[0].port}')
                .replace('127.0.0.1:3002', f'127.0.0.1:{cluster[1].port}')
                .replace('listen 8080;', f'listen 127.0.0.1:{port};'))
    (tmp_path / 'site.conf').write_text(site)
    (tmp_path / 'nginx.conf').write_text(NGINX_MAIN.format(prefix=tmp_path))
    process = subprocess.Popen([binary, '-p', str(tmp_path), '-c', str(tmp_path / 'nginx.conf'),
                                '-g', 'daemon off;'])
    url = f'http://127.0.0.1:{port}'
    wait_for(lambda: ping(url), timeout=15, message='nginx')
    yield url
    process.terminate()
    process.wait(timeout=10)


def ping(url):
    try:
        return requests.get(url + '/api/status/ping', timeout=1).text == 'pong'
    except requests.RequestException:
        return False


@pytest.mark.parametrize('transport', ['websocket', 'polling'])
def test_the_nginx_example_balances_processes(nginx, cluster, listeners, user, transport):
    a, b, _ = cluster
    assert a.register(user, 'tab').status_code == 200
    client = listeners(nginx, transport).follow(user, 'tab')
    assert client.sio.transport() == transport
    pushed = [a.pushed(user, 'via a'), b.pushed(user, 'via b')]
    assert client.until_received(pushed) == pushed


def test_readme_shows_the_nginx_example_as_shipped():
    readme = (ROOT / 'README.md').read_text()
    assert (ROOT / 'deploy' / 'nginx.conf').read_text().strip() in readme


def test_a_subscription_that_goes_silent_is_noticed_and_the_socket_catches_up(
        redis_server, proxies, start_server, listeners, user):
    # The subscriber's connection stays open but Redis's side of it is dropped (a
    # middlebox losing one direction): no error, no data. The process must notice
    # within seconds, subscribe again and replay what the socket missed.
    proxy = proxies(redis_server.port)
    server = start_server(env={'REDIS_URL': f'redis://127.0.0.1:{proxy.port}/0'})
    assert server.register(user, 'tab').status_code == 200
    tab = listeners(server.url, 'websocket').follow(user, 'tab')
    first = server.pushed(user, 'before')
    assert tab.until_received([first]) == [first]
    proxy.mute_subscribers()
    missed = server.pushed(user, 'while the subscription is silent')
    assert tab.until_received([missed], timeout=30) == [missed]
    wait_for(lambda: 'message queue lost' in server.log(), message='the loss to be logged')
