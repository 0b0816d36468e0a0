"""Telling the backend, end to end: real gunicorn servers, redis-server, a real HTTP
receiver of webhooks, python-socketio clients; signed connection tokens.
"""
import hashlib
import hmac
import http.server
import json
import threading
import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from notification_socketio.client import connection_token
from notification_socketio.webhooks import LEASE

from conftest import TOKEN, auth, free_port, wait_for

SECRET = 'webhook-secret-of-the-tests-0123456789'
_counter = iter(range(10**9))


def unique(prefix):
    return f'{prefix}-{time.time_ns()}-{next(_counter)}'
CONNECTION_SECRET = 'connection-secret-of-the-tests-0123456789abcdef'


class Receiver:
    """A backend's webhook endpoint: records every call; answers 500 while `failing`."""

    def __init__(self):
        self.calls = []          # (headers, raw body, status answered), in arrival order
        self.failing = False
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers['Content-Length']))
                status = 500 if receiver.failing else 204
                with receiver.lock:
                    receiver.calls.append((dict(self.headers), body, status))
                self.send_response(status)
                self.send_header('Content-Length', '0')
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', free_port()), Handler)
        self.url = f'http://127.0.0.1:{self.server.server_port}/hooks'
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def accepted(self, event_type=None, user_id=None):
        """The events answered with 204, decoded, in arrival order."""
        with self.lock:
            calls = list(self.calls)
        found = [json.loads(body) for _, body, status in calls if status == 204]
        return [event for event in found
                if (event_type is None or event['type'] == event_type)
                and (user_id is None or event['data'].get('userId') == user_id)]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = Receiver()
    yield made
    made.close()


def telling_env(receiver, **extra):
    return {'WEBHOOK_URL': receiver.url, 'WEBHOOK_SECRET': SECRET, 'OFFLINE_GRACE': '1',
            **extra}


def signature_is_valid(headers, body):
    """Checked as a receiver would, without the server's own code."""
    fields = dict(part.split('=', 1) for part in headers['X-Notification-Signature'].split(','))
    expected = hmac.new(SECRET.encode(), fields['t'].encode() + b'.' + body,
                        hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields['v1']) and \
        abs(time.time() - int(fields['t'])) < 60


def test_every_call_is_signed_and_shaped_as_documented(start_server, receiver, listeners):
    server = start_server(telling_env(receiver))
    user = unique('signed')
    assert server.register(user, 'c1').status_code == 200
    listeners(server.url).follow(user, 'c1')
    event, = wait_for(lambda: receiver.accepted('user.online', user), message='user.online')
    headers, body, _ = receiver.calls[0]
    assert headers['Content-Type'] == 'application/json'
    assert signature_is_valid(headers, body)
    assert set(event) == {'id', 'type', 'ts', 'data'}
    assert event['data'] == {'userId': user}
    assert abs(event['ts'] / 1000 - time.time()) < 60
    # A changed body no longer matches its signature.
    assert not signature_is_valid(headers, body.replace(user.encode(), b'someone-else'))


def test_a_reload_within_the_grace_sends_nothing_and_leaving_sends_one_offline(
        start_server, receiver, listeners):
    server = start_server(telling_env(receiver))
    user = unique('reload')
    server.register(user, 'c1')
    first = listeners(server.url).follow(user, 'c1')
    wait_for(lambda: receiver.accepted('user.online', user), message='user.online')
    first.close()
    listeners(server.url).follow(user, 'c1').close()   # the page reloaded at once
    # Then the user leaves: one offline, OFFLINE_GRACE after the last socket went.
    wait_for(lambda: receiver.accepted('user.offline', user), timeout=15,
             message='user.offline')
    assert [event['type'] for event in receiver.accepted(user_id=user)] == [
        'user.online', 'user.offline']


def test_one_online_and_one_offline_per_user_across_two_processes(
        start_server, receiver, listeners, redis_server):
    env = telling_env(receiver, REDIS_URL=redis_server.url)
    first, second = start_server(env), start_server(env)
    users = [unique('both'), unique('both')]
    sockets = []
    for user in users:
        first.register(user, 'a')
        second.register(user, 'b')
        sockets.append((listeners(first.url).follow(user, 'a'),
                        listeners(second.url).follow(user, 'b')))
    for user in users:
        wait_for(lambda: receiver.accepted('user.online', user), message='user.online')
    # One user's socket on the first process reconnects to the second within the grace.
    sockets[0][0].close()
    listeners(second.url).follow(users[0], 'a')
    sockets[1][0].close()
    # The second user leaves the second process too; the first stays online.
    sockets[1][1].close()
    wait_for(lambda: receiver.accepted('user.offline', users[1]), timeout=15,
             message='user.offline')
    first.push(users[0], 'proof that the first user is still served')
    time.sleep(2)   # a wrong offline of the first user would be due by now (grace 1 s)
    assert [event['type'] for event in receiver.accepted(user_id=users[0])] == [
        'user.online']
    assert [event['type'] for event in receiver.accepted(user_id=users[1])] == [
        'user.online', 'user.offline']
    # Every event reached the receiver once: no process sent another's event again.
    ids = [event['id'] for event in receiver.accepted()]
    assert len(ids) == len(set(ids)) == 3


def test_a_failing_receiver_gets_the_same_event_until_it_accepts_it(
        start_server, receiver, listeners):
    receiver.failing = True
    server = start_server(telling_env(receiver))
    user = unique('retried')
    server.register(user, 'c1')
    listeners(server.url).follow(user, 'c1')
    wait_for(lambda: len(receiver.calls) >= 3, timeout=20, message='three failed calls')
    receiver.failing = False
    event, = wait_for(lambda: receiver.accepted('user.online', user), timeout=20,
                      message='the retried event')
    bodies = {body for _, body, _ in receiver.calls}
    assert len(bodies) == 1   # the same event, the same id, every time
    assert all(signature_is_valid(headers, body) for headers, body, _ in receiver.calls)
    assert server.metric('nsio_webhooks_total', event='user.online', outcome='failed') >= 3
    assert server.metric('nsio_webhooks_total', event='user.online', outcome='sent') == 1
    calls = requests.get(server.url + '/api/webhooks', headers=auth(), timeout=10).json()
    assert calls['urls'] == [receiver.url]
    assert [call['outcome'] for call in calls['recent']][:2] == ['sent', 'failed']


def test_an_event_outlives_the_process_that_was_sending_it(
        start_server, receiver, listeners, redis_server):
    receiver.failing = True
    env = telling_env(receiver, REDIS_URL=redis_server.url)
    first, second = start_server(env), start_server(env)
    user = unique('outlived')
    first.register(user, 'c1')
    listeners(first.url).follow(user, 'c1')
    wait_for(lambda: len(receiver.calls) >= 2, timeout=20, message='two failed calls')
    first.kill()
    receiver.failing = False
    # Killed between a failed call and the retry it schedules, the first process leaves
    # its job leased: the second takes it once the lease ends.
    event, = wait_for(lambda: receiver.accepted('user.online', user), timeout=LEASE + 30,
                      message='the event, from the process left')
    assert event['id'] == json.loads(receiver.calls[0][1])['id']
    assert second.metric('nsio_webhooks_total', event='user.online', outcome='sent') == 1


@pytest.mark.parametrize('backend, transport', [
    ('memory', 'websocket'), ('memory', 'polling'), ('redis', 'websocket')])
def test_a_fallback_fires_for_a_user_who_never_connects_and_not_for_one_who_reads(
        start_server, receiver, listeners, request, backend, transport):
    env = telling_env(receiver)
    if backend == 'redis':
        env['REDIS_URL'] = request.getfixturevalue('redis_server').url
    server = start_server(env)   # the default heartbeat: 25 s between PINGs
    reader, away = unique('reader'), unique('away')
    server.register(reader, 'c1')
    listener = listeners(server.url, transport).follow(reader, 'c1')
    message = {'title': 'Invoice', 'amount': 12.5, 'tags': ['é', '"', '</script>']}
    pushed = []
    for user, fallback_after in ((reader, 1), (away, 2)):
        response = requests.post(f'{server.url}/api/{user}/push', headers=auth(),
                                 json={'message': message, 'fallback_after': fallback_after},
                                 timeout=10)
        assert response.status_code == 200, response.text
        pushed.append(response.json())
    assert [answer['online'] for answer in pushed] == [1, 0]
    assert listener.get()[1]['id'] == pushed[0]['id']
    # The reader's socket acknowledges at once (a PING right behind the message), not
    # at the next heartbeat, 25 s away.
    wait_for(lambda: requests.get(f'{server.url}/api/{reader}/messages/{pushed[0]["id"]}',
                                  headers=auth(), timeout=10).json()['acknowledged'],
             timeout=5, message='the reader\'s acknowledgement')
    event, = wait_for(lambda: receiver.accepted('message.unacknowledged'), timeout=15,
                      message='the fallback of the user who never connected')
    assert event['data'] == {'userId': away, 'id': pushed[1]['id'], 'message': message}
    # Due a second before the other one: had it fired, it would be here.
    assert receiver.accepted('message.unacknowledged', reader) == []
    status = requests.get(f'{server.url}/api/{away}/messages/{pushed[1]["id"]}',
                          headers=auth(), timeout=10)
    assert status.json() == {'id': pushed[1]['id'], 'userId': away, 'acknowledged': False,
                             'inHistory': False}


def test_message_status_answers_404_and_400(server):
    user = unique('status')
    pushed = server.pushed(user, 'hello')
    response = requests.get(f'{server.url}/api/{user}/messages/1-0', headers=auth(),
                            timeout=10)
    assert response.status_code == 404 and 'error' in response.json()
    response = requests.get(f'{server.url}/api/other/messages/{pushed}', headers=auth(),
                            timeout=10)
    assert response.status_code == 404
    response = requests.get(f'{server.url}/api/{user}/messages/nonsense', headers=auth(),
                            timeout=10)
    assert response.status_code == 400 and 'error' in response.json()
    response = requests.get(f'{server.url}/api/{user}/messages/{pushed}', timeout=10)
    assert response.status_code == 401


@pytest.mark.parametrize('fallback_after', [0, -1, 86401, 'soon', True, [1]])
def test_a_wrong_fallback_after_is_refused(server, fallback_after):
    response = requests.post(f'{server.url}/api/u1/push', headers=auth(), timeout=10,
                             json={'message': 'm', 'fallback_after': fallback_after})
    assert response.status_code == 400
    assert 'fallback_after' in response.json()['error']


def test_the_server_refuses_webhooks_without_a_secret(start_server):
    server = start_server({'WEBHOOK_URL': 'http://127.0.0.1:9/hooks'}, wait=False)
    assert server.process.wait(timeout=30) != 0
    assert 'WEBHOOK_SECRET' in server.log()


# Connection tokens -------------------------------------------------------------------

def rsa_keys():
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return private, private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def token_listener(listeners, server, token, *options):
    listener = listeners(server.url).connect()
    return listener, listener.sio.call('register', (token, *options), timeout=10)


def test_a_signed_token_registers_a_connection_like_the_backend_would(
        start_server, listeners):
    server = start_server({'CONNECTION_SECRET': CONNECTION_SECRET})
    user = unique('token')
    token = connection_token(CONNECTION_SECRET, user, 'c1', ttl=60)
    listener, ack = token_listener(listeners, server, token)
    assert ack == {'ok': True}
    assert server.sessions(user) == {'userId': user, 'online': 1, 'registered': 1}
    first = server.pushed(user, 'first')
    assert listener.get()[1]['id'] == first
    # The connection id is the token's jti: a reconnect with the same token recovers.
    listener.close()
    missed = server.pushed(user, 'missed')
    again, ack = token_listener(listeners, server, token)
    assert ack == {'ok': True}
    # At least once: "first" may come again (no heartbeat acknowledged it yet).
    assert again.until_received([missed])[-1] == missed


def bad_tokens(user):
    now = int(time.time())
    claims = {'sub': user, 'jti': 'c1', 'iat': now, 'exp': now + 60}
    private, public_pem = rsa_keys()
    return {
        'expired': jwt.encode({**claims, 'iat': now - 120, 'exp': now - 60},
                              CONNECTION_SECRET, algorithm='HS256'),
        'forged': jwt.encode(claims, 'another-secret-of-at-least-32-bytes!!',
                             algorithm='HS256'),
        'alg none': jwt.encode(claims, None, algorithm='none'),
        'not signed by us (RS256)': jwt.encode(claims, private, algorithm='RS256'),
        'no exp': jwt.encode({'sub': user, 'jti': 'c1'}, CONNECTION_SECRET,
                             algorithm='HS256'),
        'too long-lived': jwt.encode({**claims, 'exp': now + 10 * 86400},
                                     CONNECTION_SECRET, algorithm='HS256'),
        'not a JWT': 'hello',
        'sub not a string': jwt.encode({**claims, 'sub': 42}, CONNECTION_SECRET,
                                       algorithm='HS256'),
        'public key as HMAC secret': _hs256_with(public_pem, claims),
    }


def _hs256_with(key_text, claims):
    """An HS256 token whose HMAC key is a PEM text: PyJWT refuses to make one."""
    import base64

    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b'=')
    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b'.' + b64(
        json.dumps(claims).encode())
    signature = hmac.new(key_text.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b'.' + b64(signature)).decode()


def test_bad_tokens_are_refused_and_counted_as_failed_registers(start_server, listeners):
    server = start_server({'CONNECTION_SECRET': CONNECTION_SECRET,
                           'MAX_REGISTER_FAILURES': '20'})
    user = unique('refused')
    listener = listeners(server.url).connect()
    for name, token in bad_tokens(user).items():
        ack = listener.sio.call('register', (token,), timeout=10)
        assert ack['ok'] is False, name
        assert 'error' in ack, name
    assert server.sessions(user) == {'userId': user, 'online': 0, 'registered': 0}
    # Past MAX_REGISTER_FAILURES, the socket is dropped, tokens or not.
    limited = start_server({'CONNECTION_SECRET': CONNECTION_SECRET})
    guesser = listeners(limited.url).connect()
    for _ in range(4):
        assert guesser.sio.call('register', ('forged.token.here',), timeout=10)['ok'] is False
    last = guesser.sio.call('register', ('forged.token.here',), timeout=10)
    assert 'disconnected' in last['error']
    wait_for(lambda: not guesser.sio.connected, message='the disconnect')


def test_a_public_key_verifies_rs256_and_es256_and_refuses_the_key_as_a_secret(
        start_server, listeners):
    for algorithm, private in (
            ('RS256', rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            ('ES256', ec.generate_private_key(ec.SECP256R1()))):
        public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        server = start_server({'CONNECTION_PUBLIC_KEY': public_pem})
        user = unique(algorithm)
        _, ack = token_listener(listeners, server, connection_token(
            private, user, 'c1', algorithm=algorithm))
        assert ack == {'ok': True}, algorithm
        now = int(time.time())
        claims = {'sub': user, 'jti': 'c2', 'iat': now, 'exp': now + 60}
        _, ack = token_listener(listeners, server, _hs256_with(public_pem, claims))
        assert ack['ok'] is False and 'HS256' in ack['error'], algorithm


def test_a_revoked_connection_s_token_no_longer_registers(start_server, listeners):
    server = start_server({'CONNECTION_SECRET': CONNECTION_SECRET})
    user = unique('revoked')
    token = connection_token(CONNECTION_SECRET, user, 'c1', ttl=60)
    listener, ack = token_listener(listeners, server, token)
    assert ack == {'ok': True}
    response = requests.delete(f'{server.url}/api/{user}/register', headers=auth(),
                               params={'connectionId': 'c1'}, timeout=10)
    assert response.status_code == 200
    wait_for(lambda: not listener.sio.connected, message='the revoked socket to go')
    _, ack = token_listener(listeners, server, token)
    assert ack['ok'] is False and 'revoked' in ack['error']
    # Revoking all of a user's connections refuses tokens issued before it, not after.
    other = connection_token(CONNECTION_SECRET, user, 'c2', ttl=60)
    requests.delete(f'{server.url}/api/{user}/sessions', headers=auth(), timeout=10)
    time.sleep(1.1)   # a token's iat is in whole seconds: the next one is issued after
    _, ack = token_listener(listeners, server, other)
    assert ack['ok'] is False
    _, ack = token_listener(listeners, server,
                            connection_token(CONNECTION_SECRET, user, 'c3', ttl=60))
    assert ack == {'ok': True}


def test_without_a_key_tokens_are_refused_and_the_original_flow_works(server, listeners):
    user = unique('plain')
    token = connection_token(CONNECTION_SECRET, user, 'c1')
    _, ack = token_listener(listeners, server, token)
    assert ack['ok'] is False and 'not accepted' in ack['error']
    server.register(user, 'c1')
    assert listeners(server.url).connect().register(user, 'c1') == {'ok': True}
    assert TOKEN   # the REST registration needs the API token, as before


def test_the_example_receiver_accepts_signed_calls_once_and_refuses_the_rest(monkeypatch):
    import importlib.util

    from conftest import ROOT
    from notification_socketio.webhooks import event_body, sign
    monkeypatch.setenv('WEBHOOK_SECRET', SECRET)
    spec = importlib.util.spec_from_file_location(
        'webhook_receiver', ROOT / 'examples' / 'webhook_receiver.py')
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    client = example.app.test_client()
    body = event_body('message.unacknowledged', {'userId': 'u1', 'id': '1-0', 'message': 'm'})

    def post(data, signature):
        return client.post('/notification-webhooks', data=data,
                           headers={'X-Notification-Signature': signature,
                                    'Content-Type': 'application/json'}).status_code

    now = int(time.time())
    assert post(body, sign(SECRET, body, now)) == 204
    assert post(body, sign(SECRET, body, now)) == 204   # a repeat, handled once
    assert len(example.handled) == 1
    assert post(body + b' ', sign(SECRET, body, now)) == 400       # changed on the way
    assert post(body, sign('another secret!!', body, now)) == 400  # not ours
    assert post(body, sign(SECRET, body, now - 600)) == 400        # replayed later
    assert post(body, 'garbage') == 400
