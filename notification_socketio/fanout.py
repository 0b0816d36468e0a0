"""Fan-out across processes: python-socketio's Redis manager, listening on our channels too.

The state's append script publishes each message on its shard's channel (`Keys.channel`)
in the order of its ids; every process, the pushing one included, delivers it to its
sockets. python-socketio's channel carries the rest (disconnecting a socket held on
another process, say), handled by python-socketio.

On one server (or behind Sentinels) both channels are read on one subscription, through
`_listen`, the override point of python-socketio's pub/sub managers; python-socketio's
messages are published through `_publish`, its other one, on the state's client. On a
Cluster, `_listen` reads python-socketio's channel, and each shard's channel is a shard
channel (SPUBLISH), read by a greenlet of its own on the node that serves the shard's
slot (SSUBSCRIBE), found again when the slot moves. Each time a subscription is
(re)established, the local sockets it serves catch up with whatever was published while
this process was not listening, before any newer message reaches them.
"""
import contextlib
import logging
import time

import gevent
import redis
import socketio

from . import redisconn
from .delivery import DeliveryManager
from .state.redis import decode_published

log = logging.getLogger(__name__)
_MAX_RETRY_DELAY = 2.0
#: A subscription that carried nothing for this long is sent a PING...
_QUIET = 5.0
#: ...whose PONG must come within this long, or its connection is dropped and made again.
_PONG_WAIT = 3.0


def _watch(pubsub, heard):
    """Drop a subscription's connection once it is open but silent; runs beside the reader.

    A connection can stay open while nothing comes through it (a middlebox that dropped
    one direction), and redis-py would read from it forever. `heard` is the reader's
    count of messages: after `_QUIET` seconds without one, a PING goes out on the
    subscription (Redis answers it there); no answer within `_PONG_WAIT`, and the
    connection is dropped. redis-py then reconnects and subscribes again, or the reader
    fails; either way `_listen` sees the subscription start again and catches up.
    """
    seen, quiet_since = heard[0], time.monotonic()
    while True:
        gevent.sleep(1.0)
        if heard[0] != seen:
            seen, quiet_since = heard[0], time.monotonic()
        elif time.monotonic() - quiet_since > _QUIET:
            try:
                pubsub.ping()
            except (redis.RedisError, OSError):
                pass   # then no PONG comes either
            gevent.sleep(_PONG_WAIT)
            if heard[0] == seen:
                log.warning('message queue silent: no PONG within %.0fs; reconnecting',
                            _PONG_WAIT)
                pubsub.connection.disconnect()
            seen, quiet_since = heard[0], time.monotonic()


class RedisDeliveryManager(DeliveryManager, socketio.RedisManager):
    """DeliveryManager on python-socketio's RedisManager, one subscription for both."""

    name = 'notification-socketio redis'

    def __init__(self, state, metrics, url):
        super().__init__(state, metrics, url=url, channel=state.channel,
                         redis_options={'socket_connect_timeout': 5,
                                        'health_check_interval': 10})
        self._shard_listeners = []

    def _publish(self, data):
        """python-socketio's messages (a disconnect, an emit), on the state's connection.

        Tried twice, as python-socketio's own does; a second failure is logged.
        """
        for attempt in (1, 2):
            try:
                return self.state.redis.publish(self.channel, self.json.dumps(data))
            except redis.RedisError as error:
                log.error('could not publish on the message queue (%s)%s', error,
                          '; retrying' if attempt == 1 else '')

    def _listen(self):
        """python-socketio's messages, yielded; ours, delivered. Retries quickly when lost."""
        shard = self.state.shards[0]
        if self.state.cluster:
            channels = [self.channel]
            if not self._shard_listeners:
                self._shard_listeners = [gevent.spawn(self._listen_to_shard, number)
                                         for number in range(self.state.shard_count)]
        else:
            channels = [self.channel, shard.channel]
        ours = shard.channel.encode()
        delay = 0.1
        while True:
            heard = [0]   # messages read, for the watchdog
            try:
                with self._subscription(shard, heard) as pubsub:
                    pubsub.subscribe(*channels)
                    for message in pubsub.listen():
                        heard[0] += 1
                        if message['type'] == 'message':
                            if message['channel'] == ours:
                                self.deliver(*decode_published(message['data']))
                            else:
                                yield message['data']
                        elif message['type'] == 'subscribe' and \
                                message['data'] == len(channels):
                            # Every channel: Redis sends everything published from here on.
                            delay = 0.1
                            log.info('listening on the message queue (%s)', _address(pubsub))
                            if not self.state.cluster:
                                self.resync()
            except (redis.RedisError, OSError) as error:
                log.warning('message queue lost (%s); retrying in %.1fs', error, delay)
            time.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY_DELAY)

    def _listen_to_shard(self, number):
        """Deliver a Cluster shard's messages, read where its slot is served, for ever."""
        shard = self.state.shards[number]
        delay = 0.1
        while True:
            heard = [0]
            try:
                with self._subscription(shard, heard) as pubsub:
                    pubsub.ssubscribe(shard.channel)
                    for message in pubsub.listen():
                        heard[0] += 1
                        if message['type'] == 'smessage':
                            self.deliver(*decode_published(message['data']), shard=number)
                        elif message['type'] == 'ssubscribe':
                            delay = 0.1
                            log.info('listening on the message queue of shard %d (%s)',
                                     number, _address(pubsub))
                            self.resync(shard=number)
                        elif message['type'] == 'sunsubscribe':
                            # The server no longer serves the slot (failover, resharding).
                            raise redis.ConnectionError('the shard moved to another node')
            except (redis.RedisError, OSError) as error:
                log.warning('message queue of shard %d lost (%s); retrying in %.1fs',
                            number, error, delay)
            time.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY_DELAY)

    @contextlib.contextmanager
    def _subscription(self, shard, heard):
        """A pub/sub connection to the server of `shard`, watched (`_watch`), closed after."""
        client = pubsub = watchdog = None
        try:
            client = redisconn.connect(self.redis_url, **self.redis_options)
            pubsub = redisconn.subscriber(client, shard.last_id).pubsub()
            watchdog = gevent.spawn(_watch, pubsub, heard)
            yield pubsub
        finally:
            if watchdog is not None:
                watchdog.kill(block=False)
            for opened in (pubsub, client):
                if opened is not None:
                    opened.close()


def _address(pubsub):
    where = pubsub.connection_pool.connection_kwargs
    return f'{where.get("host")}:{where.get("port")}'
