"""Where the memory of an idle session goes: tracemalloc inside the real worker.

    python bench/memory_profile.py [--sessions 1000]

Starts `gunicorn wsgi:app` with tracemalloc on (via a gunicorn hook in a temporary
config), opens idle registered WebSocket sessions with the Node load generator, then asks
the worker (SIGUSR2) to write the allocations that grew, by source line, and prints the top.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from run import TOKEN, Server  # noqa: E402

HOOKS = '''
from notification_socketio.gunicorn_conf import *  # noqa
import signal, tracemalloc, gc
_post_worker_init = post_worker_init

def post_worker_init(worker):
    _post_worker_init(worker)
    tracemalloc.start(8)
    state = {}

    def snapshot(*_):
        gc.collect()
        current = tracemalloc.take_snapshot()
        if 'base' not in state:
            state['base'] = current
            open(%(marker)r, 'w').write('base')
            return
        stats = current.compare_to(state['base'], 'lineno')
        with open(%(report)r, 'w') as out:
            for stat in stats[:40]:
                out.write(str(stat) + '\\n')
            out.write('TOTAL %%d\\n' %% sum(s.size_diff for s in stats))
    signal.signal(signal.SIGUSR2, snapshot)
'''


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--sessions', type=int, default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    marker, report = work / 'base', work / 'report'
    config = work / 'gunicorn_profile.conf.py'
    config.write_text(HOOKS % {'marker': str(marker), 'report': str(report)})
    server = Server('ours', args=['-c', str(config)])
    url = server.url
    try:
        worker = server.serving_pid()
        os.kill(worker, signal.SIGUSR2)
        while not marker.exists():
            time.sleep(0.1)
        options = {'scenario': 'S3', 'url': url, 'token': TOKEN, 'sessions': args.sessions}
        load = subprocess.Popen(['node', str(BENCH / 'load.js'), json.dumps(options)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert load.stdout.readline().strip() == 'READY'
        time.sleep(2)
        os.kill(worker, signal.SIGUSR2)
        while not report.exists() or 'TOTAL' not in report.read_text():
            time.sleep(0.1)
        lines = report.read_text().splitlines()
        for line in lines:
            print(line)
        total = int(lines[-1].split()[1])
        print(f'traced growth per session: {total / args.sessions / 1024:.1f} KiB')
        load.stdin.close()
        load.wait()
    finally:
        server.stop()


if __name__ == '__main__':
    main()
