"""notification-socketio: push JSON messages to every open tab of a user, over Socket.IO."""
import dataclasses

__version__ = '1.0.0'


@dataclasses.dataclass
class Server:
    """The parts of one running server, kept in `app.extensions['notification_socketio']`."""

    config: object
    state: object
    delivery: object
    socketio: object
    metrics: object


def create_app(config=None):
    """Build the Flask app with its REST API and Socket.IO server.

    `config` is a Config; without it the environment is read (ConfigError if it is wrong).
    """
    from flask import Flask
    from flask_socketio import SocketIO

    from . import api, console, events, jsoncodec, metrics, openapi, transport
    from .fastpush import FastPush
    from .config import Config
    from .delivery import Delivery
    from .fanout import RedisFanout
    from .logs import configure_logging
    from .state import create_state

    config = config or Config.from_env()
    configure_logging(config)
    app = Flask(__name__)
    app.config['MAX_CONTENT_LENGTH'] = config.max_message_bytes
    app.register_blueprint(api.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(console.bp)

    state = create_state(config)
    socketio = SocketIO()
    server_metrics = metrics.Metrics()
    delivery = Delivery(socketio, state, server_metrics)
    events.init_socketio(socketio)
    options = {}
    if config.redis_url:
        options['client_manager'] = RedisFanout(
            config.redis_url, channel=state.channel,
            on_message=delivery.deliver, on_subscribed=delivery.resync)
    socketio.init_app(
        app,
        async_mode='gevent',
        cors_allowed_origins=config.cors_allowed_origins,
        ping_interval=config.ping_interval,
        ping_timeout=config.ping_timeout,
        manage_session=False,
        logger=False,
        engineio_logger=False,
        json=jsoncodec,
        # A client sends `register` and little else: 64 KiB is plenty for a payload.
        max_http_buffer_size=65536,
        **options,
    )
    events.guard_event_names(socketio.server)
    transport.install(socketio.server.eio, config.max_socket_buffer_bytes,
                      on_overflow=server_metrics.slow_consumers.inc)
    server = app.extensions['notification_socketio'] = Server(
        config=config, state=state, delivery=delivery, socketio=socketio,
        metrics=server_metrics)
    server_metrics.watch(server)
    app.wsgi_app = FastPush(app.wsgi_app, server)
    return app
