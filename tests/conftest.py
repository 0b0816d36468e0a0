"""Shared fixtures: free ports, the real server under gunicorn, real Socket.IO clients."""
import contextlib
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import engineio
import pytest
import requests
import socketio
from prometheus_client.parser import text_string_to_metric_families

from notification_socketio import create_app
from notification_socketio.config import Config

ROOT = Path(__file__).resolve().parent.parent
TOKEN = 'test-token'
TRANSPORTS = ['websocket', 'polling']
# A dead connection is noticed in about two seconds instead of 45.
FAST_HEARTBEAT = {'PING_INTERVAL': '1', 'PING_TIMEOUT': '1'}

# python-socketio's polling client drops the connection on more than 16 packets per poll
# (python-engineio issue 142); the JavaScript client has no such limit.
engineio.payload.Payload.max_decode_packets = 100_000


def free_port():
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout=10.0, interval=0.02, message='condition'):
    """Poll `predicate` until it returns a true value, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout}s waiting for {message}')
        time.sleep(interval)


class ServerProcess:
    """One real `gunicorn wsgi:app` on a free port, with the project's gunicorn.conf.py."""

    def __init__(self, env=None, args=(), port=None, bind=True, preexec_fn=None):
        self.port = port or free_port()
        self.bind = ['--bind', f'127.0.0.1:{self.port}'] if bind else []
        self.url = f'http://127.0.0.1:{self.port}'
        self.env = {**os.environ, 'AUTH_TOKEN': TOKEN, 'PYTHONUNBUFFERED': '1',
                    **(env or {})}
        self.args = list(args)
        self.preexec_fn = preexec_fn   # run in the child before gunicorn starts
        self.process = None
        self.log_path = None

    def start(self, wait=True):
        """Start gunicorn and wait until it answers /api/status/ping."""
        log_dir = ROOT / 'tests' / 'artifacts'
        log_dir.mkdir(parents=True, exist_ok=True)
        # A port may come back for a later server of the same run: one file per server.
        self.log_path = log_dir / f'server-{self.port}-{time.time_ns()}.log'
        self.process = subprocess.Popen(
            [sys.executable, '-m', 'gunicorn', *self.bind, *self.args, 'wsgi:app'],
            cwd=ROOT, env=self.env, stdout=open(self.log_path, 'ab'),
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=self.preexec_fn)
        if wait:
            wait_for(self.answers, timeout=30, message=f'server on port {self.port}')
        return self

    def answers(self):
        """True when the server answers its ping route."""
        if self.process.poll() is not None:
            raise AssertionError(f'server exited with {self.process.returncode}:\n{self.log()}')
        try:
            return requests.get(self.url + '/api/status/ping', timeout=1).text == 'pong'
        except requests.RequestException:
            return False

    def worker_pid(self):
        """The pid of gunicorn's (one) worker."""
        children = Path(f'/proc/{self.process.pid}/task/{self.process.pid}/children')
        return int(wait_for(lambda: children.read_text().split(), message='a worker')[0])

    def rss_kib(self):
        """The worker's resident memory, in KiB."""
        status = Path(f'/proc/{self.worker_pid()}/status').read_text()
        return int(re.search(r'^VmRSS:\s+(\d+) kB', status, re.MULTILINE).group(1))

    def log(self):
        """What the server printed so far."""
        return self.log_path.read_text(errors='replace') if self.log_path else ''

    def kill(self):
        """SIGKILL the master and its worker at once, as a crashed host would lose them."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Signal the server and wait for it to exit; return its exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    # REST helpers, as a backend calls them
    def register(self, user_id, connection_id):
        """PUT /api/{userId}/register; return the response."""
        return requests.put(f'{self.url}/api/{user_id}/register',
                            params={'connectionId': connection_id},
                            headers={'X-AUTH-TOKEN': TOKEN}, timeout=10)

    def push(self, user_id, message):
        """POST /api/{userId}/push with a JSON body; return the response."""
        return requests.post(f'{self.url}/api/{user_id}/push', json={'message': message},
                             headers={'X-AUTH-TOKEN': TOKEN}, timeout=10)

    def sessions(self, user_id):
        """GET /api/{userId}/sessions; insist on 200 and return the body."""
        response = requests.get(f'{self.url}/api/{user_id}/sessions',
                                headers={'X-AUTH-TOKEN': TOKEN}, timeout=10)
        assert response.status_code == 200, (response.status_code, response.text)
        return response.json()

    def metric(self, name, **labels):
        """One sample of the server's /metrics (0.0 when absent)."""
        samples = scrape(lambda path: requests.get(self.url + path, timeout=10))
        return sample_value(samples, name, **labels)

    def pushed_broadcast(self, message):
        """Broadcast, insist on 200, and return the message id."""
        response = requests.post(f'{self.url}/api/broadcast', json={'message': message},
                                 headers={'X-AUTH-TOKEN': TOKEN}, timeout=10)
        assert response.status_code == 200, (response.status_code, response.text)
        return response.json()['id']

    def pushed(self, user_id, message):
        """Push, insist on 200, and return the message id."""
        response = self.push(user_id, message)
        assert response.status_code == 200, (response.status_code, response.text)
        return response.json()['id']


class Listener:
    """A python-socketio client that records every `message` event it receives."""

    def __init__(self, url, transport='websocket', reconnection=False):
        self.url = url
        self.transport = transport
        self.messages = queue.Queue()
        self.arrivals = []   # every message id in the order it arrived, duplicates included
        self.sio = socketio.Client(reconnection=reconnection,
                                   reconnection_delay=0.2, reconnection_delay_max=0.5)
        self.sio.on('message', self._on_message)

    def _on_message(self, message, meta=None):
        self.arrivals.append(meta['id'] if meta else None)
        self.messages.put((message, meta))

    def connect(self):
        """Connect with this listener's transport only."""
        self.sio.connect(self.url, transports=[self.transport], wait_timeout=10)
        return self

    def register(self, user_id, connection_id, *extra):
        """Emit `register` and return its acknowledgement."""
        return self.sio.call('register', (user_id, connection_id, *extra), timeout=10)

    def follow(self, user_id, connection_id, options=None):
        """Connect and claim the registration, and claim it again on every reconnect.

        This is what README's browser snippet does. Each acknowledgement lands in `acks`.
        """
        self.acks = queue.Queue()
        arguments = (user_id, connection_id) + ((options,) if options else ())

        def on_connect():
            self.sio.emit('register', arguments, callback=self.acks.put)
        self.sio.on('connect', on_connect)
        self.connect()
        assert self.next_ack() == {'ok': True}
        return self

    def next_ack(self, timeout=30):
        """The acknowledgement of the next `register` that `follow` emits."""
        try:
            return self.acks.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f'no register acknowledgement within {timeout}s') from None

    def until_received(self, message_ids, timeout=30):
        """Read messages until all of `message_ids` came; return every id seen, first-seen order.

        Duplicates are allowed (delivery is at least once) and not repeated in the result.
        """
        seen, seen_ids, wanted = [], set(), set(message_ids)
        deadline = time.monotonic() + timeout
        while not wanted <= seen_ids:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = [m for m in message_ids if m not in seen]
                raise AssertionError(f'never received {len(missing)} of {len(message_ids)}: '
                                     f'{missing[:5]}...; received {len(seen)}, the last '
                                     f'{seen[-5:]}')
            _, meta = self.get(timeout=remaining)
            if meta['id'] not in seen_ids:
                seen_ids.add(meta['id'])
                seen.append(meta['id'])
        return seen

    def get(self, timeout=10):
        """The next (message, meta) received, or fail after `timeout` seconds."""
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f'no message within {timeout}s') from None

    def received_nothing(self, within=0.5):
        """True if no message arrives within `within` seconds.

        Only ever used after a later message proved the earlier one would have arrived.
        """
        try:
            self.messages.get(timeout=within)
            return False
        except queue.Empty:
            return True

    def close(self):
        """Disconnect, ignoring a connection that is already gone."""
        with contextlib.suppress(Exception):
            self.sio.disconnect()


def scrape(get):
    """{(name, labels): value} of every sample /metrics exposes; `get(path)` fetches it."""
    response = get('/metrics')
    assert response.status_code == 200
    assert response.headers['Content-Type'].startswith('text/plain')
    text = response.get_data(as_text=True) if hasattr(response, 'get_data') else response.text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def sample_value(samples, name, **labels):
    """One sample of what `scrape` returned (0.0 when absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def missing(what):
    """Skip for want of a tool; in CI (CI set), where it must be installed, fail."""
    if os.environ.get('CI'):
        pytest.fail(what)
    pytest.skip(what)


@pytest.fixture(scope='session')
def js_modules():
    """tests/js/node_modules: the official socket.io clients, installed with `npm ci`."""
    directory = ROOT / 'tests' / 'js'
    if not all((directory / 'node_modules' / name).exists() for name in (
            'socket.io-client', 'socket.io-client-v1', 'socket.io-client-v2')):
        if shutil.which('npm') is None:
            missing('npm is needed to install the socket.io client (tests/js/package.json)')
        subprocess.run(['npm', 'ci', '--no-audit', '--no-fund'], cwd=directory, check=True,
                       capture_output=True, timeout=300)
    return directory / 'node_modules'


class RedisServer:
    """A real redis-server on a free port, in its own folder; it can be stopped and restarted."""

    def __init__(self, directory):
        self.binary = shutil.which('redis-server')
        if self.binary is None:
            missing('redis-server is not installed (apt-get install redis-server)')
        self.directory = directory
        self.port = free_port()
        self.url = f'redis://127.0.0.1:{self.port}/0'
        self.process = None

    def start(self, options=()):
        """Start it (with what it saved before, if anything) and wait until it answers."""
        self.process = subprocess.Popen(
            [self.binary, '--port', str(self.port), '--bind', '127.0.0.1', '--save', '',
             '--appendonly', 'no', '--dir', str(self.directory), '--dbfilename', 'dump.rdb',
             '--logfile', str(self.directory / 'redis.log'),
             # A replica syncs at once, not after 5 s of waiting for others.
             '--repl-diskless-sync-delay', '0', *options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.answers, timeout=10, message=f'redis-server on port {self.port}')
        return self

    def client(self):
        import redis
        return redis.Redis.from_url(self.url, socket_timeout=5, decode_responses=True)

    def answers(self):
        """True when it answers PING."""
        try:
            with self.client() as client:
                return client.ping()
        except Exception:
            return False

    def start_replica(self, directory):
        """A redis-server of its own in `directory` replicating this one, in sync."""
        directory.mkdir(parents=True, exist_ok=True)
        replica = RedisServer(directory)
        replica.follow(self)
        return replica

    def follow(self, primary):
        """Start as a replica of `primary` and wait until it is in sync."""
        self.start(['--replicaof', '127.0.0.1', str(primary.port)])
        wait_for(lambda: self.info('replication').get('master_link_status') == 'up',
                 timeout=20, message=f'the replica on port {self.port} in sync')

    def info(self, section):
        with self.client() as client:
            return client.info(section)

    def stop(self, save=False):
        """Stop it; with `save`, what it holds comes back on the next start."""
        if self.process is None or self.process.poll() is not None:
            return
        if save:
            with contextlib.suppress(Exception), self.client() as client:
                client.shutdown(save=True)
        else:
            self.process.kill()
        self.process.wait(timeout=10)


def cluster_shard(user_id):
    """The key prefix of a user's shard on a Cluster, as the server splits its state
    (REDIS_CLUSTER_SHARDS unset): its slot is where the user's keys are."""
    from notification_socketio.state.redis import CLUSTER_SHARDS, shard_number, shard_prefixes
    return shard_prefixes(CLUSTER_SHARDS)[shard_number(user_id, CLUSTER_SHARDS)]


class RedisClusterNodes:
    """A real Redis Cluster: `primaries` redis-servers on free ports, each with `replicas`;
    `options`, more of redis-server's, for every node."""

    def __init__(self, directory, primaries=3, replicas=0, options=()):
        self.nodes = [RedisServer(directory / f'node-{n}')
                      for n in range(primaries * (1 + replicas))]
        self.replicas = replicas
        self.options = list(options)
        hosts = ','.join(f'127.0.0.1:{node.port}' for node in self.nodes[:primaries])
        self.url = f'redis+cluster://{hosts}'

    def start(self):
        for node in self.nodes:
            node.directory.mkdir(parents=True, exist_ok=True)
            # The bus port is given: the default (port + 10000) may not exist.
            node.start(['--cluster-enabled', 'yes', '--cluster-node-timeout', '2000',
                        '--cluster-port', str(free_port()),
                        '--cluster-config-file', str(node.directory / 'nodes.conf'),
                        *self.options])
        made = subprocess.run(
            ['redis-cli', '--cluster', 'create',
             *(f'127.0.0.1:{node.port}' for node in self.nodes),
             '--cluster-replicas', str(self.replicas), '--cluster-yes'],
            capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stdout + made.stderr
        self.created = made.stdout
        wait_for(self.ready, timeout=30, message='the cluster to agree on its slots')
        return self

    def ready(self):
        def ok(node):
            try:
                with node.client() as client:
                    info = client.cluster('info')
                    return info['cluster_state'] == 'ok' and \
                        int(info['cluster_slots_ok']) == 16384
            except Exception:
                return False
        return all(ok(node) for node in self.nodes if node.process.poll() is None) and \
            (not self.replicas or self.replicating())

    def replicating(self):
        """True once a write to each primary reaches a replica (WAIT): a replica that
        says its link is up may not be streaming yet, and one that never was cannot
        take over with the data."""
        with self.client() as cluster:
            for number, node in enumerate(cluster.get_primaries()):
                probe = next(f'probe-{number}-{n}' for n in range(100000)
                             if cluster.get_node_from_key(f'probe-{number}-{n}') == node)
                client = cluster.get_redis_connection(node)
                client.set(probe, '1')
                if client.execute_command('WAIT', 1, 1000) < 1:
                    return False
        return True

    def client(self):
        import redis.cluster
        return redis.cluster.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode('127.0.0.1', node.port)
                           for node in self.nodes if node.process.poll() is None],
            decode_responses=True, socket_timeout=5)

    def primary_of(self, key):
        """The RedisServer that serves `key` now."""
        with self.client() as client:
            port = client.get_node_from_key(key).port
        return next(node for node in self.nodes if node.port == port)

    def flush(self):
        with self.client() as client:
            client.flushall(target_nodes='primaries')

    def stop(self):
        for node in self.nodes:
            node.stop()


class SentinelSet:
    """A real primary with one replica (or more), watched by three Sentinels, all on free
    ports."""

    SERVICE = 'nsio-test'

    def __init__(self, directory, replicas=1):
        self.primary = RedisServer(directory / 'primary')
        self.replicas = [RedisServer(directory / ('replica' if n == 0 else f'replica-{n}'))
                         for n in range(replicas)]
        self.replica = self.replicas[0]
        self.directory = directory
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels = []
        hosts = ','.join(f'127.0.0.1:{port}' for port in self.sentinel_ports)
        self.url = f'redis+sentinel://{hosts}/0/{self.SERVICE}'

    def start(self):
        for server_ in (self.primary, *self.replicas):
            server_.directory.mkdir(parents=True, exist_ok=True)
        self.primary.start()
        for replica in self.replicas:
            replica.start(['--replicaof', '127.0.0.1', str(self.primary.port)])
        for port in self.sentinel_ports:
            config = self.directory / f'sentinel-{port}.conf'
            config.write_text(
                f'port {port}\nbind 127.0.0.1\n'
                f'sentinel monitor {self.SERVICE} 127.0.0.1 {self.primary.port} 2\n'
                f'sentinel down-after-milliseconds {self.SERVICE} 1000\n'
                f'sentinel failover-timeout {self.SERVICE} 5000\n')
            self.sentinels.append(subprocess.Popen(
                [shutil.which('redis-server'), str(config), '--sentinel',
                 '--logfile', str(self.directory / f'sentinel-{port}.log')],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: self.primary_port() == self.primary.port and self.replicated(),
                 timeout=30, message='the Sentinels to see the primary and its replica')
        return self

    def primary_port(self):
        """The port of the primary the Sentinels name now (None if they cannot be asked)."""
        import redis
        for port in self.sentinel_ports:
            try:
                with redis.Redis(port=port, socket_timeout=2, decode_responses=True) as client:
                    found = client.sentinel_get_master_addr_by_name(self.SERVICE)
                    if found:
                        return int(found[1])
            except Exception:
                continue
        return None

    def replicated(self):
        """True once a write to the primary reaches the replicas (WAIT): one that never
        synced cannot take over with the data."""
        try:
            with self.primary.client() as client:
                client.set('probe', '1')
                return client.execute_command('WAIT', len(self.replicas), 1000) \
                    >= len(self.replicas)
        except Exception:
            return False

    def server_on(self, port):
        return next(server_ for server_ in (self.primary, *self.replicas)
                    if server_.port == port)

    def stop(self):
        for process in self.sentinels:
            process.kill()
            process.wait(timeout=10)
        self.primary.stop()
        for replica in self.replicas:
            replica.stop()


@pytest.fixture
def redis_cluster(tmp_path):
    """A three-node Redis Cluster of the test's own."""
    if shutil.which('redis-cli') is None:
        missing('redis-cli is not installed (apt-get install redis-tools)')
    nodes = RedisClusterNodes(tmp_path).start()
    yield nodes
    nodes.stop()


@pytest.fixture
def redis_sentinel(tmp_path):
    """A Redis primary, its replica and three Sentinels of the test's own."""
    sentinels = SentinelSet(tmp_path).start()
    yield sentinels
    sentinels.stop()


@pytest.fixture
def redis_server(tmp_path):
    """A redis-server of the test's own, on a free port."""
    server_ = RedisServer(tmp_path).start()
    yield server_
    server_.stop()


@pytest.fixture(scope='session')
def server():
    """One gunicorn server shared by the tests that do not restart it."""
    process = ServerProcess().start()
    yield process
    process.stop()


@pytest.fixture
def start_server():
    """Start servers with their own environment; all are stopped after the test."""
    started = []

    def start(env=None, args=(), wait=True, port=None, bind=True):
        process = ServerProcess(env=env, args=args, port=port, bind=bind).start(wait=wait)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def proxies():
    """Make TcpProxy instances in front of a port; all are closed after the test."""
    from tcp_proxy import TcpProxy
    made = []

    def make(target_port):
        proxy = TcpProxy(target_port)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


@pytest.fixture
def listeners():
    """Make Listener clients; all are closed after the test."""
    made = []

    def make(url, transport='websocket', reconnection=False):
        listener = Listener(url, transport, reconnection)
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.close()


@pytest.fixture
def app():
    """An app on the in-memory state, for Flask's and Flask-SocketIO's test clients."""
    return create_app(Config.for_testing(auth_tokens=(TOKEN, 'second-token')))


@pytest.fixture
def rest(app):
    """Flask's test client."""
    return app.test_client()


@pytest.fixture
def socket_client(app, rest):
    """Make Flask-SocketIO test clients of `app`."""
    socketio_ = app.extensions['notification_socketio'].socketio

    def make():
        return socketio_.test_client(app, flask_test_client=rest)
    return make


def auth(token=TOKEN):
    """The token header."""
    return {'X-AUTH-TOKEN': token}
