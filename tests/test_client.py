"""The Python client for backends, and the command-line verbs, against the real server."""
import json
import subprocess
import sys
import threading
import time
import uuid

import pytest
import requests

from conftest import ROOT, TOKEN, wait_for
from notification_socketio.client import (BadRequest, NotificationClient, Unauthorized,
                                          Unavailable)


@pytest.fixture
def client(server):
    with NotificationClient(server.url, TOKEN, timeout=10) as client_:
        yield client_


@pytest.fixture
def user():
    return 'user/' + uuid.uuid4().hex[:8]   # a slash, to check the path encoding


def test_the_whole_api_from_python(server, client, listeners, user):
    connection_id = client.register(user)
    assert len(connection_id) >= 24
    listener = listeners(server.url).follow(user, connection_id)
    assert client.sessions(user) == {'userId': user, 'online': 1, 'registered': 1}
    message_id = client.push(user, {'title': 'hi'})
    ids = client.push_many([user, user + '-other'], 'batch')
    broadcast_id = client.broadcast('everyone')
    assert listener.until_received([message_id, ids[user], broadcast_id]) == [
        message_id, ids[user], broadcast_id]
    client.revoke(user, connection_id)
    wait_for(lambda: not listener.sio.connected, message='the revoked socket to go')
    assert client.sessions(user)['registered'] == 0
    client.register(user, 'again')
    client.revoke(user)
    assert client.sessions(user)['registered'] == 0


def test_errors_are_typed(server, client, user):
    with pytest.raises(Unauthorized) as error:
        NotificationClient(server.url, 'wrong').push(user, 1)
    assert error.value.status == 401
    with pytest.raises(BadRequest):
        client.push(user, None)
    with pytest.raises(BadRequest) as error:
        client.push(user, 'x' * 100_000)
    assert error.value.status == 413
    with pytest.raises(Unavailable):
        NotificationClient('http://127.0.0.1:9', TOKEN, retries=1).push(user, 1)


def test_a_503_is_retried_until_redis_is_back(redis_server, start_server, user):
    server = start_server(env={'REDIS_URL': redis_server.url})
    redis_server.stop(save=True)
    outcome = {}

    def push():
        with NotificationClient(server.url, TOKEN, retries=8) as client_:
            outcome['id'] = client_.push(user, 'eventually')
    pusher = threading.Thread(target=push)
    pusher.start()
    wait_for(lambda: refused_pushes(server) >= 1, message='a push refused with 503')
    redis_server.start()
    pusher.join(timeout=60)
    assert outcome.get('id'), 'the push never succeeded'
    with pytest.raises(Unavailable):
        redis_server.stop()
        NotificationClient(server.url, TOKEN, retries=1).push(user, 'no redis')


def refused_pushes(server):
    return server.metric('nsio_pushes_total', outcome='unavailable', route='push')


def test_a_push_whose_answer_was_lost_is_retried_and_made_once(
        redis_server, proxies, start_server, user):
    # Redis runs the push but its answer is lost (504, outcome unknown): the client tries
    # again with the same Idempotency-Key, and gets the first push's id.
    proxy = proxies(redis_server.port)
    server = start_server(env={'REDIS_URL': f'redis://127.0.0.1:{proxy.port}/0'})
    with NotificationClient(server.url, TOKEN) as client_:
        client_.register(user, 'tab')
        client_.push(user, 'before')
    outcome = {}

    def push():
        with NotificationClient(server.url, TOKEN, retries=8) as client_:
            outcome['id'] = client_.push(user, 'exactly once')
    proxy.mute()
    pusher = threading.Thread(target=push)
    pusher.start()
    wait_for(lambda: server.metric('nsio_pushes_total', outcome='unknown', route='push') >= 1,
             timeout=30, message='a push answered 504')
    proxy.restore()
    pusher.join(timeout=60)
    assert outcome.get('id'), 'the push never succeeded'
    with redis_server.client() as admin:
        kept = admin.xrange(f'nsio:history:{user}')
    assert [json.loads(fields['m']) for _, fields in kept] == ['before', 'exactly once']
    assert kept[-1][0] == outcome['id']


def test_the_command_line_listens_and_pushes(server, user):
    env = {'PATH': '/usr/bin:/bin', 'NOTIFICATION_URL': server.url, 'AUTH_TOKEN': TOKEN}
    command = [sys.executable, '-m', 'notification_socketio.cli']
    listen = subprocess.Popen([*command, 'listen', user, '--count', '2', '--polling'],
                              env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        with NotificationClient(server.url, TOKEN) as client_:
            wait_for(lambda: client_.sessions(user)['online'] == 1,
                     message='the listener to register')
        pushed = subprocess.run([*command, 'push', user, '{"n": 1}'], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert pushed.returncode == 0, pushed.stderr
        message_id = json.loads(pushed.stdout)['id']
        assert subprocess.run([*command, 'push', user, 'plain text'], env=env, cwd=ROOT,
                              capture_output=True, timeout=60).returncode == 0
        output, _ = listen.communicate(timeout=60)
    finally:
        listen.kill()
    first, second = [json.loads(line) for line in output.splitlines()]
    assert first['message'] == {'n': 1} and first['id'] == message_id
    assert second['message'] == 'plain text'
    refused = subprocess.run([*command, 'push', user, 'x', '--token', 'wrong'], env=env,
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and '401' in refused.stderr


def test_the_client_asks_for_a_fallback_and_reads_a_message_s_status(server):
    from notification_socketio.client import NotificationError
    with NotificationClient(server.url, token=TOKEN) as client:
        user = f'client-{time.time_ns()}'
        message_id = client.push(user, {'title': 'hi'}, fallback_after=60)
        assert client.message(user, message_id) == {
            'id': message_id, 'userId': user, 'acknowledged': False, 'inHistory': False}
        with pytest.raises(NotificationError) as raised:
            client.message(user, '1-0')
        assert raised.value.status == 404
