"""Fan-out across processes: python-socketio's Redis manager, listening on our channel too.

The state's append script publishes each message on its own channel (see
`RedisState.messages_channel`) in the order of its ids; every process, the pushing one
included, delivers it to its sockets. python-socketio's channel carries the rest
(disconnecting a socket held on another process, say), handled by python-socketio.

Both channels are read on one subscription, through `_listen`, the override point of
python-socketio's pub/sub managers; python-socketio's messages are published through
`_publish`, its other one, on the state's client. So every URL the state reads (one
server, Sentinel, Cluster: redisconn.py) works for both. Each time the subscription is (re)established, local
sockets catch up with whatever was published while this process was not listening,
before any newer message reaches them.
"""
import logging
import time

import redis
import socketio

from . import redisconn
from .delivery import DeliveryManager
from .state.redis import decode_published

log = logging.getLogger(__name__)
_MAX_RETRY_DELAY = 2.0


class RedisDeliveryManager(DeliveryManager, socketio.RedisManager):
    """DeliveryManager on python-socketio's RedisManager, one subscription for both."""

    name = 'notification-socketio redis'

    def __init__(self, state, metrics, url):
        super().__init__(state, metrics, url=url, channel=state.channel,
                         redis_options={'socket_connect_timeout': 5,
                                        'health_check_interval': 10})
        self.messages_channel = state.messages_channel

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
        ours = self.messages_channel.encode()
        delay = 0.1
        while True:
            client = pubsub = None
            try:
                client = redisconn.connect(self.redis_url, **self.redis_options)
                pubsub = redisconn.subscriber(client, self.state.keys.last_id).pubsub()
                pubsub.subscribe(self.channel, self.messages_channel)
                for message in pubsub.listen():
                    if message['type'] == 'message':
                        if message['channel'] == ours:
                            self.deliver(*decode_published(message['data']))
                        else:
                            yield message['data']
                    elif message['type'] == 'subscribe' and message['data'] == 2:
                        # Both channels: Redis now sends everything published from here on.
                        delay = 0.1
                        where = pubsub.connection_pool.connection_kwargs
                        log.info('listening on the message queue (%s:%s)',
                                 where.get('host'), where.get('port'))
                        self.resync()
            except (redis.RedisError, OSError) as error:
                log.warning('message queue lost (%s); retrying in %.1fs', error, delay)
            finally:
                for opened in (pubsub, client):
                    if opened is not None:
                        opened.close()
            time.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY_DELAY)
