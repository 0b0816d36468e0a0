"""/metrics in Prometheus text format, and the JSON log format."""
import json

from conftest import auth, sample_value, scrape


value = sample_value


def test_pushes_are_counted_by_route_and_outcome(rest):
    before = scrape(rest.get)
    rest.post('/api/u1/push', json={'message': 1}, headers=auth())
    rest.post('/api/u1/push', json={'message': 2}, headers=auth())
    rest.post('/api/u1/push', json={'nothing': 1}, headers=auth())
    rest.post('/api/u1/push', json={'message': 1})
    rest.post('/api/push', json={'users': ['a', 'b'], 'message': 1}, headers=auth())
    rest.post('/api/broadcast', json={'message': 'x' * 70_000}, headers=auth())
    after = scrape(rest.get)
    for route, outcome, count in [('push', 'ok', 2), ('push', 'invalid', 1),
                                  ('push', 'unauthorized', 1), ('push_many', 'ok', 1),
                                  ('broadcast', 'too_large', 1)]:
        name = 'nsio_pushes_total'
        assert value(after, name, route=route, outcome=outcome) - value(
            before, name, route=route, outcome=outcome) == count, (route, outcome)
    assert value(after, 'nsio_push_latency_seconds_count', route='push') == 2


def test_registrations_deliveries_and_presence_are_measured(rest, socket_client):
    rest.put('/api/u1/register?connectionId=c1', headers=auth())
    rest.put('/api/u2/register?connectionId=c1', headers=auth())
    first, second = socket_client(), socket_client()
    first.emit('register', 'u1', 'c1', callback=True)
    second.emit('register', 'u2', 'c1', callback=True)
    rest.post('/api/broadcast', json={'message': 'all'}, headers=auth())
    samples = scrape(rest.get)
    assert value(samples, 'nsio_registrations_total') == 2
    assert value(samples, 'nsio_deliveries_total', kind='live') == 2
    assert value(samples, 'nsio_registrations_held') == 2
    assert value(samples, 'nsio_users_online') == 2
    assert value(samples, 'nsio_state_errors_total') == 0
    rest.delete('/api/u1/sessions', headers=auth())
    samples = scrape(rest.get)
    assert value(samples, 'nsio_revocations_total') == 1
    assert value(samples, 'nsio_users_online') == 1


def test_recoveries_are_counted(rest, socket_client):
    rest.put('/api/u1/register?connectionId=c1', headers=auth())
    for n in range(3):
        rest.post('/api/u1/push', json={'message': n}, headers=auth())
    client = socket_client()
    client.emit('register', 'u1', 'c1', callback=True)
    samples = scrape(rest.get)
    assert value(samples, 'nsio_recoveries_total') == 1
    assert value(samples, 'nsio_deliveries_total', kind='replayed') == 3


def test_live_sockets_are_counted_on_the_real_server(start_server, listeners):
    import requests
    server = start_server()
    for transport in ('websocket', 'polling'):
        listeners(server.url, transport).connect()
    samples = scrape(lambda path: requests.get(server.url + path, timeout=10))
    assert value(samples, 'nsio_sockets_connected') == 2


def test_json_logs_are_one_object_a_line(start_server, listeners):
    server = start_server(env={'LOG_FORMAT': 'json'})
    assert server.register('u1', 'connection-1').status_code == 200
    listeners(server.url).follow('u1', 'connection-1')
    lines = [line for line in server.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]   # every line, gunicorn's included
    messages = [record['message'] for record in records]
    assert 'registered connection conn*** for user u1' in messages
    assert 'socket claimed connection conn*** of user u1' in messages
    assert all({'ts', 'level', 'logger', 'message'} <= set(record) for record in records)
