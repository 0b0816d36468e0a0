"""Fan-out across processes: Flask-SocketIO's Redis message queue, carrying our messages too.

The state's append script publishes each message on the queue's channel in the shape of a
python-socketio emit, marked with DELIVERY_HOST; every process, the pushing one included,
hands it to its Delivery, in the order Redis published them. Everything else on the
channel (disconnecting a socket held on another process, say) is python-socketio's own.
"""
import logging
import time

import socketio

from .state import Entry
from .state.redis import DELIVERY_HOST

log = logging.getLogger(__name__)
_MAX_RETRY_DELAY = 2.0


class RedisFanout(socketio.RedisManager):
    """python-socketio's RedisManager, routing our messages to `on_message`.

    `on_subscribed` runs each time the subscription is (re)established, so that sockets
    catch up with whatever was published while this process was not listening.
    """

    def __init__(self, url, channel, on_message=None, on_subscribed=None):
        super().__init__(url, channel=channel,
                         redis_options={'socket_connect_timeout': 5,
                                        'health_check_interval': 10})
        self.on_message = on_message
        self.on_subscribed = on_subscribed

    def _handle_emit(self, message):
        if message.get('host_id') != DELIVERY_HOST:
            return super()._handle_emit(message)
        data, meta = message['data']
        self.on_message(message['user'], Entry(meta['id'], meta['ts'], data))

    def _redis_listen_with_retries(self):
        """Listen on the channel; after a failure retry quickly, not after up to a minute."""
        delay = 0.1
        while True:
            try:
                self._redis_connect()
                self.pubsub.ignore_subscribe_messages = False
                self.pubsub.subscribe(self.channel)
                for message in self.pubsub.listen():
                    if message['type'] == 'subscribe':
                        # Redis now sends us everything published from here on.
                        delay = 0.1
                        log.info('listening on the message queue')
                        if self.on_subscribed is not None:
                            self.server.start_background_task(self.on_subscribed)
                        continue
                    yield message
            except Exception as error:   # any failure of the connection: start again
                if self.pubsub is not None:
                    self.pubsub.close()
                log.warning('message queue lost (%s); retrying in %.1fs', error, delay)
                time.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY_DELAY)
