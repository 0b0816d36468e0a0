"""Nothing lost across a reconnect: closed, cut, black-holed, on either state backend.

Each case of Node's Socket.IO recovery that has a known gap is here: nothing received
before the cut (socket.io issue 5538), a long-lived idle connection (5282), and a second
cut after a recovered one (4880). Clients reach the server through a TCP proxy that cuts
or black-holes their connections; the heartbeat is short so that dead ones are noticed fast.
"""
import time
import uuid

import pytest

from conftest import FAST_HEARTBEAT, TRANSPORTS, wait_for


@pytest.fixture(params=['memory', 'redis'])
def recovering_server(request, start_server):
    """A server with a short heartbeat, on the in-memory state or on Redis."""
    env = dict(FAST_HEARTBEAT)
    if request.param == 'redis':
        env['REDIS_URL'] = request.getfixturevalue('redis_server').url
    return start_server(env=env)


@pytest.fixture(params=TRANSPORTS)
def transport(request):
    return request.param


@pytest.fixture
def user():
    return 'user-' + uuid.uuid4().hex[:8]


def follower(server, proxies, listeners, transport, user, connection_id='tab'):
    """A reconnecting client behind a proxy, following one registration of `user`."""
    assert server.register(user, connection_id).status_code == 200
    proxy = proxies(server.port)
    client = listeners(proxy.url, transport, reconnection=True)
    client.follow(user, connection_id)
    return proxy, client


def pushed_while_away(server, proxy, client, user, label, count):
    """Cut the client off and keep it off while `count` messages are pushed; let it back in.

    Returns the ids pushed meanwhile, once the client has claimed its registration again.
    """
    proxy.blackhole()   # the client cannot come back until restore()
    proxy.cut()
    pushed = [server.pushed(user, f'{label} {n}') for n in range(count)]
    proxy.restore()
    assert client.next_ack() == {'ok': True}
    return pushed


def test_a_clean_close_loses_nothing(recovering_server, listeners, transport, user):
    server = recovering_server
    assert server.register(user, 'tab').status_code == 200
    first = listeners(server.url, transport).follow(user, 'tab')
    before = server.pushed(user, 'before')
    first.until_received([before])
    first.close()
    during = [server.pushed(user, f'during {n}') for n in range(5)]
    again = listeners(server.url, transport).follow(user, 'tab')
    after = server.pushed(user, 'after')
    seen = again.until_received(during + [after])
    assert [i for i in seen if i != before] == during + [after]


def test_a_cut_with_nothing_received_before_loses_nothing(
        recovering_server, proxies, listeners, transport, user):
    # socket.io issue 5538: recovery failed when no message had arrived before the cut.
    proxy, client = follower(recovering_server, proxies, listeners, transport, user)
    during = pushed_while_away(recovering_server, proxy, client, user, 'during', 5)
    after = recovering_server.pushed(user, 'after')
    assert client.until_received(during + [after]) == during + [after]


def test_a_cut_during_pushes_loses_nothing(
        recovering_server, proxies, listeners, transport, user):
    proxy, client = follower(recovering_server, proxies, listeners, transport, user)
    pushed = [recovering_server.pushed(user, f'before {n}') for n in range(5)]
    proxy.cut()
    pushed += [recovering_server.pushed(user, f'around {n}') for n in range(20)]
    assert client.next_ack() == {'ok': True}
    pushed.append(recovering_server.pushed(user, 'after'))
    assert client.until_received(pushed) == pushed


def test_a_black_hole_until_the_ping_timeout_loses_nothing(
        recovering_server, proxies, listeners, transport, user):
    proxy, client = follower(recovering_server, proxies, listeners, transport, user)
    before = recovering_server.pushed(user, 'before')
    client.until_received([before])
    proxy.blackhole()
    # Accepted by the server and written into a connection that leads nowhere.
    during = [recovering_server.pushed(user, f'into the void {n}') for n in range(5)]
    wait_for(lambda: not client.sio.connected, timeout=30,
             message='the client to notice the black hole')
    proxy.restore()
    assert client.next_ack() == {'ok': True}
    after = recovering_server.pushed(user, 'after')
    seen = client.until_received(during + [after])
    assert [i for i in seen if i != before] == during + [after]


def test_a_long_idle_connection_recovers(
        recovering_server, proxies, listeners, transport, user):
    # socket.io issue 5282: recovery failed after a long-lived idle connection.
    proxy, client = follower(recovering_server, proxies, listeners, transport, user)
    first = recovering_server.pushed(user, 'first')
    client.until_received([first])
    time.sleep(4)   # the scenario itself: idle for four heartbeats
    during = pushed_while_away(recovering_server, proxy, client, user, 'during', 3)
    seen = client.until_received(during)
    assert [i for i in seen if i != first] == during


def test_a_second_cut_after_a_recovered_one_loses_nothing(
        recovering_server, proxies, listeners, transport, user):
    # socket.io issue 4880: the second cut after a recovered one lost messages.
    proxy, client = follower(recovering_server, proxies, listeners, transport, user)
    earlier = []
    for cut in range(3):
        pushed = pushed_while_away(recovering_server, proxy, client, user,
                                   f'cut {cut} message', 3)
        pushed.append(recovering_server.pushed(user, f'after cut {cut}'))
        # Each cut's messages, in order; an earlier one may come again (at least once).
        seen = client.until_received(pushed)
        assert [i for i in seen if i not in earlier] == pushed
        earlier += pushed


def test_a_new_connection_id_catches_up_with_since(recovering_server, listeners, user):
    server = recovering_server
    assert server.register(user, 'old-tab').status_code == 200
    old = listeners(server.url).follow(user, 'old-tab')
    first = server.pushed(user, 'first')
    old.until_received([first])
    old.close()
    missed = [server.pushed(user, f'missed {n}') for n in range(3)]
    # A reloaded page: a new connectionId from the backend, the last id from storage.
    assert server.register(user, 'new-tab').status_code == 200
    new = listeners(server.url).follow(user, 'new-tab', {'since': first})
    assert new.until_received(missed) == missed


def test_a_fresh_registration_gets_what_was_pushed_before_it_was_claimed(
        recovering_server, listeners, user):
    server = recovering_server
    old = server.pushed(user, 'before the registration')
    assert server.register(user, 'tab').status_code == 200
    early = server.pushed(user, 'between register and claim')
    client = listeners(server.url).follow(user, 'tab')
    late = server.pushed(user, 'after the claim')
    assert client.until_received([early, late]) == [early, late]
    assert old not in [early, late]

