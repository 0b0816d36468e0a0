"""Connecting to Redis by URL: one server, a Sentinel set, or a Cluster.

- `redis://` and `rediss://` (TLS): one server, as redis-py's `Redis.from_url` reads it.
- `redis+sentinel://[user:password@]host:port[,host:port...]/db/service`: the primary that
  the Sentinels name for `service`, found again after a failover. The format is
  python-socketio's (its RedisManager reads the same URL); `rediss+sentinel://` connects
  to the primary over TLS.
- `redis+cluster://[user:password@]host:port[,host:port...]` (`rediss+cluster://`): a Redis
  Cluster, found from any of the nodes given.

On a Cluster the state is split in shards, each with its keys in one hash slot
(state/redis.py says why), and each process subscribes to a shard's messages on the node
that serves its slot.
"""
from urllib.parse import unquote, urlsplit

import redis
import redis.cluster
import redis.sentinel
from socketio.redis_manager import parse_redis_sentinel_url

SCHEMES = ('redis', 'rediss', 'redis+sentinel', 'rediss+sentinel', 'redis+cluster',
           'rediss+cluster')


def kind(url):
    """'server', 'sentinel' or 'cluster'; ValueError for anything else."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        schemes = ', '.join(name + '://' for name in SCHEMES)
        raise ValueError(f'REDIS_URL must start with one of {schemes}')
    return scheme.partition('+')[2] or 'server'


def _hosts(url):
    hosts = []
    for host_port in urlsplit(url).netloc.rpartition('@')[2].split(','):
        host, _, port = host_port.rpartition(':')
        if not host or not port.isdigit():
            raise ValueError(f'REDIS_URL: {host_port!r} is not host:port')
        hosts.append((host.strip('[]'), int(port)))
    return hosts


def _credentials(url):
    parts = urlsplit(url)
    found = {}
    if parts.username:
        found['username'] = unquote(parts.username)
    if parts.password:
        found['password'] = unquote(parts.password)
    return found


def check(url):
    """Raise ValueError if `url` cannot be connected to as given (nothing is contacted)."""
    found = kind(url)
    if found != 'server':
        _hosts(url)
    if found == 'sentinel':
        _, service, _ = parse_redis_sentinel_url(url.replace('rediss+', 'redis+', 1))
        if not service:
            raise ValueError('REDIS_URL: a Sentinel URL names its service: '
                             'redis+sentinel://host:port/0/<service>')


def connect(url, **options):
    """A redis-py client for `url`: Redis (one server or Sentinel's primary) or RedisCluster.

    `options` are redis-py's connection options (timeouts, decode_responses, retry...).
    """
    found = kind(url)
    tls = urlsplit(url).scheme.lower().startswith('rediss')
    if found == 'server':
        return redis.Redis.from_url(url, **options)
    if found == 'sentinel':
        sentinels, service, connection = parse_redis_sentinel_url(
            url.replace('rediss+', 'redis+', 1))
        options = {**options, **connection}
        sentinel_options = {name: options[name] for name in (
            'socket_timeout', 'socket_connect_timeout') if name in options}
        if tls:
            options['ssl'] = True
        sentinel = redis.sentinel.Sentinel(sentinels, sentinel_kwargs=sentinel_options,
                                           **options)
        return sentinel.master_for(service)
    options = {**options, **_credentials(url)}
    options.pop('health_check_interval', None)
    options.pop('retry', None)   # the cluster client retries on its own (MOVED, failover)
    if tls:
        options['ssl'] = True
    return redis.cluster.RedisCluster(
        startup_nodes=[redis.cluster.ClusterNode(host, port) for host, port in _hosts(url)],
        **options)


def subscriber(client, key):
    """A client to subscribe with: `client` itself, or on a Cluster the client of the
    primary that serves `key` (the node whose scripts publish a shard's messages).

    A shard channel's messages (SPUBLISH) reach only the nodes of its slot. A subscriber
    on the publishing node loses its connection when that node dies, or is unsubscribed
    when its slot moves; its process then catches up from the history on the new primary
    (fanout.py), as on one server or behind Sentinels.
    """
    if isinstance(client, redis.cluster.RedisCluster):
        return client.get_redis_connection(client.get_node_from_key(key))
    return client
