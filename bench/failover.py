"""Failover of the Redis primary during pushes: what is lost, what is replayed, how long.

    python bench/failover.py [--topology sentinel,cluster] [--rounds 3] [--wait-replicas 1]
                             [--no-full-coverage]

Per round: a fresh topology (`sentinel`: a primary, its replica and three Sentinels;
`cluster`: three primaries with a replica each; with `--wait-replicas N`, the server runs
with REDIS_WAIT_REPLICAS=N and each primary has N + 1 replicas, so that N are left to
confirm pushes after the failover), one server process (gunicorn, the gevent worker) on
it, 20 users with a live WebSocket each and 20 registered users with none ("away"). Four
threads push round-robin to all 40 users; 3 s in, the primary holding the state is killed
(SIGKILL; on a Cluster, the primary of user-0's shard: the users of the shards it served
are the ones affected); pushing goes on until 3 s after pushes succeed again. Then the
away users connect and claim their registrations: what they get is the history's replay.

Printed per topology (medians over rounds): pushes answered 200 / 503 / 504, the users
affected, pushes to the others that failed, the outage (from the first failed push to an
affected user to the first sent after it that succeeded), messages answered
200 that a live socket never received, messages answered 200 that an away user's replay
lacked (lost with the primary: written there, not yet on the replica), and the messages
received that no 200 answered for (504s that had been made, or 503s that had not); each
round's line also gives the first error message of each status. The
topologies are the test suite's (tests/conftest.py): real redis-servers on free ports.
"""
import argparse
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tests'))
import conftest  # noqa: E402  (the topologies, the server process, the listener)

ONLINE = AWAY = 20
PUSHERS = 4


def start_topology(kind, directory, replicas, full_coverage=True):
    if kind == 'sentinel':
        topology = conftest.SentinelSet(directory, replicas=replicas).start()
        return topology, lambda: topology.server_on(topology.primary_port())
    topology = conftest.RedisClusterNodes(
        directory, primaries=3, replicas=replicas,
        options=() if full_coverage else ['--cluster-require-full-coverage', 'no']).start()
    return topology, lambda: topology.primary_of(conftest.cluster_shard('user-0'))


def one_round(kind, directory, wait_replicas=0, full_coverage=True):
    # A replica more than the pushes wait for: after the failover, one is left to confirm.
    topology, primary = start_topology(kind, directory, wait_replicas + 1, full_coverage)
    server = conftest.ServerProcess(env={'REDIS_URL': topology.url,
                                         'REDIS_WAIT_REPLICAS': str(wait_replicas),
                                         # Every push of the run stays in the history:
                                         # what a replay lacks was lost, not trimmed.
                                         'HISTORY_SIZE': '100000',
                                         **conftest.FAST_HEARTBEAT}).start()
    listeners = []
    try:
        users = [f'user-{n}' for n in range(ONLINE + AWAY)]
        for user in users:
            assert server.register(user, 'tab').status_code == 200
        for user in users[:ONLINE]:
            listener = conftest.Listener(server.url, 'websocket', reconnection=True)
            listeners.append(listener.follow(user, 'tab'))
        answers, stop = [], threading.Event()   # (answered, status, user, id, sent)
        errors = {}   # the first error message of each status

        def push(offset):
            session = requests.Session()
            n = offset
            while not stop.is_set():
                user = users[n % len(users)]
                started = time.monotonic()
                try:
                    response = session.post(
                        f'{server.url}/api/{user}/push', json={'message': n},
                        headers={'X-AUTH-TOKEN': conftest.TOKEN}, timeout=30)
                    status = response.status_code
                    found = response.json().get('id') if status == 200 else None
                    if status != 200:
                        errors.setdefault(status, response.json().get('error'))
                except requests.RequestException:
                    status, found = 'error', None
                answers.append((time.monotonic(), status, user, found, started))
                n += PUSHERS

        pushers = [threading.Thread(target=push, args=(n,)) for n in range(PUSHERS)]
        for thread in pushers:
            thread.start()
        victim = primary()
        affected = set(users) if kind == 'sentinel' else {
            user for user in users
            if topology.primary_of(conftest.cluster_shard(user)) is victim}
        time.sleep(3)
        killed_at = time.monotonic()
        victim.process.send_signal(signal.SIGKILL)
        conftest.wait_for(lambda: back_after(answers, first_failure(answers, killed_at,
                                                                    affected), affected),
                          timeout=120, message='pushes to succeed again')
        time.sleep(3)
        stop.set()
        for thread in pushers:
            thread.join()

        kept = {}
        for _, status, user, found, _ in answers:
            if status == 200:
                kept.setdefault(user, []).append(found)
        lost = {'live': 0, 'history': 0}
        made_unconfirmed = 0
        for n, user in enumerate(users):
            if n >= ONLINE:   # away until now: what it gets is the history's replay
                listener = conftest.Listener(server.url, 'websocket')
                listeners.append(listener.follow(user, 'tab'))
            expected = set(kept.get(user, []))
            received = drain(listeners[n], expected)
            lost['live' if n < ONLINE else 'history'] += len(expected - received)
            made_unconfirmed += len(received - expected)
        statuses = [status for _, status, _, _, _ in answers]
        failure = first_failure(answers, killed_at, affected)
        back = back_after(answers, failure, affected)
        return {'200': statuses.count(200), '503': statuses.count(503),
                '504': statuses.count(504),
                'other': len(statuses) - sum(statuses.count(s) for s in (200, 503, 504)),
                'affected': len(affected),
                'others_failed': sum(1 for _, status, user, _, _ in answers
                                     if status != 200 and user not in affected),
                'outage_s': back - failure, 'lost_live': lost['live'],
                'lost_history': lost['history'], 'made_unconfirmed': made_unconfirmed,
                'errors': errors}
    finally:
        for listener in listeners:
            listener.close()
        server.stop()
        topology.stop()


def first_failure(answers, after, users):
    """When the first push to one of `users` failed after `after`."""
    return min((t for t, s, user, *_ in answers if t > after and s != 200 and user in users),
               default=float('inf'))


def back_after(answers, failure, users):
    """When a push to one of `users` made after `failure` first succeeded (None: not yet).
    A push made before it may still be answered 200 after it: its script ran before the
    primary died."""
    return min((t for t, s, user, _, started in answers
                if started > failure and s == 200 and user in users), default=None)


def drain(listener, expected, quiet=2.0):
    """Every id the listener got: until all expected came, or nothing came for `quiet` s."""
    received, wanted = set(), set(expected)
    while not wanted <= received:
        try:
            _, meta = listener.messages.get(timeout=quiet)
        except Exception:
            break
        received.add(meta['id'])
    while True:   # whatever else is on its way
        try:
            received.add(listener.messages.get(timeout=0.5)[1]['id'])
        except Exception:
            return received


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--topology', default='sentinel,cluster')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--wait-replicas', type=int, default=0,
                        help='REDIS_WAIT_REPLICAS for the server (the topology gets one '
                             'replica more per primary)')
    parser.add_argument('--no-full-coverage', action='store_true',
                        help="the Cluster's nodes with cluster-require-full-coverage no: the "
                             "slots that keep a primary are served while one has none")
    args = parser.parse_args()
    import tempfile
    rows = {}
    for kind in args.topology.split(','):
        for n in range(args.rounds):
            with tempfile.TemporaryDirectory() as directory:
                figures = one_round(kind, Path(directory), args.wait_replicas,
                                    not args.no_full_coverage)
            print(f'{kind} round {n + 1}: {figures}', flush=True)
            rows.setdefault(kind, []).append(figures)
    fields = ['200', '503', '504', 'other', 'affected', 'others_failed', 'outage_s',
              'lost_live', 'lost_history', 'made_unconfirmed']
    print('\nmedians over', args.rounds, 'rounds')
    print('| topology | ' + ' | '.join(fields) + ' |')
    print('|---' * (len(fields) + 1) + '|')
    for kind, results in rows.items():
        values = [statistics.median(result[field] for result in results) for field in fields]
        print(f'| {kind} | ' + ' | '.join(f'{v:.1f}' if isinstance(v, float) else str(v)
                                          for v in values) + ' |')


if __name__ == '__main__':
    main()
