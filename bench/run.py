"""The benchmark: notification-socketio against its Node.js peer, scenario by scenario.

    python bench/run.py [--rounds 3] [--scenarios S1,S2,S3,S4,S4K,S5,BATCH,SCALE] [--webhook]
    python bench/run.py --redis [--scenarios S1,S2,BATCH] [--processes 2]
    python bench/run.py --scenarios POLL

Each server (ours: the real `gunicorn wsgi:app`; the peer: `node bench/peer/server.js`) is
pinned to core 0 and the load generator (`node bench/load.js`) to core 1. Every scenario
runs on a fresh server, ours then the peer's, round after round (A B A B ...); the table
gives the median of each figure and the ratio ours/peer. Beside each rate: the
generator's CPU share (a rate whose generator was at 90% of its core or more is a floor,
and its ratio says so) and the server's. Needs `npm install` in bench/
(the command does it when node_modules is missing). `--webhook` runs ours with
WEBHOOK_URL set, to a receiver in this process that answers 204 (presence events flow).
`--redis` starts a redis-server on a free port and gives both servers REDIS_URL: ours
keeps its state there and fans out through it; the peer runs Socket.IO's official Redis
adapter (@socket.io/redis-adapter) with a room per user. `--processes 2` runs two
processes of ours on that Redis behind nginx (deploy/nginx.conf, see `Balanced`); the
peer is left out, since the original keeps each registration in the process that took it
and refuses a socket that the balancer sends to another.

SCALE runs once per size (`--scale-sizes`, default 1000,5000,20000): that many registered
idle WebSockets in one process, then memory per session, how fast they opened (the
first and the last thousand; the server's CPU per session and the generator's share while
opening), one broadcast's arrival at every session (ours: the peer,
like the original, has no broadcast) and S1's pushes while they stay open. It writes
bench/scale.png (matplotlib: `pip install matplotlib`). A size above what the machine's
file-descriptor limit allows one process (the hard `ulimit -n`, less 1,000) is run at that
limit instead, and the table says so.

S4K is S4 with each session's polls on kept-alive connections, as a browser makes them;
socket.io-client in Node (S4) opens a TCP connection for every request.

POLL (part of the default run) keeps 2,000 long-polling sessions open: the worker's CPU
per completed poll and its share of a core, idle for 10 s, then under S4's pushes.
"""
import argparse
import http.server
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TOKEN = 'bench-token'
SCENARIOS = {
    'S1': {'users': 200, 'pushes': 20000, 'inFlight': 32},
    'S2': {'sessions': 2000, 'pushes': 20},
    'S3': {'sessions': 2000},
    'S4': {'users': 200, 'pushes': 5000, 'inFlight': 32},
    'S4K': {'users': 200, 'pushes': 5000, 'inFlight': 32, 'keepAlive': True},
    'S5': {'sessions': 1000, 'batch': 50},
    'BATCH': {'users': 200, 'pushes': 20000, 'perRequest': 100, 'inFlight': 4},
}
DESCRIPTIONS = {
    'S1': '200 users x 1 WebSocket, 20,000 pushes, 32 in flight',
    'S2': '1 user x 2,000 WebSockets, pushes one at a time',
    'S3': '2,000 registered idle WebSockets: memory per session',
    'S4': 'S1 over long-polling, 5,000 pushes',
    'S4K': 'S4, polls on kept-alive connections (as browsers poll)',
    'S5': 'open + register 1,000 WebSockets, 50 at a time',
    'BATCH': 'S1 through POST /api/push, 100 users per request',
}
SERVER_CORE, LOAD_CORE = '0', '1'
SCALE_SIZES = '1000,5000,20000'
# sourceAddresses: the sessions' connections come from 8 loopback addresses (load.js says
# why: from one address, past about 14,000 connections the kernel's port search, in the
# generator, set the opening rate of both servers).
SCALE_LOAD = {'users': 200, 'pushes': 5000, 'inFlight': 32, 'chunk': 1000,
              'sourceAddresses': 8}
SCALE_PLOT = BENCH / 'scale.png'
POLL_LOAD = {'sessions': 2000, 'users': 200, 'pushes': 5000, 'inFlight': 32}
POLL_IDLE_SECONDS = 10


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class Server:
    """One server process, pinned to its core, started fresh for one scenario.

    `env` and gunicorn `args` are added for our server (memory_profile.py, soak.py).
    """

    def __init__(self, kind, env=None, args=()):
        self.kind = kind
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        env = {**os.environ, 'AUTH_TOKEN': TOKEN, 'PORT': str(self.port), **(env or {})}
        if kind == 'ours':
            command = [sys.executable, '-m', 'gunicorn', *args, '--bind',
                       f'127.0.0.1:{self.port}', 'wsgi:app']
        else:
            command = ['node', str(BENCH / 'peer' / 'server.js')]
        self.process = subprocess.Popen(['taskset', '-c', SERVER_CORE, *command], cwd=ROOT,
                                        env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not self._answers():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f'{kind} server did not start')
            time.sleep(0.1)

    def _answers(self):
        try:
            return requests.get(self.url + '/api/status/ping', timeout=1).text == 'pong'
        except requests.RequestException:
            return False

    def serving_pid(self):
        """The process that serves: gunicorn's worker, or node itself."""
        if self.kind == 'peer':
            return self.process.pid
        children = Path(f'/proc/{self.process.pid}/task/{self.process.pid}/children')
        return int(children.read_text().split()[0])

    def rss_kib(self):
        for line in Path(f'/proc/{self.serving_pid()}/status').read_text().splitlines():
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
        raise RuntimeError('no VmRSS')

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Balanced:
    """`processes` servers of one kind behind nginx: deploy/nginx.conf, with one change.

    The generator's connections all come from 127.0.0.1, so `ip_hash` would send every one
    to the same process; here each TCP connection is hashed instead (`hash $remote_addr
    $remote_port consistent`): a WebSocket stays on its process, and the users' sessions
    and the pushes spread over all of them. nginx runs on the servers' core.
    """

    def __init__(self, kind, env, processes):
        sys.path.insert(0, str(ROOT / 'tests'))
        from test_scaleout import NGINX_MAIN   # the suite's nginx main configuration
        binary = shutil.which('nginx') or '/usr/sbin/nginx'
        if not os.path.exists(binary):
            sys.exit('bench: --processes needs nginx (apt-get install nginx)')
        self.servers = [Server(kind, env=env) for _ in range(processes)]
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        self.directory = Path(tempfile.mkdtemp(prefix='bench-nginx-'))
        site = (ROOT / 'deploy' / 'nginx.conf').read_text()
        upstream = ''.join(f'    server 127.0.0.1:{server.port};\n' for server in self.servers)
        site = (site.replace('    server 127.0.0.1:3001;\n    server 127.0.0.1:3002;\n', upstream)
                    .replace('ip_hash;', 'hash $remote_addr$remote_port consistent;')
                    .replace('listen 8080;', f'listen 127.0.0.1:{self.port};'))
        (self.directory / 'site.conf').write_text(site)
        (self.directory / 'nginx.conf').write_text(
            'worker_rlimit_nofile 20000;\n' + NGINX_MAIN.format(prefix=self.directory).replace(
                'worker_connections 1024', 'worker_connections 10000'))
        self.nginx = subprocess.Popen(
            ['taskset', '-c', SERVER_CORE, binary, '-p', str(self.directory), '-c',
             str(self.directory / 'nginx.conf'), '-g', 'daemon off;'],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not self._answers():
            if time.monotonic() > deadline or self.nginx.poll() is not None:
                raise RuntimeError('nginx did not start')
            time.sleep(0.1)

    _answers = Server._answers   # nginx answers /api/status/ping for the servers

    def stop(self):
        self.nginx.terminate()
        self.nginx.wait(timeout=10)
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class _Accept(http.server.BaseHTTPRequestHandler):
    """A webhook receiver that reads each call and answers 204."""

    calls = 0

    def do_POST(self):
        self.rfile.read(int(self.headers['Content-Length']))
        type(self).calls += 1
        self.send_response(204)
        self.send_header('Content-Length', '0')
        self.end_headers()

    def log_message(self, *args):
        pass


def start_receiver():
    """The environment that points ours at a local webhook receiver."""
    receiver = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Accept)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    return {'WEBHOOK_URL': f'http://127.0.0.1:{receiver.server_port}/hooks',
            'WEBHOOK_SECRET': 'bench-webhook-secret-0123456789'}


def start_redis():
    """A redis-server of this run, on a free port, emptied before each scenario."""
    if shutil.which('redis-server') is None:
        sys.exit('bench: --redis needs redis-server (apt-get install redis-server)')
    port = free_port()
    process = subprocess.Popen(['redis-server', '--port', str(port), '--save', '',
                                '--appendonly', 'no'], stdout=subprocess.DEVNULL)
    import atexit
    atexit.register(process.kill)
    url = f'redis://127.0.0.1:{port}/0'
    deadline = time.monotonic() + 10
    while subprocess.run(['redis-cli', '-p', str(port), 'ping'], capture_output=True,
                         text=True).stdout.strip() != 'PONG':
        if time.monotonic() > deadline:
            sys.exit('bench: redis-server did not start')
        time.sleep(0.1)
    return url


def _peer_env(env):
    """What the peer shares of our environment: Redis, not our settings."""
    return {'REDIS_URL': env['REDIS_URL']} if env and 'REDIS_URL' in env else None


PROCESSES = 1   # --processes: servers of each kind behind nginx (with --redis)


def fresh_server(kind, env=None):
    """A server of `kind` for one scenario: ours with `env`, the peer with its Redis only,
    on an emptied Redis when there is one; PROCESSES of them behind nginx if more than one."""
    if env and 'REDIS_URL' in env:
        port = env['REDIS_URL'].rsplit(':', 1)[1].split('/')[0]
        subprocess.run(['redis-cli', '-p', port, 'flushall'], capture_output=True)
    env = env if kind == 'ours' else _peer_env(env)
    return Balanced(kind, env, PROCESSES) if PROCESSES > 1 else Server(kind, env=env)


def load_command(scenario, server, **options):
    """The load generator, on its core, running `scenario` against `server`."""
    options = {'scenario': scenario, 'url': server.url, 'token': TOKEN, **options}
    return ['taskset', '-c', LOAD_CORE, 'node', str(BENCH / 'load.js'), json.dumps(options)]


def run_scenario(name, kind, env=None):
    """One scenario on a fresh server of `kind`; returns its figures.

    Beside the generator's: the serving process's CPU share over the whole run (set-up
    included; one process only), and for S4 the TCP connections the machine accepted per
    push (each long-poll is a connection of its own, for both servers).
    """
    server = fresh_server(kind, env)
    try:
        command = load_command(name, server, **SCENARIOS[name])
        if name == 'S3':
            return measure_memory(server, command)
        pid = server.serving_pid() if isinstance(server, Server) else None
        cpu_before = _cpu_seconds(pid) if pid else None
        accepted_before, started = _accepted_connections(), time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f'{name} on {kind}: {result.stderr.strip()[-2000:]}')
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        if pid:
            figures['server_cpu'] = ((_cpu_seconds(pid) - cpu_before)
                                     / (time.monotonic() - started))
        if name in ('S4', 'S4K'):
            figures['connections_per_push'] = ((_accepted_connections() - accepted_before)
                                               / SCENARIOS[name]['pushes'])
        return figures
    finally:
        server.stop()


def _accepted_connections():
    """TCP connections this machine accepted so far (/proc/net/snmp's PassiveOpens)."""
    header, values = (line.split() for line in Path('/proc/net/snmp').read_text()
                      .splitlines() if line.startswith('Tcp:'))
    return int(values[header.index('PassiveOpens')])


def scale_sizes(requested):
    """The sizes to run, each within this machine's file descriptors for one process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:   # the servers and the generator inherit it
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ceiling = hard - 1000 if hard != resource.RLIM_INFINITY else None
    sizes = []
    for size in map(int, requested.split(',')):
        run_at = min(size, ceiling) if ceiling else size
        sizes.append((size, run_at))
    return sizes


def run_scale(requested, env=None):
    """{(size asked, size run, kind): figures} of every SCALE point."""
    results = {}
    for size, run_at in scale_sizes(requested):
        for kind in ('ours', 'peer'):
            figures = run_scale_point(run_at, kind, env)
            results[(size, run_at, kind)] = figures
            print(f'SCALE {run_at:6} {kind:4} {summary(figures)}, '
                  f"{figures['kib_per_session']:.1f} KiB/session, opened "
                  f"{figures['open_rate']:.0f}/s (first {figures['open_rate_first']:.0f}/s, "
                  f"last {figures['open_rate_last']:.0f}/s)", flush=True)
    return results


def run_scale_point(size, kind, env=None):
    """One SCALE point on a fresh server."""
    server = fresh_server(kind, env)
    try:
        time.sleep(1)
        before = server.rss_kib()
        pid = server.serving_pid()
        cpu_before = _cpu_seconds(pid)
        load = subprocess.Popen(
            load_command('SCALE', server, sessions=size, broadcast=kind == 'ours',
                         **SCALE_LOAD),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ready = load.stdout.readline()
            if not ready.startswith('READY'):
                raise RuntimeError(f'SCALE {size} on {kind}: sessions did not open: '
                                   f'{load.stderr.read()[-2000:]}')
            open_cpu_ms = (_cpu_seconds(pid) - cpu_before) * 1000 / size
            time.sleep(3)   # connections settle, a heartbeat passes
            after = server.rss_kib()
            load.stdin.write('go\n')
            load.stdin.flush()
            figures = json.loads(load.stdout.readline())
        finally:
            load.kill()
            load.wait()
        figures['kib_per_session'] = (after - before) / size
        figures['open_server_ms'] = open_cpu_ms
        return figures
    finally:
        server.stop()


def _cpu_seconds(pid):
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def run_poll(kind, env=None):
    """POLL on a fresh server: the serving process's CPU per poll, idle then under pushes."""
    server = fresh_server(kind, env)
    try:
        load = subprocess.Popen(load_command('POLL', server, **POLL_LOAD),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        pid = server.serving_pid()

        def ask(line):
            load.stdin.write(line + '\n')
            load.stdin.flush()

        try:
            ready = load.stdout.readline()
            if not ready.startswith('READY'):
                raise RuntimeError(f'POLL on {kind}: {load.stderr.read()[-2000:]}')
            ask('count')
            polls_before, cpu_before = int(load.stdout.readline()), _cpu_seconds(pid)
            time.sleep(POLL_IDLE_SECONDS)
            ask('count')
            idle_polls = int(load.stdout.readline()) - polls_before
            idle_cpu = _cpu_seconds(pid) - cpu_before
            cpu_before = _cpu_seconds(pid)
            ask('go')
            figures = json.loads(load.stdout.readline())
            busy_cpu = _cpu_seconds(pid) - cpu_before
        finally:
            load.kill()
            load.wait()
        figures.update({
            'idle_cpu_ms_per_s': 1000 * idle_cpu / POLL_IDLE_SECONDS, 'idle_polls': idle_polls,
            'busy_cpu_share': busy_cpu / figures['seconds'],
            'cpu_ms_per_poll': 1000 * busy_cpu / max(figures['polls'], 1)})
        print(f"POLL {kind:4} {summary(figures)}, {figures['polls']} polls, "
              f"{figures['cpu_ms_per_poll']:.2f} ms of CPU per poll, idle CPU "
              f"{figures['idle_cpu_ms_per_s']:.1f} ms/s", flush=True)
        return figures
    finally:
        server.stop()


def print_poll_table(results):
    print(f"| POLL: {POLL_LOAD['sessions']:,} long-polling sessions | figure | ours | "
          'Node.js peer | ours/peer |')
    print('|---|---|---|---|---|')
    rows = [('idle: server CPU, ms per second', 'idle_cpu_ms_per_s'),
            ('S4 pushes delivered/s while open', 'rate'), ('S4 p99 ms', 'p99_ms'),
            ('polls completed during the pushes', 'polls'),
            ('server CPU during the pushes per completed poll, ms (pushes included)',
             'cpu_ms_per_poll'),
            ('server CPU during the pushes (share of its core)', 'busy_cpu_share'),
            ('generator CPU (share of its core)', 'generator_cpu')]
    for name, field in rows:
        ours, peer = results['ours'].get(field), results['peer'].get(field)
        ratio = ratio_cell(field, ours, peer, results['ours'].get('generator_cpu'),
                           results['peer'].get('generator_cpu'))
        print(f'| sessions open | {name} | {format_value(ours)} | {format_value(peer)} | '
              f'{ratio} |')


def print_scale_table(results):
    print('| SCALE sessions | figure | ours | Node.js peer | ours/peer |')
    print('|---|---|---|---|---|')
    # (row, field, the generator's share that makes the field a floor when saturated)
    rows = [('memory per session, KiB', 'kib_per_session', None),
            ('opened, sessions/s', 'open_rate', 'open_generator_cpu'),
            ('opening: first 1,000, sessions/s', 'open_rate_first', None),
            ('opening: last 1,000, sessions/s', 'open_rate_last', None),
            ('opening: server CPU per session, ms', 'open_server_ms', None),
            ('opening: generator CPU (share of its core)', 'open_generator_cpu', None),
            ('broadcast to all: p50 ms', 'broadcast_p50_ms', None),
            ('broadcast to all: p99 ms', 'broadcast_p99_ms', None),
            ('broadcast: generator CPU (share of its core)', 'broadcast_generator_cpu', None),
            ('S1 while open: pushes delivered/s', 'rate', 'generator_cpu'),
            ('S1 while open: p99 ms', 'p99_ms', None),
            ('generator CPU (share of its core)', 'generator_cpu', None)]
    for size, run_at in sorted({(size, run_at) for size, run_at, _ in results}):
        label = f'{run_at:,}' + ('' if run_at == size else
                                  f' (asked {size:,}: the file-descriptor limit)')
        for name, field, generator in rows:
            ours = results[(size, run_at, 'ours')].get(field)
            peer = results[(size, run_at, 'peer')].get(field)
            ratio = f'{ours / peer:.2f}x' if ours is not None and peer else ''
            if generator:
                ratio += floor_note(results[(size, run_at, 'ours')].get(generator),
                                    results[(size, run_at, 'peer')].get(generator))
            print(f'| {label} | {name} | {format_value(ours)} | {format_value(peer)} | '
                  f'{ratio} |')


def plot_scale(results):
    """bench/scale.png: the curves of SCALE, ours and the peer's."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        from matplotlib import pyplot
    except ImportError:
        print('(no plot: pip install matplotlib)')
        return
    panels = [('memory per session (KiB)', 'kib_per_session'),
              ('S1 while open (pushes/s)', 'rate'), ('S1 while open: p99 (ms)', 'p99_ms'),
              ('broadcast to every session: p99 (ms)', 'broadcast_p99_ms')]
    figure, axes = pyplot.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for axis, (title, field) in zip(axes, panels):
        for kind, style in (('ours', 'o-'), ('peer', 's--')):
            points = sorted((run_at, figures[field])
                            for (_, run_at, k), figures in results.items()
                            if k == kind and field in figures)
            if points:
                axis.plot(*zip(*points), style,
                          label='notification-socketio' if kind == 'ours' else 'Node.js peer')
        axis.set_title(title, fontsize=10)
        axis.set_xlabel('idle WebSocket sessions in one process')
        axis.set_xscale('log')
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(SCALE_PLOT, dpi=110)
    print(f'plot: {SCALE_PLOT}')


def measure_memory(server, command):
    """S3: the server's memory growth per registered idle session."""
    before = server.rss_kib()
    load = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if load.stdout.readline().strip() != 'READY':
            raise RuntimeError('S3: the sessions did not open')
        time.sleep(3)   # let connections settle and a heartbeat pass before measuring
        after = server.rss_kib()
    finally:
        load.stdin.close()
        load.wait(timeout=60)
    sessions = SCENARIOS['S3']['sessions']
    return {'rate': (after - before) / sessions, 'unit': 'KiB/session',
            'before_mib': before / 1024, 'after_mib': after / 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--scenarios', default='S1,S2,S3,S4,S4K,S5,BATCH,SCALE,POLL')
    parser.add_argument('--scale-sizes', default=SCALE_SIZES,
                        help='sessions of each SCALE point (default %(default)s)')
    parser.add_argument('--webhook', action='store_true',
                        help='ours with WEBHOOK_URL set (a local receiver)')
    parser.add_argument('--redis', action='store_true',
                        help='both servers on a redis-server of the run (REDIS rows)')
    parser.add_argument('--processes', type=int, default=1,
                        help='with --redis: that many processes of ours behind nginx')
    args = parser.parse_args()
    if args.processes > 1 and not args.redis:
        parser.error('--processes needs --redis: processes share their state through it')
    global PROCESSES
    PROCESSES = args.processes
    env = start_receiver() if args.webhook else None
    if args.redis:
        if args.scenarios == parser.get_default('scenarios'):
            args.scenarios = 'S1,S2,BATCH'
        env = {**(env or {}), 'REDIS_URL': start_redis()}
    if shutil.which('node') is None:
        sys.exit('bench: node is needed (apt-get install nodejs npm)')
    if not (BENCH / 'node_modules').exists():
        subprocess.run(['npm', 'install', '--no-audit', '--no-fund'], cwd=BENCH, check=True)
    results = {}
    names = args.scenarios.split(',')
    scale, poll = 'SCALE' in names, 'POLL' in names
    names = [name for name in names if name not in ('SCALE', 'POLL')]
    for round_ in range(1, args.rounds + 1):
        for name in names:
            for kind in ('ours', 'peer'):
                if name == 'BATCH' and kind == 'peer':
                    continue   # the original has no batch route
                if PROCESSES > 1 and kind == 'peer':
                    continue   # the original keeps registrations in the process that took
                    # them: a socket balanced to another process is refused
                figures = run_scenario(name, kind, env)
                results.setdefault((name, kind), []).append(figures)
                print(f'round {round_} {name:5} {kind:4} {summary(figures)}', flush=True)
    scale_results = run_scale(args.scale_sizes, env) if scale else None
    poll_results = {kind: run_poll(kind, env) for kind in ('ours', 'peer')} if poll else None
    print()
    if args.redis:
        print('with REDIS_URL: ours on Redis, the peer on @socket.io/redis-adapter' + (
            f'; {PROCESSES} processes of ours behind nginx, no peer' if PROCESSES > 1
            else ''))
    if args.webhook:
        print(f'webhook calls received: {_Accept.calls}')
    if names:
        print_table(results, names)
    if scale_results:
        print()
        print_scale_table(scale_results)
        plot_scale(scale_results)
    if poll_results:
        print()
        print_poll_table(poll_results)


def summary(figures):
    parts = [f"{figures['rate']:.1f} {figures['unit']}"]
    if 'p99_ms' in figures:
        parts.append(f"p50 {figures['p50_ms']:.1f} ms p99 {figures['p99_ms']:.1f} ms")
    if 'generator_cpu' in figures:
        parts.append(f"generator CPU {figures['generator_cpu']:.0%} of a core")
    if 'server_cpu' in figures:
        parts.append(f"server CPU {figures['server_cpu']:.0%}")
    if 'connections_per_push' in figures:
        parts.append(f"{figures['connections_per_push']:.2f} connections per push")
    return ', '.join(parts)


def median(results, key, field):
    values = [figures[field] for figures in results.get(key, []) if field in figures]
    return statistics.median(values) if values else None


#: A generator busier than this share of its core is saturated: the rate it measured is
#: a floor of what the server could do.
SATURATED = 0.9
_EXTRA_ROWS = (('generator_cpu', 'generator CPU (share of its core)'),
               ('server_cpu', 'server CPU (share of its core, set-up included)'),
               ('connections_per_push', 'TCP connections accepted per push'))


def print_table(results, names):
    print('| scenario | figure | ours | Node.js peer | ours/peer |')
    print('|---|---|---|---|---|')
    for name in names:
        unit = results[(name, 'ours')][0]['unit']
        rows = [(unit, 'rate')]
        if 'p99_ms' in results[(name, 'ours')][0]:
            rows += [('p50 ms', 'p50_ms'), ('p99 ms', 'p99_ms')]
        rows += [(label, field) for field, label in _EXTRA_ROWS
                 if field in results[(name, 'ours')][0]]
        for label, field in rows:
            ours = median(results, (name, 'ours'), field)
            peer = median(results, (name, 'peer'), field)
            ratio = ratio_cell(field, ours, peer,
                               median(results, (name, 'ours'), 'generator_cpu'),
                               median(results, (name, 'peer'), 'generator_cpu'))
            print(f'| {name}: {DESCRIPTIONS[name]} | {label} | {format_value(ours)} | '
                  f'{format_value(peer)} | {ratio} |')


def ratio_cell(field, ours, peer, ours_generator, peer_generator):
    """A row's ours/peer cell; a rate's says so when a saturated generator made it a floor."""
    ratio = f'{ours / peer:.2f}x' if ours is not None and peer else ''
    return ratio + floor_note(ours_generator, peer_generator) if field == 'rate' else ratio


def floor_note(ours, peer):
    """What a saturated generator makes of a rate's ratio: '' when neither was."""
    saturated = [who for who, share in (('ours', ours), ('the peer', peer))
                 if share is not None and share >= SATURATED]
    if not saturated:
        return ''
    return (f" (floor: the generator was saturated against {' and '.join(saturated)}, "
            f"at {SATURATED:.0%} of its core or more)")


def format_value(value):
    if value is None:
        return 'n/a'
    return f'{value:.2f}' if value < 10 else f'{value:.0f}'


if __name__ == '__main__':
    main()
