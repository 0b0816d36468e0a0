"""The Engine.IO and Socket.IO protocols as a client sees them on the wire, case by case.

The cases of the Socket.IO project's protocol test suite (socketio/socket.io-protocol,
`test-suite/`) that hold for any server, written again here against the real server with
its heartbeat at 300 ms / 200 ms, as that suite runs.
"""
import json
import re
import socket
import threading
import time

import pytest
import requests
import websocket

from conftest import wait_for

PING = {'PING_INTERVAL': '0.3', 'PING_TIMEOUT': '0.2'}


@pytest.fixture(scope='module')
def server():
    from conftest import ServerProcess
    process = ServerProcess(env=PING).start()
    yield process
    process.stop()


def handshake(body):
    assert body[0] == '0', body
    return json.loads(body[1:])


def ws(server, query='EIO=4&transport=websocket'):
    return websocket.create_connection(
        server.url.replace('http', 'ws') + '/socket.io/?' + query, timeout=10)


def test_a_long_polling_session_opens_with_the_exact_heartbeat(server):
    response = requests.get(server.url + '/socket.io/?EIO=4&transport=polling', timeout=10)
    assert response.status_code == 200
    opened = handshake(response.text)
    assert set(opened) == {'sid', 'upgrades', 'pingInterval', 'pingTimeout', 'maxPayload'}
    assert (opened['upgrades'], opened['pingInterval'], opened['pingTimeout']) == (
        ['websocket'], 300, 200)


def test_a_websocket_session_opens_with_the_exact_heartbeat(server):
    connection = ws(server)
    try:
        opened = handshake(connection.recv())
        assert (opened['upgrades'], opened['pingInterval']) == ([], 300)
    finally:
        connection.close()


@pytest.mark.parametrize('method, query', [
    ('GET', 'transport=polling'), ('GET', 'EIO=abc&transport=polling'),
    ('GET', 'EIO=4'), ('GET', 'EIO=4&transport=abc'), ('GET', 'EIO=4&transport='),
    ('GET', 'EIO=4&transport=&x=polling'), ('GET', 'EIO=4&xtransport=polling'),
    ('POST', 'EIO=4&transport=polling'), ('PUT', 'EIO=4&transport=polling'),
    ('DELETE', 'EIO=4&transport=polling'),
])
def test_what_is_no_engineio_handshake_is_a_400(server, method, query):
    response = requests.request(method, f'{server.url}/socket.io/?{query}', timeout=10)
    assert response.status_code == 400, (method, query, response.text)


@pytest.mark.parametrize('query', ['EIO=4', 'EIO=4&transport=abc'])
def test_a_websocket_without_a_valid_transport_is_refused(server, query):
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        ws(server, query)
    assert refused.value.status_code == 400


def test_long_polling_pings_and_times_out_without_pongs(server):
    sid = handshake(requests.get(server.url + '/socket.io/?EIO=4&transport=polling',
                                 timeout=10).text)['sid']
    url = f'{server.url}/socket.io/?EIO=4&transport=polling&sid={sid}'
    assert requests.get(url, timeout=10).text == '2'   # PING after the interval
    assert requests.post(url, data='3', timeout=10).text == 'OK'   # PONG
    assert requests.get(url, timeout=10).text == '2'
    # No PONG this time: the session ends after the timeout.
    wait_for(lambda: requests.get(url, timeout=10).status_code == 400, timeout=10,
             message='the session to close')


def test_websocket_pings_and_times_out_without_pongs(server):
    connection = ws(server)
    try:
        handshake(connection.recv())
        assert connection.recv() == '2'
        connection.send('3')
        assert connection.recv() == '2'
        # No PONG: the server closes the session (a CLOSE packet, then the connection).
        frames = []
        try:
            while (frame := connection.recv()) and frame != '1':
                frames.append(frame)
        except (websocket.WebSocketConnectionClosedException, OSError):
            pass
        assert set(frames) <= {'2'}
    finally:
        connection.close()


def test_sessions_that_ended_or_went_silent_are_forgotten(start_server):
    # python-engineio's client-monitor task is off (a wake-up per socket per heartbeat);
    # each socket forgets itself when it closes, and a silent one is timed out by its own
    # timer. With a heartbeat of 1 s / 1 s, every session below is gone well within 20 s.
    server = start_server({'PING_INTERVAL': '1', 'PING_TIMEOUT': '1'})
    closed = ws(server)
    handshake(closed.recv())
    silent = ws(server)   # reads nothing, answers no PING
    handshake(silent.recv())
    polling = handshake(requests.get(server.url + '/socket.io/?EIO=4&transport=polling',
                                     timeout=10).text)   # never polls again
    assert polling['sid']
    wait_for(lambda: server.metric('nsio_sockets_connected') == 3, message='three sessions')
    closed.close()
    try:
        wait_for(lambda: server.metric('nsio_sockets_connected') == 0, timeout=20,
                 message='every session forgotten')
    finally:
        silent.close()


def test_websocket_pings_once_per_interval_however_fast_the_client_answers(server):
    # Each PONG schedules the next PING one interval later, not at once: a heartbeat
    # per interval per session, whatever the number of sessions.
    connection = ws(server)
    try:
        handshake(connection.recv())
        connection.settimeout(0.05)
        pings, deadline = 0, time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                frame = connection.recv()
            except websocket.WebSocketTimeoutException:
                continue
            if frame == '2':
                pings += 1
                connection.send('3')
        assert 1 <= pings <= 1.5 / 0.3 + 2, pings
    finally:
        connection.close()


def test_long_polling_pings_once_per_interval_however_fast_the_client_answers(server):
    url = server.url + '/socket.io/?EIO=4&transport=polling'
    sid = handshake(requests.get(url, timeout=10).text)['sid']
    pings, deadline = 0, time.monotonic() + 1.5
    with requests.Session() as session:
        while time.monotonic() < deadline:
            packets = session.get(f'{url}&sid={sid}', timeout=10).text.split('\x1e')
            if '2' in packets:
                pings += 1
                assert session.post(f'{url}&sid={sid}', data='3', timeout=10).text == 'OK'
    assert 1 <= pings <= 1.5 / 0.3 + 2, pings


def test_a_request_asking_to_close_the_connection_is_told_it_is_closed(server):
    # Clients that pool connections (node-fetch) otherwise reuse one that this end closes.
    with socket.create_connection(('127.0.0.1', server.port), timeout=10) as raw:
        raw.sendall(b'GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n'
                    b'Host: x\r\nConnection: close\r\n\r\n')
        answer = b''
        while chunk := raw.recv(65536):
            answer += chunk
    head = answer.split(b'\r\n\r\n', 1)[0].lower()
    assert head.startswith(b'http/1.1 200') and b'\r\nconnection: close' in head
    assert re.search(rb'\r\ndate: \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} gmt', head), head


def test_the_main_namespace_connects_and_another_gets_the_protocol_s_error(server):
    connection = ws(server)
    try:
        handshake(connection.recv())
        connection.send('40/random,')
        assert connection.recv() == '44/random,{"message":"Invalid namespace"}'
        connection.send('40')
        connected = connection.recv()
        assert connected.startswith('40{') and 'sid' in json.loads(connected[2:])
    finally:
        connection.close()


def test_a_long_polling_session_upgrades_to_websocket(server):
    sid = handshake(requests.get(server.url + '/socket.io/?EIO=4&transport=polling',
                                 timeout=10).text)['sid']
    connection = ws(server, f'EIO=4&transport=websocket&sid={sid}')
    try:
        connection.send('2probe')
        assert connection.recv() == '3probe'
        connection.send('5')   # UPGRADE
        connection.send('40')
        # The NOOP that ends a pending poll, PINGs, then the CONNECT's answer.
        while (frame := connection.recv()) in ('6', '2'):
            pass
        assert frame.startswith('40{')
        polling = requests.get(f'{server.url}/socket.io/?EIO=4&transport=polling&sid={sid}',
                               timeout=10)
        assert polling.status_code == 400   # HTTP requests of an upgraded session
    finally:
        connection.close()


class PollingOnConnectionsOfItsOwn:
    """A registered long-polling session whose every request has a TCP connection of its
    own (`Connection: close`), as socket.io-client in Node makes them."""

    CLOSE = {'Connection': 'close'}

    def __init__(self, server, user_id):
        url = server.url + '/socket.io/?EIO=4&transport=polling'
        self.sid = handshake(requests.get(url, headers=self.CLOSE, timeout=10).text)['sid']
        self.url = f'{url}&sid={self.sid}'
        assert server.register(user_id, 'c1').status_code == 200
        self.send('40')
        assert self.poll()[0].startswith('40{')                     # answer 1: CONNECT
        self.send(f'421["register","{user_id}","c1"]')
        asked = time.monotonic()
        assert self.poll() == ['431[{"ok":true}]']                  # answer 2
        self.acknowledged_after = time.monotonic() - asked

    def send(self, payload):
        response = requests.post(self.url, data=payload, headers=self.CLOSE, timeout=10)
        assert response.status_code == 200, response.text

    def poll(self):
        return requests.get(self.url, headers=self.CLOSE, timeout=60).text.split('\x1e')

    def messages_of(self, answer):
        return [json.loads(packet[2:])[1]['n'] for packet in answer
                if packet.startswith('42')]


@pytest.mark.parametrize('gather', [1, 0])
def test_a_stream_to_a_session_polling_on_connections_of_its_own_is_paced(
        start_server, gather):
    # Each such poll costs the client and the worker a TCP connection. While the session
    # is answered back to back, an answer leaves no sooner than LONG_POLL_GATHER after
    # the previous one and carries what came meanwhile; the first two answers after a
    # quiet spell (here the CONNECT and the register's acknowledgement) leave at once.
    # LONG_POLL_GATHER=0 answers every poll at once.
    server = start_server({'LONG_POLL_GATHER': str(gather)})
    session = PollingOnConnectionsOfItsOwn(server, 'paced')
    assert session.acknowledged_after < 0.5
    answers, received = [], threading.Condition()

    def poller():
        while len(sum(answers, [])) < 6:
            answer = session.messages_of(session.poll())
            with received:
                answers.append(answer)
                received.notify_all()

    thread = threading.Thread(target=poller, daemon=True)
    thread.start()
    for n in range(6):
        assert server.push('paced', {'n': n}).status_code == 200
        # The next push once this one reached the client: at once unless it is held
        # (with a gather of 1 s, these waits take half of it at most).
        with received:
            received.wait_for(lambda: n in sum(answers, []), timeout=0.1 if gather else 10)
    thread.join(timeout=10)
    assert sum(answers, []) == list(range(6))
    carrying = [answer for answer in answers if answer]
    if gather:
        assert len(carrying) <= 2, answers   # held for the gather: one answer, or two
    else:
        assert carrying == [[n] for n in range(6)], answers

    # After a quiet spell longer than the gather, a lone notification leaves at once.
    time.sleep(gather + 0.2)
    answer = []
    thread = threading.Thread(target=lambda: answer.extend(session.poll()), daemon=True)
    thread.start()
    pushed = time.monotonic()
    assert server.push('paced', {'n': 6}).status_code == 200
    thread.join(timeout=10)
    assert session.messages_of(answer) == [6] and time.monotonic() - pushed < 0.5


def test_a_long_poll_answer_waits_for_a_lull_of_the_worker_but_no_longer_than_its_bound():
    # transport.Lull: a long-poll answer goes out when the event loop has nothing else
    # pending, so that a busy worker sends what arrived meanwhile in one answer.
    import gevent

    from notification_socketio.transport import Lull
    lull = Lull()
    assert gevent.spawn(lull.wait, 30).get(timeout=30) is True   # idle: the lull, not 30 s
    assert lull.waiting == [] and not lull.watcher.active
    spinning = [True]

    def busy():   # a greenlet always ready to run: no loop turn without something pending
        while spinning[0]:
            gevent.sleep(0)
    spinner = gevent.spawn(busy)
    try:
        assert gevent.spawn(lull.wait, 0.05).get(timeout=30) is False   # the bound, no lull
        assert lull.waiting == []
    finally:
        spinning[0] = False
        spinner.join(timeout=30)
    assert gevent.spawn(lull.wait, 30).get(timeout=30) is True


@pytest.mark.parametrize('protocol, connection, gathers', [
    ('HTTP/1.1', None, False),
    ('HTTP/1.1', 'keep-alive', False),
    ('HTTP/1.1', 'close', True),
    ('HTTP/1.1', 'Upgrade, Close', True),
    ('HTTP/1.0', None, True),
    ('HTTP/1.0', 'Keep-Alive', False),
])
def test_only_a_long_poll_on_a_connection_of_its_own_waits_for_a_lull(
        app, monkeypatch, protocol, connection, gathers):
    # A client that opens a connection for every poll (socket.io-client in Node does)
    # pays a TCP handshake per answer: its answers gather what a busy worker has. A poll
    # on a connection kept alive (a browser's) costs little: it is answered at once.
    from notification_socketio import transport
    waits = []

    class Recording(transport.Lull):
        def wait(self, timeout):
            waits.append(timeout)
            return super().wait(timeout)

    monkeypatch.setattr(transport, '_LULL', Recording())
    headers = {'Connection': connection} if connection else {}
    client = app.test_client()
    # The handshake's answer, the OPEN packet, has nothing to gather; the CONNECT's is
    # a long-poll's answer.
    opened = client.get('/socket.io/?EIO=4&transport=polling', headers=headers,
                        environ_overrides={'SERVER_PROTOCOL': protocol})
    sid = handshake(opened.get_data(as_text=True))['sid']
    assert client.post(f'/socket.io/?EIO=4&transport=polling&sid={sid}',
                       data='40').status_code == 200
    answer = client.get(f'/socket.io/?EIO=4&transport=polling&sid={sid}', headers=headers,
                        environ_overrides={'SERVER_PROTOCOL': protocol})
    assert answer.get_data(as_text=True).startswith('40{"sid":')
    assert waits == ([transport.LULL_WAIT] if gathers else [])
