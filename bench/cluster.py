"""Ours on a Redis Cluster: the state in one slot against the state split in shards, and
the Node.js peer on the same Cluster.

    python bench/cluster.py [--rounds 2] [--shards 1,16] [--no-peer]

A three-primary Redis Cluster (tests/conftest.py's: real redis-servers on free ports),
emptied before each run; ours (gunicorn, the gevent worker) on core 0 with REDIS_URL on it
and REDIS_CLUSTER_SHARDS set to each count in turn, round after round (1, 16, 1, 16...);
S1 of bench/run.py (200 users on WebSockets, 20,000 pushes, 32 in flight) from the load
generator on core 1. The redis-servers are not pinned. Printed per count (medians): pushes
delivered per second, p50 and p99, the worker's CPU per push, each primary's CPU per push
(sorted, busiest first) and how the keys lie over the primaries (most first). The Node.js
peer (bench/peer/server.js) runs in each round too, with the sharded form of Socket.IO's
Redis adapter (`createShardedAdapter`, a shard channel per user room) on a cluster client of
the `redis` package: the way its documentation runs Socket.IO on a Redis Cluster. It keeps
nothing in Redis and only publishes, where ours keeps each push (history, id, record); the
ratios compare each count of ours with it.
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


PEER = 'peer'


def one_run(cluster, shards):
    """S1 against ours with `shards` (or against the peer, shards == PEER)."""
    cluster.flush()
    if shards == PEER:
        nodes = ','.join(f'redis://127.0.0.1:{node.port}' for node in cluster.nodes)
        server = run.Server('peer', env={'REDIS_CLUSTER_NODES': nodes})
    else:
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
    parser.add_argument('--no-peer', action='store_true', help='ours only')
    args = parser.parse_args()
    counts = [int(count) for count in args.shards.split(',')] + ([] if args.no_peer else [PEER])
    results = {count: [] for count in counts}
    with tempfile.TemporaryDirectory() as directory:
        cluster = conftest.RedisClusterNodes(Path(directory), primaries=3).start()
        try:
            for round_ in range(1, args.rounds + 1):
                for count in counts:
                    figures = one_run(cluster, count)
                    results[count].append(figures)
                    print(f'round {round_} {_name(count)}: {figures}', flush=True)
                    time.sleep(1)
        finally:
            cluster.stop()
    print(f'\nmedians over {args.rounds} rounds, S1 on a three-primary Redis Cluster')
    print('| server | pushes/s | p50 ms | p99 ms | worker CPU ms/push '
          '| each primary\'s CPU ms/push | keys on each primary |')
    print('|---|---|---|---|---|---|---|')
    for count, runs in results.items():
        def middle(field, runs=runs):
            return _middle(runs, field)

        def per_primary(field, form):
            return ' / '.join(form.format(statistics.median(figures[field][n]
                                                            for figures in runs))
                              for n in range(3))
        print(f'| {_name(count)} | {middle("rate"):,.0f} | {middle("p50_ms"):.1f} | '
              f'{middle("p99_ms"):.1f} | {middle("worker_ms"):.3f} | '
              f'{per_primary("primaries_ms", "{:.3f}")} | {per_primary("keys", "{:,.0f}")} |')
    if PEER in results:
        peer = {field: _middle(results[PEER], field) for field in ('rate', 'p50_ms', 'p99_ms')}
        print('\nours / the peer (medians): ' + '; '.join(
            f'{_name(count)}: rate {_middle(runs, "rate") / peer["rate"]:.2f}x, '
            f'p50 {_middle(runs, "p50_ms") / peer["p50_ms"]:.2f}x, '
            f'p99 {_middle(runs, "p99_ms") / peer["p99_ms"]:.2f}x'
            for count, runs in results.items() if count != PEER))


def _middle(runs, field):
    return statistics.median(figures[field] for figures in runs)


def _name(count):
    return ('Node.js peer (sharded adapter)' if count == PEER
            else f'ours, REDIS_CLUSTER_SHARDS={count}')


if __name__ == '__main__':
    main()
