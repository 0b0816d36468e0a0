"""The long runs behind tests/test_hardening.py's bounded ones: churn, then an idle crowd.

    python bench/soak.py [--cycles 200000] [--sessions 5000] [--hold 300]

Starts `gunicorn wsgi:app` (1 s heartbeat, 1 s lifetimes so that only leaks can grow),
runs `--cycles` connect/register/push/disconnect cycles with the official Node client
(tests/js/crowd.js), printing the worker's memory every tenth of the run against where
it settled after the first 2,000; then holds `--sessions` idle sessions for `--hold`
seconds and prints how many stayed. Needs `npm ci` in tests/js.
"""
import argparse
import json
import subprocess
import sys
import threading
from pathlib import Path


BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from run import TOKEN, Server  # noqa: E402

CROWD = ROOT / 'tests' / 'js' / 'crowd.js'


def crowd(url, **options):
    return subprocess.Popen(['node', str(CROWD), json.dumps({'url': url, 'token': TOKEN,
                                                             **options})],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--cycles', type=int, default=200_000)
    parser.add_argument('--sessions', type=int, default=5000)
    parser.add_argument('--hold', type=float, default=300)
    args = parser.parse_args()
    server = Server('ours', env={'PING_INTERVAL': '1', 'PING_TIMEOUT': '1',
                                 'REGISTRATION_TTL': '1', 'HISTORY_TTL': '1'})
    url, rss_kib = server.url, server.rss_kib
    try:
        churn = crowd(url, mode='churn', cycles=args.cycles, checkpoint=2000, concurrency=20)
        print(churn.stdout.readline().strip())
        settled = rss_kib()
        print(f'settled after 2,000 cycles: {settled} KiB')
        churn.stdin.write('go\n')
        churn.stdin.flush()
        done = threading.Event()
        threading.Thread(target=lambda: (print(churn.stdout.readline().strip()), done.set()),
                         daemon=True).start()
        peak = settled
        while not done.wait(timeout=10):
            now = rss_kib()
            peak = max(peak, now)
            print(f'  {now} KiB ({now / settled:.1%} of settled)', flush=True)
        final = rss_kib()
        print(f'churn: settled {settled} KiB, peak {peak} KiB ({peak / settled:.1%}), '
              f'end {final} KiB ({final / settled:.1%})')

        idle = crowd(url, mode='idle', sessions=args.sessions, holdSeconds=args.hold)
        print(idle.stdout.readline().strip())
        print(f'idle: {rss_kib()} KiB with {args.sessions} sessions')
        print(idle.stdout.readline().strip(), f'after {args.hold:.0f} s of 1 s pings')
        idle.wait()
    finally:
        server.stop()


if __name__ == '__main__':
    main()
