"""A small TCP proxy that cuts and black-holes connections, for the recovery tests.

It stands between clients and a server (or plays a load balancer that moves to another
server): `cut()` resets every connection at once, `blackhole()` swallows all traffic
both ways without closing anything (as a dead NAT or a pulled cable does), `mute()`
swallows only the answers (a server that hangs after reading a request), `restore()`
ends that, and `retarget(port)` sends new connections elsewhere.
"""
import socket
import struct
import threading


def _reset(sock):
    """Close with a TCP reset, as a dropped connection looks to the peer."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    except OSError:
        pass
    sock.close()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target_port>."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.listener = socket.create_server(('127.0.0.1', 0))
        self.port = self.listener.getsockname()[1]
        self.url = f'http://127.0.0.1:{self.port}'
        self.blackholed = False
        self.muted = False
        self.lock = threading.Lock()
        self.pairs = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                blackholed = self.blackholed
                target_port = self.target_port
            upstream = None
            if not blackholed:
                try:
                    upstream = socket.create_connection(('127.0.0.1', target_port), timeout=5)
                    upstream.settimeout(None)
                except OSError:
                    _reset(client)
                    continue
            pair = {'client': client, 'upstream': upstream, 'blackholed': blackholed,
                    'muted': self.muted}
            with self.lock:
                self.pairs.append(pair)
            threading.Thread(target=self._pump, args=(pair, 'client', 'upstream'),
                             daemon=True).start()
            if upstream is not None:
                threading.Thread(target=self._pump, args=(pair, 'upstream', 'client'),
                                 daemon=True).start()

    def _pump(self, pair, source, destination):
        while True:
            try:
                data = pair[source].recv(65536)
            except OSError:
                data = b''
            if not data:
                break
            if source == 'client' and b'SUBSCRIBE' in data.upper():
                pair['subscriber'] = True
            if pair['blackholed'] or (pair['muted'] and source == 'upstream'):
                continue   # swallowed: the sender never learns
            try:
                pair[destination].sendall(data)
            except OSError:
                break
        self._drop(pair)

    def _drop(self, pair):
        with self.lock:
            if pair not in self.pairs:
                return
            self.pairs.remove(pair)
        for side in ('client', 'upstream'):
            if pair[side] is not None:
                _reset(pair[side])

    def cut(self):
        """Reset every open connection (new ones are let through)."""
        with self.lock:
            pairs = list(self.pairs)
        for pair in pairs:
            self._drop(pair)

    def blackhole(self):
        """Swallow every byte both ways, on open connections and new ones alike."""
        with self.lock:
            self.blackholed = True
            for pair in self.pairs:
                pair['blackholed'] = True

    def mute(self):
        """Pass what clients send, swallow every answer: a server that works but never replies."""
        with self.lock:
            self.muted = True
            for pair in self.pairs:
                pair['muted'] = True

    def mute_subscribers(self):
        """Swallow the answers on the connections that subscribed (pub/sub), only: they
        stay open and silent while the other connections work."""
        with self.lock:
            for pair in self.pairs:
                if pair.get('subscriber'):
                    pair['muted'] = True

    def restore(self):
        """Let new connections through again; the black-holed ones stay dead and are reset."""
        with self.lock:
            self.blackholed = self.muted = False
            dead = [pair for pair in self.pairs if pair['blackholed'] or pair['muted']]
        for pair in dead:
            self._drop(pair)

    def retarget(self, target_port):
        """Send new connections to another server."""
        with self.lock:
            self.target_port = target_port

    def close(self):
        """Stop listening and reset everything."""
        self.closed = True
        self.listener.close()
        self.cut()
