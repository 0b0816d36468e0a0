"""The Socket.IO events through Flask-SocketIO's test client."""
import pytest

from conftest import auth
from notification_socketio.validation import MAX_ID_LENGTH


def messages(client):
    """The messages of the `message` events received so far.

    Flask-SocketIO's test client keeps only the first argument of `message` events, so
    `meta` is checked by the end-to-end tests.
    """
    return [event['args'] for event in client.get_received() if event['name'] == 'message']


def registered(rest, user_id, connection_id):
    assert rest.put(f'/api/{user_id}/register?connectionId={connection_id}',
                    headers=auth()).status_code == 200


def push(rest, user_id, message):
    response = rest.post(f'/api/{user_id}/push', json={'message': message}, headers=auth())
    assert response.status_code == 200
    return response.json['id']


def test_register_claims_the_backend_registration(rest, socket_client):
    registered(rest, 'u1', 'c1')
    client = socket_client()
    assert client.emit('register', 'u1', 'c1', callback=True) == {'ok': True}
    push(rest, 'u1', {'text': 'hello'})
    assert messages(client) == [{'text': 'hello'}]


def test_register_without_a_backend_registration_fails(rest, socket_client):
    registered(rest, 'u1', 'c1')
    client = socket_client()
    ack = client.emit('register', 'u1', 'other', callback=True)
    assert ack['ok'] is False and 'registration' in ack['error']
    push(rest, 'u1', 'hello')
    assert messages(client) == []


@pytest.mark.parametrize('args', [
    (), ('u1',), (1, 'c1'), ('u1', 2), (None, 'c1'), ('u1', None), ({'a': 1}, 'c1'),
    (['u1'], 'c1'), ('u1', True), ('', 'c1'), ('u1', ''),
    ('u' * (MAX_ID_LENGTH + 1), 'c1'), ('u1', 'c' * 100_000),
    ('u1', 'c1', 'options'), ('u1', 'c1', 5), ('u1', 'c1', {'since': 5}),
    ('u1', 'c1', {'since': 'yesterday'}), ('u1', 'c1', {}, 'extra'),
])
def test_wrong_register_arguments_get_ok_false_and_change_nothing(
        rest, socket_client, args):
    registered(rest, 'u1', 'c1')
    intruder = socket_client()
    ack = intruder.emit('register', *args, callback=True)
    assert ack['ok'] is False and ack['error']
    owner = socket_client()
    assert owner.emit('register', 'u1', 'c1', callback=True) == {'ok': True}
    assert intruder.is_connected() and owner.is_connected()
    push(rest, 'u1', 'only for the owner')
    assert messages(intruder) == []
    assert messages(owner) == ['only for the owner']


def test_register_with_valid_options_is_accepted(rest, socket_client):
    registered(rest, 'u1', 'c1')
    client = socket_client()
    assert client.emit('register', 'u1', 'c1', None, callback=True) == {'ok': True}
    other = socket_client()
    registered(rest, 'u1', 'c2')
    ack = other.emit('register', 'u1', 'c2', {'since': '1-0'}, callback=True)
    assert ack == {'ok': True}


def test_messages_stay_with_their_user(rest, socket_client):
    registered(rest, 'alice', 'ca')
    registered(rest, 'bob', 'cb')
    alice, bob = socket_client(), socket_client()
    alice.emit('register', 'alice', 'ca', callback=True)
    bob.emit('register', 'bob', 'cb', callback=True)
    push(rest, 'alice', 'for alice')
    push(rest, 'bob', 'for bob')
    push(rest, 'carol', 'for nobody')
    assert messages(alice) == ['for alice']
    assert messages(bob) == ['for bob']


def test_every_registration_of_a_user_receives(rest, socket_client):
    tabs = []
    for connection_id in ('tab1', 'tab2', 'tab3'):
        registered(rest, 'u1', connection_id)
        tab = socket_client()
        assert tab.emit('register', 'u1', connection_id, callback=True) == {'ok': True}
        tabs.append(tab)
    push(rest, 'u1', 'everywhere')
    for tab in tabs:
        assert messages(tab) == ['everywhere']


def test_a_newer_claim_takes_the_registration_over(rest, socket_client):
    registered(rest, 'u1', 'c1')
    old, new = socket_client(), socket_client()
    assert old.emit('register', 'u1', 'c1', callback=True) == {'ok': True}
    assert new.emit('register', 'u1', 'c1', callback=True) == {'ok': True}
    assert not old.is_connected()
    push(rest, 'u1', 'to the new socket')
    assert messages(new) == ['to the new socket']


def test_registering_twice_on_one_socket_is_harmless(rest, socket_client):
    registered(rest, 'u1', 'c1')
    client = socket_client()
    for _ in range(2):
        assert client.emit('register', 'u1', 'c1', callback=True) == {'ok': True}
    assert client.is_connected()
    push(rest, 'u1', 'once')
    assert messages(client) == ['once']


def test_a_socket_that_claims_another_registration_leaves_the_first(rest, socket_client):
    registered(rest, 'alice', 'ca')
    registered(rest, 'bob', 'cb')
    client = socket_client()
    client.emit('register', 'alice', 'ca', callback=True)
    client.emit('register', 'bob', 'cb', callback=True)
    push(rest, 'alice', 'for alice')
    push(rest, 'bob', 'for bob')
    assert messages(client) == ['for bob']
    reclaimed = socket_client()
    assert reclaimed.emit('register', 'alice', 'ca', callback=True) == {'ok': True}
    assert client.is_connected()


def test_the_registration_can_be_claimed_again_after_a_disconnect(rest, socket_client):
    registered(rest, 'u1', 'c1')
    first = socket_client()
    first.emit('register', 'u1', 'c1', callback=True)
    first.disconnect()
    again = socket_client()
    assert again.emit('register', 'u1', 'c1', callback=True) == {'ok': True}
    push(rest, 'u1', 'after the reconnect')
    assert messages(again) == ['after the reconnect']


def test_an_unregistered_socket_receives_nothing(rest, socket_client):
    client = socket_client()
    push(rest, 'u1', 'hello')
    assert messages(client) == []


def test_a_broadcast_reaches_every_registered_socket_only(rest, socket_client):
    registered(rest, 'alice', 'ca')
    registered(rest, 'bob', 'cb')
    alice, bob, stranger = socket_client(), socket_client(), socket_client()
    alice.emit('register', 'alice', 'ca', callback=True)
    bob.emit('register', 'bob', 'cb', callback=True)
    assert rest.post('/api/broadcast', json={'message': 'all'}, headers=auth()).status_code == 200
    assert messages(alice) == ['all'] and messages(bob) == ['all']
    assert messages(stranger) == []


def test_a_batch_push_reaches_each_listed_user_once(rest, socket_client):
    clients = {}
    for user in ('a', 'b', 'c'):
        registered(rest, user, 'tab')
        clients[user] = socket_client()
        clients[user].emit('register', user, 'tab', callback=True)
    response = rest.post('/api/push', json={'users': ['a', 'b', 'a'], 'message': 'batch'},
                         headers=auth())
    assert response.status_code == 200
    assert messages(clients['a']) == ['batch'] and messages(clients['b']) == ['batch']
    assert messages(clients['c']) == []


def test_an_events_request_context_skips_url_matching_and_a_routes_does_not(app):
    from flask import request
    from werkzeug.test import EnvironBuilder
    with app.request_context(EnvironBuilder(path='/socket.io/').get_environ()) as context:
        assert context.url_adapter is None and request.routing_exception is None
    with app.request_context(EnvironBuilder(path='/api/u/register', method='PUT')
                             .get_environ()):
        assert request.endpoint == 'api.register'
