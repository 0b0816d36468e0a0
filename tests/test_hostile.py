"""Hostile input, property-tested with hypothesis against the app (Flask's and
Flask-SocketIO's test clients): whatever arrives, a JSON error or `ok: false`, never a
500, never a delivery to another user, never a change to another user's registration."""
from urllib.parse import quote

import gevent
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TOKEN, auth
from notification_socketio import create_app, jsoncodec
from notification_socketio.config import Config

VICTIM, VICTIM_CID = 'victim', 'victim-connection'
SETTINGS = settings(max_examples=250, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
ids = st.one_of(
    st.text(max_size=40),
    st.text(alphabet='/%.\\\x00\n', max_size=12),
    st.sampled_from(['%2F', '..%2F..', '/', '//', 'a/b', 'victim/', '%76ictim', 'VICTIM',
                     'victim\n', 'push', 'status', 'register']),
    st.integers(100, 10_000).map(lambda n: 'u' * n),
).filter(lambda user: user != VICTIM)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda value: jsoncodec.dumps(value).encode()),
    st.builds(lambda message, users: jsoncodec.dumps(
        {'message': message, 'users': users}).encode(), json_values,
        st.lists(ids, max_size=3) | json_values),
)


@pytest.fixture
def world():
    """One app, a victim holding a registration, and an attacker's socket.

    One per test, shared by its examples: a registration that one test's fuzzed REST calls
    made (`%76ictim`, say) is one that another test's attacker may rightly claim.
    """
    app = create_app(Config.for_testing(auth_tokens=(TOKEN,), max_register_failures=10 ** 9))
    rest = app.test_client()
    socketio = app.extensions['notification_socketio'].socketio
    assert rest.put(f'/api/{VICTIM}/register?connectionId={VICTIM_CID}',
                    headers=auth()).status_code == 200
    victim = socketio.test_client(app, flask_test_client=rest)
    assert victim.emit('register', VICTIM, VICTIM_CID, callback=True) == {'ok': True}
    attacker = socketio.test_client(app, flask_test_client=rest)
    return rest, victim, attacker


def victim_untouched(rest, victim):
    assert victim.is_connected()
    assert victim.get_received() == []
    sessions = rest.get(f'/api/{VICTIM}/sessions', headers=auth()).json
    assert (sessions['online'], sessions['registered']) == (1, 1)


def assert_json_answer(response):
    assert response.status_code != 500, response.get_data(as_text=True)
    assert response.status_code < 500 or response.status_code == 503
    assert response.mimetype in ('application/json', 'text/plain', 'text/html')
    if response.status_code >= 400:
        body = response.get_json(silent=True)
        assert isinstance(body, dict) and isinstance(body.get('error'), str), response.data
        assert 'Traceback' not in body['error']


@SETTINGS
@given(user=ids, connection_id=ids, body=bodies, raw_slashes=st.booleans(),
       route=st.sampled_from(['register', 'revoke', 'push', 'batch', 'sessions',
                              'revoke_all', 'broadcast']),
       content_type=st.sampled_from(['application/json', 'text/plain', None,
                                     'application/x-www-form-urlencoded']))
def test_any_rest_call_gets_a_json_answer_and_leaves_others_alone(
        world, user, connection_id, body, raw_slashes, route, content_type):
    rest, victim, _ = world
    path_user = quote(user, safe='/' if raw_slashes else '')
    query = 'connectionId=' + quote(connection_id, safe='')
    headers = {**auth(), **({'Content-Type': content_type} if content_type else {})}
    call = {
        'register': lambda: rest.put(f'/api/{path_user}/register?{query}', headers=headers),
        'revoke': lambda: rest.delete(f'/api/{path_user}/register?{query}', headers=headers),
        'push': lambda: rest.post(f'/api/{path_user}/push', data=body, headers=headers),
        'batch': lambda: rest.post('/api/push', data=body, headers=headers),
        'sessions': lambda: rest.get(f'/api/{path_user}/sessions', headers=headers),
        'revoke_all': lambda: rest.delete(f'/api/{path_user}/sessions', headers=headers),
        'broadcast': lambda: rest.post('/api/broadcast', data=body, headers=headers),
    }[route]
    response = call()
    assert_json_answer(response)
    if route == 'broadcast' and response.status_code == 200:
        victim.get_received()   # a broadcast is for everyone, the victim included
    if route == 'batch' and response.status_code == 200 and VICTIM in response.json['ids']:
        return   # the backend may push to the victim too: it holds the token
    victim_untouched(rest, victim)


@SETTINGS
@given(token=st.text(max_size=60).filter(lambda t: t != TOKEN and not set(t) & set('\r\n')))
def test_no_token_but_the_right_one_opens_the_api(world, token):
    rest, victim, _ = world
    response = rest.post(f'/api/{quote(VICTIM)}/push', json={'message': 'x'},
                         headers={'X-AUTH-TOKEN': token.encode('utf-8').decode('latin-1')})
    assert response.status_code == 401
    assert_json_answer(response)
    victim_untouched(rest, victim)


@SETTINGS
@given(event=st.text(max_size=30) | st.sampled_from(
           ['register', 'disconnect', 'connect', 'message', 'connect_error', '*']),
       args=st.lists(json_values | ids, max_size=4))
def test_any_socket_event_gets_ok_false_and_leaves_others_alone(world, event, args):
    rest, victim, attacker = world
    if not attacker.is_connected():
        attacker.connect()
    answer = attacker.emit(event, *args, callback=True)
    assert isinstance(answer, dict) and answer['ok'] is False, answer
    assert isinstance(answer['error'], str)
    assert attacker.is_connected()
    assert attacker.get_received() == []
    victim_untouched(rest, victim)


def test_a_socket_guessing_connection_ids_is_disconnected(app, rest, socket_client):
    limit = app.extensions['notification_socketio'].config.max_register_failures
    assert rest.put('/api/u1/register?connectionId=real', headers=auth()).status_code == 200
    guesser = socket_client()
    for attempt in range(1, limit + 1):
        answer = guesser.emit('register', 'u1', f'guess-{attempt}', callback=True)
        assert answer['ok'] is False
        gevent.idle()   # the disconnect follows the acknowledgement, in a greenlet
        assert guesser.is_connected() == (attempt < limit)
    assert 'disconnected' in answer['error']
    # An honest client's typo or reconnect does not come near the limit.
    honest = socket_client()
    assert honest.emit('register', 'u1', 'typo', callback=True)['ok'] is False
    assert honest.emit('register', 'u1', 'real', callback=True) == {'ok': True}
    assert honest.is_connected()


def test_an_event_named_disconnect_does_not_let_go_of_the_registration(rest, socket_client):
    assert rest.put('/api/u1/register?connectionId=c1', headers=auth()).status_code == 200
    client = socket_client()
    assert client.emit('register', 'u1', 'c1', callback=True) == {'ok': True}
    client.emit('disconnect', 'forged')
    assert rest.post('/api/u1/push', json={'message': 'still here'},
                     headers=auth()).status_code == 200
    # (Flask-SocketIO's test client keeps only the first argument of `message` events.)
    assert [event['args'] for event in client.get_received()] == ['still here']
