"""Ours on a Redis Cluster: the state in one slot against the state split in shards.

    python bench/cluster.py [--rounds 2] [--shards 1,16]

A three-primary Redis Cluster (tests/conftest.py's: real redis-servers on free ports),
emptied before each run; ours (gunicorn, the gevent worker) on core 0 with REDIS_URL on it
and REDIS_CLUSTER_SHARDS set to each count in turn, round after round (1, 16, 1, 16...);
S1 of bench/run.py (200 users on WebSockets, 20,000 pushes, 32 in flight) from the load
generator on core 1. The redis-servers are not pinned. Printed per count (medians): pushes
delivered per second, p50 and p99, the worker's CPU per push, each primary's CPU per push
(sorted, busiest first) and how the keys lie over the primaries (most first). The Node.js
peer is left out: its Redis adapter on a Cluster is another adapter (sharded), not the one
S1 compares.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / 'tests'))
import conftest  # noqa: E402  (the Cluster)
import run  # noqa: E402  (the server, the generator, S1)


def one_run(cluster, shards):
    cluster.flush()
    server = run.Server('ours', env={'REDIS_URL': cluster.url,
                                     'REDIS_CLUSTER_SHARDS': str(shards)})
    try:
        with cluster.client() as client:
            primaries = [next(node for node in cluster.nodes if node.port == primary.port)
                         for primary in client.get_primaries()]
        pids = [server.serving_pid()] + [node.process.pid for node in primaries]
        before = [run._cpu_seconds(pid) for pid in pids]
        result = subprocess.run(run.load_command('S1', server, **run.SCENARIOS['S1']),
                                capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip()[-2000:])
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        pushes = run.SCENARIOS['S1']['pushes']
        spent = [(run._cpu_seconds(pid) - start) * 1000 / pushes
                 for pid, start in zip(pids, before)]
        keys = []
        for node in primaries:
            with node.client() as client:
                keys.append(client.dbsize())
        return {'rate': figures['rate'], 'p50_ms': figures['p50_ms'],
                'p99_ms': figures['p99_ms'], 'worker_ms': spent[0],
                'primaries_ms': sorted(spent[1:], reverse=True),
                'keys': sorted(keys, reverse=True)}
    finally:
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--shards', default='1,16')
    args = parser.parse_args()
    counts = [int(count) for count in args.shards.split(',')]
    results = {count: [] for count in counts}
    with tempfile.TemporaryDirectory() as directory:
        cluster = conftest.RedisClusterNodes(Path(directory), primaries=3).start()
        try:
            for round_ in range(1, args.rounds + 1):
                for count in counts:
                    figures = one_run(cluster, count)
                    results[count].append(figures)
                    print(f'round {round_} shards {count}: {figures}', flush=True)
                    time.sleep(1)
        finally:
            cluster.stop()
    print(f'\nmedians over {args.rounds} rounds, S1 on a three-primary Redis Cluster')
    print('| REDIS_CLUSTER_SHARDS | pushes/s | p50 ms | p99 ms | worker CPU ms/push '
          '| each primary\'s CPU ms/push | keys on each primary |')
    print('|---|---|---|---|---|---|---|')
    for count, runs in results.items():
        def middle(field):
            return statistics.median(figures[field] for figures in runs)

        def per_primary(field, form):
            return ' / '.join(form.format(statistics.median(figures[field][n]
                                                            for figures in runs))
                              for n in range(3))
        print(f'| {count} | {middle("rate"):,.0f} | {middle("p50_ms"):.1f} | '
              f'{middle("p99_ms"):.1f} | {middle("worker_ms"):.3f} | '
              f'{per_primary("primaries_ms", "{:.3f}")} | {per_primary("keys", "{:,.0f}")} |')


if __name__ == '__main__':
    main()
