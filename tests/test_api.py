"""The REST API through Flask's test client."""
import json

import pytest
from flask import request

from conftest import TOKEN, auth
from notification_socketio.validation import MAX_ID_LENGTH


def test_ping_and_info_need_no_token(rest):
    response = rest.get('/api/status/ping')
    assert response.status_code == 200
    assert response.get_data(as_text=True) == 'pong'
    info = rest.get('/api/status/info')
    assert info.status_code == 200
    assert info.json['name'] == 'notification-socketio'
    assert info.json['version']


@pytest.mark.parametrize('method, path', [
    ('put', '/api/u1/register?connectionId=c1'),
    ('post', '/api/u1/push'),
])
@pytest.mark.parametrize('headers', [{}, {'X-AUTH-TOKEN': 'wrong'},
                                     {'X-AUTH-TOKEN': TOKEN + 'x'},
                                     {'X-AUTH-TOKEN': ''}])
def test_token_is_required(rest, method, path, headers):
    response = getattr(rest, method)(path, headers=headers, json={'message': 'hi'})
    assert response.status_code == 401
    assert response.json == {'error': 'missing or wrong X-AUTH-TOKEN header'}


def test_every_configured_token_is_accepted(rest):
    for token in (TOKEN, 'second-token'):
        response = rest.put('/api/u1/register?connectionId=c1', headers=auth(token))
        assert response.status_code == 200, token


def test_register(rest):
    response = rest.put('/api/u1/register?connectionId=c1', headers=auth())
    assert response.status_code == 200
    assert response.json == {'ok': True, 'ttl': 86400}


@pytest.mark.parametrize('query', ['', '?connectionId=', '?other=1',
                                   '?connectionId=' + 'c' * (MAX_ID_LENGTH + 1)])
def test_register_needs_a_connection_id(rest, query):
    response = rest.put('/api/u1/register' + query, headers=auth())
    assert response.status_code == 400
    assert 'connectionId' in response.json['error']


def test_push_answers_with_increasing_message_ids(rest):
    ids = [rest.post('/api/u1/push', json={'message': n}, headers=auth()).json['id']
           for n in range(5)]
    keys = [tuple(int(part) for part in message_id.split('-')) for message_id in ids]
    assert keys == sorted(keys)
    assert len(set(ids)) == 5


@pytest.mark.parametrize('message', [
    'text', 0, False, '', [1, 2], {'nested': {'deep': [None, 1.5]}}, 'Grüße, 世界 🚀'])
def test_push_accepts_any_json_message(rest, message):
    response = rest.post('/api/u1/push', json={'message': message}, headers=auth())
    assert response.status_code == 200
    assert response.json['id']


def test_push_accepts_a_form_encoded_message(rest):
    response = rest.post('/api/u1/push', data={'message': 'hello'}, headers=auth())
    assert response.status_code == 200


def test_push_reads_json_sent_without_a_content_type(rest):
    response = rest.post('/api/u1/push', data=json.dumps({'message': 'x'}),
                         headers={**auth(), 'Content-Type': 'application/x-www-form-urlencoded'})
    assert response.status_code == 200


@pytest.mark.parametrize('body, content_type, error', [
    ('', 'application/json', '"message" field'),
    ('{"message": ', 'application/json', 'not valid JSON'),
    ('{"message": NaN}', 'application/json', 'not valid JSON'),
    ('[' * 100_00 + ']' * 100_00, 'application/json', None),
    ('{"other": 1}', 'application/json', '"message" field'),
    ('{"message": null}', 'application/json', '"message" field'),
    ('"message"', 'application/json', '"message" field'),
    ('\xff\xfe', 'application/json', 'not valid JSON'),
    ('other=1', 'application/x-www-form-urlencoded', '"message" field'),
    ('message', 'text/plain', 'not valid JSON'),
])
def test_push_rejects_bad_bodies(rest, body, content_type, error):
    response = rest.post('/api/u1/push', data=body.encode('latin-1'),
                         headers={**auth(), 'Content-Type': content_type})
    assert response.status_code == 400
    if error:
        assert error in response.json['error']


@pytest.mark.parametrize('number', [
    b'1e400', b'-1e400', b'1e-400', b'1.00000000000000000001', b'9007199254740993.0',
    b'123456789012345678901234567890.5',
])
@pytest.mark.parametrize('route', ['/api/u1/push', '/api/broadcast'])
def test_push_refuses_numbers_that_would_not_arrive_as_sent(rest, route, number):
    # 1e400 would reach the browser as null, 1e-400 as 0: a 400, never another value.
    for content_type in ('application/json', 'text/plain'):   # fast path and Flask route
        response = rest.post(route, data=b'{"message": {"n": [%s]}}' % number,
                             headers={**auth(), 'Content-Type': content_type})
        assert response.status_code == 400, (content_type, response.get_data())
        assert 'number' in response.json['error']


@pytest.mark.parametrize('number, value', [
    (b'0.1', 0.1), (b'1e300', 1e300), (b'-2.5E-3', -0.0025), (b'5e-324', 5e-324),
    (b'9007199254740993', 9007199254740993), (b'1.7976931348623157e308', 1.7976931348623157e308),
])
def test_push_keeps_numbers_that_arrive_as_sent(rest, socket_client, number, value):
    rest.put('/api/u1/register?connectionId=c1', headers=auth())
    client = socket_client()
    client.emit('register', 'u1', 'c1', callback=True)
    response = rest.post('/api/u1/push', data=b'{"message": %s}' % number,
                         headers={**auth(), 'Content-Type': 'application/json'})
    assert response.status_code == 200
    [event] = client.get_received()
    assert event['args'] == value and type(event['args']) is type(value)


def test_push_rejects_a_body_over_the_limit(rest, app):
    limit = app.extensions['notification_socketio'].config.max_message_bytes
    response = rest.post('/api/u1/push', json={'message': 'x' * limit}, headers=auth())
    assert response.status_code == 413
    assert 'MAX_MESSAGE_BYTES' in response.json['error']


def test_user_id_too_long_is_rejected(rest):
    response = rest.post('/api/' + 'u' * (MAX_ID_LENGTH + 1) + '/push',
                         json={'message': 1}, headers=auth())
    assert response.status_code == 400
    assert 'userId' in response.json['error']


@pytest.mark.parametrize('method, path, status', [
    ('get', '/nowhere', 404),
    ('get', '/api/u1/push', 405),
    ('delete', '/api/status/ping', 405),
    ('get', '/api/u1/register', 405),
])
def test_routing_errors_are_json(rest, method, path, status):
    response = getattr(rest, method)(path, headers=auth())
    assert response.status_code == status
    assert response.is_json
    assert response.json['error']


def test_unexpected_errors_are_json_without_a_traceback(rest, app, monkeypatch):
    delivery = app.extensions['notification_socketio'].delivery

    def broken(*_):
        raise RuntimeError('secret detail')
    monkeypatch.setattr(delivery, 'push', broken)
    response = rest.post('/api/u1/push', json={'message': 1}, headers=auth())
    assert response.status_code == 500
    assert response.json == {'error': 'internal error'}


def test_batch_push_answers_one_id_per_user(rest):
    response = rest.post('/api/push', json={'users': ['a', 'b', 'a', 'ü'], 'message': 'hi'},
                         headers=auth())
    assert response.status_code == 200
    ids = response.json['ids']
    assert list(ids) == ['a', 'b', 'ü']
    assert len(set(ids.values())) == 3


@pytest.mark.parametrize('body', [
    {'message': 'no users'}, {'users': [], 'message': 'x'}, {'users': 'alice', 'message': 'x'},
    {'users': ['a', 5], 'message': 'x'}, {'users': ['a', ''], 'message': 'x'},
    {'users': ['a'] + ['u' * (MAX_ID_LENGTH + 1)], 'message': 'x'},
    {'users': ['a']}, {'users': ['a'], 'message': None}, ['a'],
])
def test_batch_push_rejects_bad_bodies(rest, body):
    response = rest.post('/api/push', json=body, headers=auth())
    assert response.status_code == 400
    assert response.json['error']


def test_batch_push_and_broadcast_share_the_size_limit(rest, app):
    limit = app.extensions['notification_socketio'].config.max_message_bytes
    big = 'x' * limit
    for path, body in (('/api/push', {'users': ['a'], 'message': big}),
                       ('/api/broadcast', {'message': big})):
        response = rest.post(path, json=body, headers=auth())
        assert response.status_code == 413, path


def test_broadcast_answers_with_its_id(rest):
    response = rest.post('/api/broadcast', json={'message': {'maintenance': True}},
                         headers=auth())
    assert response.status_code == 200 and response.json['id']
    form = rest.post('/api/broadcast', data={'message': 'form'}, headers=auth())
    assert form.status_code == 200
    assert rest.post('/api/broadcast', json={}, headers=auth()).status_code == 400


def test_sessions_report_presence(rest, socket_client):
    for connection_id in ('c1', 'c2'):
        rest.put(f'/api/u1/register?connectionId={connection_id}', headers=auth())
    client = socket_client()
    client.emit('register', 'u1', 'c1', callback=True)
    response = rest.get('/api/u1/sessions', headers=auth())
    assert response.status_code == 200
    assert response.json == {'userId': 'u1', 'online': 1, 'registered': 2}
    assert rest.get('/api/nobody/sessions', headers=auth()).json == {
        'userId': 'nobody', 'online': 0, 'registered': 0}


def test_revoking_a_registration_disconnects_its_socket(rest, socket_client):
    rest.put('/api/u1/register?connectionId=c1', headers=auth())
    client = socket_client()
    client.emit('register', 'u1', 'c1', callback=True)
    response = rest.delete('/api/u1/register?connectionId=c1', headers=auth())
    assert response.status_code == 200
    assert not client.is_connected()
    again = socket_client()
    assert again.emit('register', 'u1', 'c1', callback=True)['ok'] is False
    assert rest.delete('/api/u1/register', headers=auth()).status_code == 400


def test_revoking_all_sessions_of_a_user(rest, socket_client):
    clients = []
    for connection_id in ('c1', 'c2'):
        rest.put(f'/api/u1/register?connectionId={connection_id}', headers=auth())
        client = socket_client()
        client.emit('register', 'u1', connection_id, callback=True)
        clients.append(client)
    rest.put('/api/u2/register?connectionId=c1', headers=auth())
    other = socket_client()
    other.emit('register', 'u2', 'c1', callback=True)
    assert rest.delete('/api/u1/sessions', headers=auth()).status_code == 200
    assert not any(client.is_connected() for client in clients)
    assert other.is_connected()
    assert rest.get('/api/u1/sessions', headers=auth()).json['registered'] == 0


@pytest.mark.parametrize('method, path', [
    ('post', '/api/push'), ('post', '/api/broadcast'), ('get', '/api/u1/sessions'),
    ('delete', '/api/u1/register?connectionId=c1'), ('delete', '/api/u1/sessions'),
])
def test_the_new_routes_need_the_token(rest, method, path):
    response = getattr(rest, method)(path, json={'users': ['a'], 'message': 1})
    assert response.status_code == 401


@pytest.mark.parametrize('user_id, path', [
    ('a/b', 'a%2Fb'), ('line\nbreak', 'line%0Abreak'), ('/leading', '%2Fleading'),
    ('status', 'status'), ('ünï cödé 世', '%C3%BCn%C3%AF%20c%C3%B6d%C3%A9%20%E4%B8%96'),
])
def test_any_user_id_reaches_its_routes(rest, user_id, path):
    response = rest.post(f'/api/{path}/push', json={'message': 1}, headers=auth())
    assert response.status_code == 200
    sessions = rest.get(f'/api/{path}/sessions', headers=auth())
    assert sessions.json['userId'] == user_id


@pytest.mark.parametrize('body, message', [
    (b'{"message": 123456789012345678901234567890}', 123456789012345678901234567890),
    (b'{"message": "\\ud800 lone surrogate"}', '\ud800 lone surrogate'),
    (b'{"message": 1.5e300}', 1.5e300),
    (b'{"message": "12345678901234567890 digits in a string"}',
     '12345678901234567890 digits in a string'),
])
def test_messages_arrive_exactly_as_pushed(rest, socket_client, body, message):
    rest.put('/api/u1/register?connectionId=c1', headers=auth())
    client = socket_client()
    client.emit('register', 'u1', 'c1', callback=True)
    response = rest.post('/api/u1/push', data=body,
                         headers={**auth(), 'Content-Type': 'application/json'})
    assert response.status_code == 200
    [event] = client.get_received()
    assert event['args'] == message and type(event['args']) is type(message)


def test_the_fast_push_path_answers_exactly_like_the_flask_route(rest, app):
    # A JSON push is answered before Flask (fastpush.py); the same push as a form goes
    # through the Flask route. Both must look the same to the backend and to /metrics.
    fast = rest.post('/api/u1/push', headers=auth(), json={'message': {'n': 1}})
    routed = rest.post('/api/u1/push', headers=auth(), data={'message': 'hi'})
    assert fast.status_code == routed.status_code == 200
    assert dict(fast.headers) == {**dict(routed.headers),
                                  'Content-Length': str(len(fast.get_data()))}
    assert set(fast.json) == set(routed.json) == {'id', 'online'}
    assert fast.get_data() == ('{"id":"%s","online":0}\n' % fast.json['id']).encode()
    assert routed.get_data() == ('{"id":"%s","online":0}\n' % routed.json['id']).encode()
    metrics = rest.get('/metrics').get_data(as_text=True)
    assert 'nsio_pushes_total{outcome="ok",route="push"} 2.0' in metrics
    assert 'nsio_push_latency_seconds_count{route="push"} 2.0' in metrics


def test_the_fast_register_path_answers_exactly_like_the_flask_route(rest, app, caplog):
    # `connectionId=<id>` alone is answered before Flask (fastpush.py); with another
    # parameter beside it, the Flask route answers. Both look the same to the backend, the
    # log and /metrics.
    caplog.set_level('INFO', logger='notification_socketio.api')
    reached_flask = []
    app.before_request(lambda: reached_flask.append(request.path))
    fast = rest.put('/api/u1/register?connectionId=c1', headers=auth())
    assert reached_flask == []
    routed = rest.put('/api/u1/register?connectionId=c2&also=1', headers=auth())
    assert reached_flask == ['/api/u1/register']
    assert fast.status_code == routed.status_code == 200
    assert dict(fast.headers) == dict(routed.headers)
    assert fast.get_data() == routed.get_data() == b'{"ok":true,"ttl":86400}\n'
    lines = [record.getMessage() for record in caplog.records
             if record.name == 'notification_socketio.api']
    assert len(lines) == 2 and all(line.startswith('registered connection ') and
                                   line.endswith(' for user u1') for line in lines), lines
    assert 'nsio_registrations_total 2.0' in rest.get('/metrics').get_data(as_text=True)
    assert rest.get('/api/u1/sessions', headers=auth()).json['registered'] == 2


@pytest.mark.parametrize('query, status, connection_id', [
    ('?connectionId=a%2Db', 200, 'a-b'),
    ('?connectionId=a+b', 200, 'a b'),
    ('?other=1&connectionId=c', 200, 'c'),
    ('?connectionId=c&connectionId=d', 200, 'c'),
    ('?connectionId=', 400, None),
    ('?connectionId=' + 'c' * (MAX_ID_LENGTH + 1), 400, None),
])
def test_registrations_the_fast_path_does_not_take_are_answered_by_flask(
        rest, socket_client, query, status, connection_id):
    response = rest.put('/api/u1/register' + query, headers=auth())
    assert response.status_code == status, response.json
    if connection_id is not None:   # registered under the decoded id
        client = socket_client()
        assert client.emit('register', 'u1', connection_id, callback=True) == {'ok': True}


@pytest.mark.parametrize('path, body, status', [
    ('/api/u1/push', b'{"message": null}', 400),
    ('/api/u1/push', b'{"message": 1', 400),
    ('/api/u1/push', b'[1]', 400),
    ('/api/%s/push' % ('u' * (MAX_ID_LENGTH + 1)), b'{"message": 1}', 400),
    ('/api/a%2Fb/push', b'{"message": 1}', 200),
    ('/api/%C3%A9/push', b'{"message": 1}', 200),
])
def test_pushes_the_fast_path_does_not_take_are_answered_by_flask(rest, path, body, status):
    response = rest.post(path, headers={**auth(), 'Content-Type': 'application/json'},
                         data=body)
    assert response.status_code == status
    assert ('error' in response.json) == (status != 200)


def test_the_console_page_is_served_with_a_strict_policy(rest):
    response = rest.get('/console')
    assert response.status_code == 200
    assert response.mimetype == 'text/html'
    page = response.get_data(as_text=True)
    assert 'src="https://cdn.socket.io/4.8.1/socket.io.min.js"' in page
    assert 'integrity="sha384-' in page
    policy = response.headers['Content-Security-Policy']
    assert "script-src 'nonce-" in policy and 'https://cdn.socket.io' in policy
    assert "'unsafe-inline'" not in policy and "frame-ancestors 'none'" in policy
    assert response.headers['Cache-Control'] == 'no-store'
    assert TOKEN not in page


def test_the_console_can_be_turned_off():
    from notification_socketio import create_app
    from notification_socketio.config import Config
    off = create_app(Config.from_env({'AUTH_TOKEN': TOKEN, 'CONSOLE': '0'})).test_client()
    response = off.get('/console')
    assert response.status_code == 404
    assert response.json == {'error': 'no such route'}


def test_a_client_url_of_ones_own_goes_into_the_page_and_its_policy():
    from notification_socketio import create_app
    from notification_socketio.config import Config
    own = create_app(Config.from_env({
        'AUTH_TOKEN': TOKEN, 'SOCKETIO_CLIENT_URL': 'https://static.example.com/sio.js',
        'SOCKETIO_CLIENT_INTEGRITY': 'sha384-abc'})).test_client()
    response = own.get('/console')
    assert 'src="https://static.example.com/sio.js"' in response.get_data(as_text=True)
    assert 'integrity="sha384-abc"' in response.get_data(as_text=True)
    assert 'https://static.example.com' in response.headers['Content-Security-Policy']


@pytest.mark.parametrize('path, body, other_body', [
    ('/api/u1/push', {'message': 'once'}, {'message': 'another'}),
    ('/api/push', {'users': ['u1', 'u2'], 'message': 'once'},
     {'users': ['u1'], 'message': 'once'}),
    ('/api/broadcast', {'message': 'once'}, {'message': 'another'}),
])
@pytest.mark.parametrize('content_type', ['application/json', 'text/plain'])
def test_a_push_repeated_with_its_idempotency_key_is_made_once(
        rest, socket_client, path, body, other_body, content_type):
    rest.put('/api/u1/register?connectionId=c1', headers=auth())
    client = socket_client()
    client.emit('register', 'u1', 'c1', callback=True)
    headers = {**auth(), 'Idempotency-Key': 'job-42', 'Content-Type': content_type}
    first = rest.post(path, data=json.dumps(body), headers=headers)
    again = rest.post(path, data=json.dumps(body), headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.get_data() == first.get_data()
    assert 'Idempotent-Replayed' not in first.headers
    assert again.headers['Idempotent-Replayed'] == 'true'
    assert [event['args'] for event in client.get_received()] == ['once']
    conflict = rest.post(path, data=json.dumps(other_body), headers=headers)
    assert conflict.status_code == 409 and 'Idempotency-Key' in conflict.json['error']
    other_key = rest.post(path, data=json.dumps(body), headers={**headers,
                                                                 'Idempotency-Key': 'job-43'})
    assert other_key.status_code == 200 and other_key.get_data() != first.get_data()


@pytest.mark.parametrize('key', ['', 'x' * 256, 'caf\u00e9', 'tab\there'])
def test_a_malformed_idempotency_key_is_refused(rest, key):
    response = rest.post('/api/u1/push', json={'message': 1},
                         headers={**auth(), 'Idempotency-Key': key.encode().decode('latin-1')})
    assert response.status_code == 400 and 'Idempotency-Key' in response.json['error']


@pytest.mark.parametrize('body, message', [
    ('message=Build+finished', 'Build finished'),
    ('message=%C3%A9%E4%B8%96%F0%9F%9A%80', 'é世🚀'),
    ('message=', ''),
    # The original's body-parser (`extended`, the qs syntax), as PHP's http_build_query
    # and Rails-style form helpers write it:
    ('message[title]=Hi&message[tags][]=a&message[tags][]=b',
     {'title': 'Hi', 'tags': ['a', 'b']}),
    ('message%5Btitle%5D=Hi&message%5Burl%5D=%2Fbuilds%2F7', {'title': 'Hi', 'url': '/builds/7'}),
    ('message[0]=a&message[1]=b', ['a', 'b']),
    ('message=a&message=b', ['a', 'b']),
    ('message[a][b][c]=deep', {'a': {'b': {'c': 'deep'}}}),
])
def test_push_reads_form_bodies_as_the_original_did(rest, socket_client, body, message):
    rest.put('/api/u1/register?connectionId=c1', headers=auth())
    client = socket_client()
    client.emit('register', 'u1', 'c1', callback=True)
    response = rest.post('/api/u1/push', data=body, headers={
        **auth(), 'Content-Type': 'application/x-www-form-urlencoded'})
    assert response.status_code == 200, response.json
    [event] = client.get_received()
    assert event['args'] == message


@pytest.mark.parametrize('body, limit', [
    ('message' + '[a]' * 11 + '=1', 'depth'),
    ('&'.join(f'message[{n}]=x' for n in range(101)), 'List limit'),
    ('&'.join(f'field{n}=x' for n in range(1001)) + '&message=x', 'Parameter limit'),
    (b'message=\xff', 'UTF-8'),
])
def test_form_bodies_over_a_limit_are_refused(rest, body, limit):
    response = rest.post('/api/u1/push', data=body, headers={
        **auth(), 'Content-Type': 'application/x-www-form-urlencoded'})
    assert response.status_code == 400
    assert limit in response.json['error']
