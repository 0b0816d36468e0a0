"""The benchmark: notification-socketio against its Node.js peer, scenario by scenario.

    python bench/run.py [--rounds 3] [--scenarios S1,S2,S3,S4,S5,BATCH] [--webhook]

Each server (ours: the real `gunicorn wsgi:app`; the peer: `node bench/peer/server.js`) is
pinned to core 0 and the load generator (`node bench/load.js`) to core 1. Every scenario
runs on a fresh server, ours then the peer's, round after round (A B A B ...); the table
gives the median of each figure and the ratio ours/peer. Needs `npm install` in bench/
(the command does it when node_modules is missing). `--webhook` runs ours with
WEBHOOK_URL set, to a receiver in this process that answers 204 (presence events flow).
"""
import argparse
import http.server
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
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
    'S5': {'sessions': 1000, 'batch': 50},
    'BATCH': {'users': 200, 'pushes': 20000, 'perRequest': 100, 'inFlight': 4},
}
DESCRIPTIONS = {
    'S1': '200 users x 1 WebSocket, 20,000 pushes, 32 in flight',
    'S2': '1 user x 2,000 WebSockets, pushes one at a time',
    'S3': '2,000 registered idle WebSockets: memory per session',
    'S4': 'S1 over long-polling, 5,000 pushes',
    'S5': 'open + register 1,000 WebSockets, 50 at a time',
    'BATCH': 'S1 through POST /api/push, 100 users per request',
}
SERVER_CORE, LOAD_CORE = '0', '1'


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


def run_scenario(name, kind, env=None):
    """One scenario on a fresh server of `kind`; returns its figures."""
    server = Server(kind, env=env if kind == 'ours' else None)
    try:
        options = {'scenario': name, 'url': server.url, 'token': TOKEN, **SCENARIOS[name]}
        command = ['taskset', '-c', LOAD_CORE, 'node', str(BENCH / 'load.js'),
                   json.dumps(options)]
        if name == 'S3':
            return measure_memory(server, command)
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f'{name} on {kind}: {result.stderr.strip()[-2000:]}')
        return json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        server.stop()


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
    parser.add_argument('--scenarios', default='S1,S2,S3,S4,S5,BATCH')
    parser.add_argument('--webhook', action='store_true',
                        help='ours with WEBHOOK_URL set (a local receiver)')
    args = parser.parse_args()
    env = start_receiver() if args.webhook else None
    if shutil.which('node') is None:
        sys.exit('bench: node is needed (apt-get install nodejs npm)')
    if not (BENCH / 'node_modules').exists():
        subprocess.run(['npm', 'install', '--no-audit', '--no-fund'], cwd=BENCH, check=True)
    results = {}
    for round_ in range(1, args.rounds + 1):
        for name in args.scenarios.split(','):
            for kind in ('ours', 'peer'):
                if name == 'BATCH' and kind == 'peer':
                    continue   # the original has no batch route
                figures = run_scenario(name, kind, env)
                results.setdefault((name, kind), []).append(figures)
                print(f'round {round_} {name:5} {kind:4} {summary(figures)}', flush=True)
    print()
    if args.webhook:
        print(f'webhook calls received: {_Accept.calls}')
    print_table(results, args.scenarios.split(','))


def summary(figures):
    parts = [f"{figures['rate']:.1f} {figures['unit']}"]
    if 'p99_ms' in figures:
        parts.append(f"p50 {figures['p50_ms']:.1f} ms p99 {figures['p99_ms']:.1f} ms")
    if 'generator_cpu' in figures:
        parts.append(f"generator CPU {figures['generator_cpu']:.0%} of a core")
    return ', '.join(parts)


def median(results, key, field):
    values = [figures[field] for figures in results.get(key, []) if field in figures]
    return statistics.median(values) if values else None


def print_table(results, names):
    print('| scenario | figure | ours | Node.js peer | ours/peer |')
    print('|---|---|---|---|---|')
    for name in names:
        unit = results[(name, 'ours')][0]['unit']
        rows = [(unit, 'rate')]
        if 'p99_ms' in results[(name, 'ours')][0]:
            rows += [('p50 ms', 'p50_ms'), ('p99 ms', 'p99_ms')]
        if 'generator_cpu' in results[(name, 'ours')][0]:
            rows.append(('generator CPU (share of its core)', 'generator_cpu'))
        for label, field in rows:
            ours = median(results, (name, 'ours'), field)
            peer = median(results, (name, 'peer'), field)
            ratio = f'{ours / peer:.2f}x' if peer else ''
            print(f'| {name}: {DESCRIPTIONS[name]} | {label} | {format_value(ours)} | '
                  f'{format_value(peer)} | {ratio} |')


def format_value(value):
    if value is None:
        return 'n/a'
    return f'{value:.2f}' if value < 10 else f'{value:.0f}'


if __name__ == '__main__':
    main()
