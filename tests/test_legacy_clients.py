"""socket.io-client 1.x and 2.x (Engine.IO 3, Socket.IO protocol 4), the original's clients."""
import json
import subprocess
import uuid

import pytest
import requests

from conftest import FAST_HEARTBEAT, ROOT, TOKEN, ServerProcess, wait_for


def legacy_app(js_modules, server, client, transports, user, count, connection_id='tab'):
    """Start tests/js/legacy.js; return the process (one JSON line per event)."""
    options = {'client': client, 'url': server.url, 'transports': transports,
               'user': user, 'connectionId': connection_id, 'count': count}
    return subprocess.Popen(['node', str(ROOT / 'tests' / 'js' / 'legacy.js'),
                             json.dumps(options)], cwd=js_modules.parent,
                            stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize('client', ['v1', 'v2'])
@pytest.mark.parametrize('transports', [['polling'], ['websocket'], ['polling', 'websocket']],
                         ids=['polling', 'websocket', 'upgrade'])
def test_a_legacy_client_registers_and_receives_unicode(js_modules, server, client,
                                                        transports):
    user = f'legacy-{uuid.uuid4().hex[:8]}'
    assert server.register(user, 'tab').status_code == 200
    app = legacy_app(js_modules, server, client, transports, user, count=2)
    try:
        assert json.loads(app.stdout.readline()) == {'ack': {'ok': True}}
        pushed = [server.pushed(user, {'text': 'é世🚀 über'}), server.pushed(user, 'ASCII')]
        assert server.metric('nsio_sockets_engineio3') >= 1
        lines = [json.loads(app.stdout.readline()) for _ in pushed]
        assert [line['message'] for line in lines] == [{'text': 'é世🚀 über'}, 'ASCII']
        assert [line['meta']['id'] for line in lines] == pushed
        assert app.wait(timeout=30) == 0
    finally:
        app.kill()


@pytest.fixture(scope='module')
def quick_server():
    """A server with a one-second heartbeat: a client gone without a word is noticed fast."""
    process = ServerProcess(env=FAST_HEARTBEAT).start()
    yield process
    process.stop()


def read_until(app, wanted, limit=10):
    """Ids of the messages the app prints until all of `wanted` came (in arrival order).

    The register acknowledgement may come among them (a replay goes out before it); it
    must say ok.
    """
    seen = []
    while not set(wanted) <= set(seen):
        assert len(seen) < limit, f'never received {wanted}; got {seen}'
        line = json.loads(app.stdout.readline() or '{"error": "the app exited"}')
        assert 'error' not in line, line
        if 'ack' in line:
            assert line['ack'] == {'ok': True}
        else:
            seen.append(line['meta']['id'])
    return seen


@pytest.mark.parametrize('client', ['v1', 'v2'])
@pytest.mark.parametrize('transports', [['polling'], ['websocket']], ids=['polling', 'ws'])
def test_a_legacy_client_gets_what_was_pushed_while_it_was_away(js_modules, quick_server,
                                                                client, transports):
    # Engine.IO 3 clients answer no server PING: a client that stops pinging is timed
    # out and its registration released, and what it missed is replayed in order.
    server = quick_server
    user = f'legacy-{uuid.uuid4().hex[:8]}'
    assert server.register(user, 'tab').status_code == 200
    first = legacy_app(js_modules, server, client, transports, user, count=100)
    try:
        assert json.loads(first.stdout.readline()) == {'ack': {'ok': True}}
        before = server.pushed(user, 'before')
        assert read_until(first, [before]) == [before]
    finally:
        first.kill()   # gone without a word: no more PINGs
    wait_for(lambda: server.sessions(user)['online'] == 0, message='the registration free')
    away = [server.pushed(user, f'while away é {n}') for n in range(3)]
    again = legacy_app(js_modules, server, client, transports, user, count=100)
    try:
        seen = read_until(again, away)
        # In order, none missing; at least once: `before` may come again, first.
        assert [i for i in seen if i != before] == away
        assert seen.index(away[0]) <= 1
    finally:
        again.kill()


def test_legacy_and_current_clients_of_one_user_across_processes(
        js_modules, redis_server, start_server, listeners):
    # A 2.x app on one process, a current client on another, one user; a push, a batch
    # and a broadcast reach both; revoking the legacy registration disconnects it.
    env = {'REDIS_URL': redis_server.url}
    here, there = start_server(env=env), start_server(env=env)
    user = f'mixed-{uuid.uuid4().hex[:8]}'
    assert here.register(user, 'tab').status_code == 200
    assert here.register(user, 'current').status_code == 200
    app = legacy_app(js_modules, here, 'v2', ['websocket'], user, count=100)
    try:
        assert json.loads(app.stdout.readline()) == {'ack': {'ok': True}}
        current = listeners(there.url).follow(user, 'current')
        pushed = [there.pushed(user, 'push é'),
                  requests.post(f'{there.url}/api/push', timeout=10,
                                json={'users': [user], 'message': 'batch'},
                                headers={'X-AUTH-TOKEN': TOKEN}).json()['ids'][user],
                  there.pushed_broadcast('broadcast')]
        assert read_until(app, pushed) == pushed
        assert current.until_received(pushed) == pushed
        assert requests.delete(f'{there.url}/api/{user}/register',
                               params={'connectionId': 'tab'},
                               headers={'X-AUTH-TOKEN': TOKEN}, timeout=10).ok
        assert json.loads(app.stdout.readline()) == {'disconnected': 'io server disconnect'}
        assert current.sio.connected
    finally:
        app.kill()


@pytest.mark.parametrize('client', ['v1', 'v2'])
def test_two_sessions_of_one_user_on_legacy_clients_both_receive(js_modules, server, client):
    user = f'legacy-{uuid.uuid4().hex[:8]}'
    apps = []
    try:
        for connection_id, transports in (('tab', ['polling']), ('phone', ['websocket'])):
            assert server.register(user, connection_id).status_code == 200
            app = legacy_app(js_modules, server, client, transports, user, count=100,
                             connection_id=connection_id)
            apps.append(app)
            assert json.loads(app.stdout.readline()) == {'ack': {'ok': True}}
        assert server.sessions(user) == {'userId': user, 'online': 2, 'registered': 2}
        pushed = [server.pushed(user, f'to both é {n}') for n in range(3)]
        for app in apps:
            assert read_until(app, pushed) == pushed
    finally:
        for app in apps:
            app.kill()


def test_an_engineio3_post_that_is_no_payload_or_too_large_is_a_400(server):
    sid = requests.get(server.url + '/socket.io/?EIO=3&transport=polling',
                       timeout=10).text.split('"sid":"', 1)[1].split('"', 1)[0]
    url = f'{server.url}/socket.io/?EIO=3&transport=polling&sid={sid}'
    for body in ('no length', '5:42', 'x' * 70_000):
        assert requests.post(url, data=body, timeout=10).status_code == 400, body
    assert requests.post(url, data='1:2', timeout=10).status_code == 200   # a PING
