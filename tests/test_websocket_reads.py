"""What a client sends on a WebSocket, read from the event loop, against the real server.

Once a session is on WebSocket, no greenlet waits for its client: a read watcher wakes one
when bytes arrive, and wsproto puts the frames together however the network cut them
(transport.py). These cases cut, fragment, mix and break frames as networks and clients
do, and check that each is read as the protocol (RFC 6455) says.
"""
import json
import socket
import time

import pytest
import requests
import websocket
from websocket import ABNF

from conftest import wait_for


@pytest.fixture(scope='module')
def server():
    from conftest import ServerProcess
    process = ServerProcess().start()
    yield process
    process.stop()


def opened(server, query='EIO=4&transport=websocket'):
    connection = websocket.create_connection(
        server.url.replace('http', 'ws') + '/socket.io/?' + query, timeout=10)
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def handshake(connection):
    packet = connection.recv()
    assert packet.startswith('0{'), packet
    return json.loads(packet[1:])


def polling_sid(server):
    """A new long-polling session's sid."""
    return json.loads(requests.get(server.url + '/socket.io/?EIO=4&transport=polling',
                                   timeout=10).text[1:])['sid']


def frame(data, opcode=ABNF.OPCODE_TEXT, fin=1):
    """A frame as a client sends it (masked)."""
    return ABNF.create_frame(data, opcode, fin).format()


def assert_connected(connection):
    while (packet := connection.recv()) == '2':   # a PING may come first
        connection.send('3')
    assert packet.startswith('40{'), packet


def assert_ended(connection):
    """The server closed the connection (after a close frame, if any)."""
    connection.sock.settimeout(10)
    received = b''
    try:
        while chunk := connection.sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def test_an_idle_websocket_runs_no_reader_greenlet(start_server):
    server = start_server()
    connection = opened(server)
    try:
        handshake(connection)
        connection.send('40')
        assert_connected(connection)
        wait_for(lambda: server.metric('nsio_websockets_parked') == 1,
                 message='the WebSocket read from the event loop')
        connection.send('421["nothing"]')   # whole frames: decoded without wsproto
        assert connection.recv().startswith('431[{"ok":false')
        assert server.metric('nsio_websockets_wsproto') == 0
        assert 'idle WebSockets read by the event loop' in server.log()
    finally:
        connection.close()
    wait_for(lambda: server.metric('nsio_sockets_connected') == 0,
             message='the session gone with its connection')
    assert server.metric('nsio_websockets_parked') == 0


def test_a_frame_cut_into_single_bytes_is_read_whole(server):
    connection = opened(server)
    try:
        handshake(connection)
        for byte in frame('40'):
            connection.sock.sendall(bytes([byte]))
            time.sleep(0.005)   # pacing, so that the server's reads see a frame in parts
        assert_connected(connection)
    finally:
        connection.close()


def test_a_fragmented_message_with_a_ping_between_its_fragments_is_put_together(server):
    connection = opened(server)
    try:
        handshake(connection)
        connection.sock.sendall(frame('4', fin=0))
        connection.sock.sendall(frame(b'between', ABNF.OPCODE_PING))
        connection.sock.sendall(frame('0', ABNF.OPCODE_CONT))
        pong = connection.recv_data_frame(control_frame=True)
        assert (pong[0], pong[1].data) == (ABNF.OPCODE_PONG, b'between')
        assert_connected(connection)
        assert server.metric('nsio_websockets_wsproto') >= 1   # its frames, from now on
        connection.send('42["nothing"]')
        connection.ping(b'again')
        pong = connection.recv_data_frame(control_frame=True)
        assert (pong[0], pong[1].data) == (ABNF.OPCODE_PONG, b'again')
    finally:
        connection.close()


def test_frames_sent_with_the_upgrade_in_one_write_are_all_read(server):
    # The handshake's reader may have read past the UPGRADE packet: what it read is
    # handed over with the connection.
    sid = polling_sid(server)
    connection = opened(server, f'EIO=4&transport=websocket&sid={sid}')
    try:
        connection.send('2probe')
        assert connection.recv() == '3probe'
        connection.sock.sendall(frame('5') + frame('40') + frame('42["nothing"]'))
        while (packet := connection.recv()) == '6':   # the NOOP that ends the poll
            pass
        assert packet.startswith('40{'), packet
    finally:
        connection.close()


def test_a_close_frame_is_answered_and_ends_the_session(server):
    connection = opened(server)
    handshake(connection)
    connection.send_close(1000, b'bye')
    received = assert_ended(connection)
    # The server's close frame, status and reason echoed (a server does not mask).
    assert received.endswith(b'\x88\x05\x03\xe8bye'), received


def test_an_unmasked_frame_is_refused_with_a_protocol_error(server):
    connection = opened(server)
    handshake(connection)
    connection.sock.sendall(b'\x81\x0240')   # a client must mask its frames
    received = assert_ended(connection)
    assert b'\x88' in received and received[received.index(b'\x88') + 2:][:2] == b'\x03\xea'


def send_fragmented(connection, size):
    """A text message of `size` bytes (an Engine.IO NOOP: ignored), in fragments."""
    chunk = 65536
    sizes = [chunk] * (size // chunk) + ([size % chunk] if size % chunk else [])
    for n, part in enumerate(sizes):
        text = ('6' + 'x' * (part - 1)) if n == 0 else 'x' * part
        connection.sock.sendall(frame(text, ABNF.OPCODE_TEXT if n == 0 else
                                      ABNF.OPCODE_CONT, fin=int(n == len(sizes) - 1)))


def test_a_message_over_max_payload_drops_the_connection(server):
    connection = opened(server)
    limit = handshake(connection)['maxPayload']
    send_fragmented(connection, limit)   # at the limit: read, and ignored
    connection.send('40')
    assert_connected(connection)
    try:
        send_fragmented(connection, limit + 1)
    except OSError:
        pass   # dropped while it was still sending
    assert_ended(connection)


def test_a_text_frame_that_is_not_utf8_is_refused_with_its_close_code(server):
    connection = opened(server)
    handshake(connection)
    connection.sock.sendall(frame(b'42["\xff"]'))   # whole, short, text: all but UTF-8
    received = assert_ended(connection)
    assert b'\x88' in received and received[received.index(b'\x88') + 2:][:2] == b'\x03\xef'


def wsproto_texts(data):
    """What wsproto makes of `data` from a client: its whole text messages, or None when
    it makes anything else of it (a fragment, another event, a part still to come)."""
    import wsproto
    from wsproto import events
    connection = wsproto.Connection(wsproto.ConnectionType.SERVER)
    connection.receive_data(data)
    texts = []
    for event in connection.events():
        if not (isinstance(event, events.TextMessage) and event.message_finished
                and event.frame_finished):
            return None
        texts.append(event.data)
    connection.receive_data(frame('6'))   # nothing of `data` may be left half-read
    tail = list(connection.events())
    if len(tail) != 1 or getattr(tail[0], 'data', None) != '6':
        return None
    return texts


def random_client_frame(rng):
    """One frame as clients send them, or as broken and unusual ones come."""
    text = rng.choice(['3', '40', '42["register","u","c"]', '', 'é€😀' * rng.randint(1, 40),
                       'x' * rng.choice([124, 125, 126, 127, 300, 65535, 65536, 70000])])
    payload = text.encode()
    opcode, fin = ABNF.OPCODE_TEXT, 1
    kind = rng.random()
    if kind < 0.06:
        payload = payload[:-1] + b'\xff' if payload else b'\xc3'   # not UTF-8
    elif kind < 0.12:
        opcode = rng.choice([ABNF.OPCODE_BINARY, ABNF.OPCODE_PING, ABNF.OPCODE_PONG,
                             ABNF.OPCODE_CLOSE, ABNF.OPCODE_CONT])
        payload = payload[:125] if opcode >= 8 else payload
    elif kind < 0.16:
        fin = 0
    data = bytearray(ABNF(fin, 0, 0, 0, opcode, 1, payload).format())
    kind = rng.random()
    if kind < 0.03:
        data[0] |= rng.choice([0x40, 0x20, 0x10])   # an extension bit, none negotiated
    elif kind < 0.04:
        data[0] = (data[0] & 0xf0) | rng.choice([3, 7, 11])   # a reserved opcode
    elif kind < 0.08:   # unmasked
        data[1] &= 0x7f
        data = data[:2 + {126: 2, 127: 8}.get(data[1], 0)] + payload
    elif kind < 0.12 and len(payload) <= 125:   # its length in two bytes, not one
        data = bytes([data[0], 0x80 | 126]) + len(payload).to_bytes(2, 'big') + data[2:]
    return bytes(data)


def test_whole_text_frames_are_decoded_exactly_as_wsproto_decodes_them():
    import random
    from notification_socketio.transport import whole_text_frames
    rng = random.Random(6455)
    decoded = 0
    for _ in range(3000):
        data = b''.join(random_client_frame(rng) for _ in range(rng.randint(1, 4)))
        if rng.random() < 0.2:
            data = data[:rng.randrange(1, len(data) + 1)]   # as the network may cut it
        texts = whole_text_frames(data)
        if texts is not None:   # else wsproto decodes it, as before
            assert texts == wsproto_texts(data), data[:80]
            decoded += 1
    assert decoded > 1000   # the usual frames are not all left to wsproto


def test_what_clients_usually_send_is_decoded_without_wsproto():
    from notification_socketio.transport import whole_text_frames
    usual = ['3', '40', '42["register","user-42","c1",{"since":"1-0"}]', '430[{"ok":true}]',
             '42["x",' + '"y"' * 100 + ']', 'é' * 30_000]
    for text in usual:
        assert whole_text_frames(frame(text)) == [text]
    assert whole_text_frames(frame('3') + frame('40')) == ['3', '40']


def upgrade_request(server, query):
    connection = socket.create_connection(('127.0.0.1', server.port), timeout=10)
    connection.sendall(f'GET /socket.io/?{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n'
                       'Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n'
                       'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n'.encode())
    return connection


def test_a_new_websocket_gets_its_101_and_open_packet_together(server):
    # One segment: the client wakes once for both (the 101 alone would wake it first).
    connection = upgrade_request(server, 'EIO=4&transport=websocket')
    try:
        first = connection.recv(65536)
        assert first.startswith(b'HTTP/1.1 101 '), first
        assert b'\r\n\r\n\x81' in first and b'"sid"' in first, first
    finally:
        connection.close()


def test_an_upgrade_from_long_polling_gets_its_101_before_the_probe(server):
    # Here the server's next frame answers the client's probe, which waits for the 101.
    sid = polling_sid(server)
    connection = upgrade_request(server, f'EIO=4&transport=websocket&sid={sid}')
    try:
        head = connection.recv(65536)
        assert head.startswith(b'HTTP/1.1 101 ') and head.endswith(b'\r\n\r\n'), head
        connection.sendall(frame('2probe'))
        assert connection.recv(65536) == b'\x81\x063probe'
    finally:
        connection.close()
