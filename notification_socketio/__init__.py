"""notification-socketio: push JSON messages to every open tab of a user, over Socket.IO."""
import dataclasses
import logging

__version__ = '1.0.0'


@dataclasses.dataclass
class Server:
    """The parts of one running server, kept in `app.extensions['notification_socketio']`."""

    config: object
    state: object
    delivery: object
    socketio: object
    metrics: object
    tokens: object = None     # TokenVerifier of connection tokens
    webhooks: object = None   # the webhook Sender, when WEBHOOK_URL is set


def create_app(config=None):
    """Build the Flask app with its REST API and Socket.IO server.

    `config` is a Config; without it the environment is read (ConfigError if it is wrong).
    """
    from flask_socketio import SocketIO

    from . import api, console, errors, events, jsoncodec, metrics, openapi, transport
    from .config import Config
    from .delivery import DeliveryManager
    from .engineio_front import MAX_CLIENT_PAYLOAD, EngineIOFront
    from .fastpush import FastPush
    from .logs import configure_logging
    from .state import create_state
    from .tokens import TokenVerifier
    from .webhooks import Sender

    config = config or Config.from_env()
    configure_logging(config)
    app = events.App(__name__)
    app.config['MAX_CONTENT_LENGTH'] = config.max_message_bytes
    errors.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(console.bp)

    state = create_state(config)
    server_metrics = metrics.Metrics()
    if state.local:
        manager = DeliveryManager(state, server_metrics)
    else:
        from .fanout import RedisDeliveryManager
        manager = RedisDeliveryManager(state, server_metrics, config.redis_url)
    # Bare, with every option in init_app: options given here would build a server that
    # init_app replaces, and handlers attached to it would never run.
    socketio = SocketIO()
    events.init_socketio(socketio)
    socketio.init_app(
        app,
        async_mode='gevent',
        client_manager=manager,
        cors_allowed_origins=config.cors_allowed_origins,
        ping_interval=config.ping_interval,
        ping_timeout=config.ping_timeout,
        manage_session=False,
        logger=False,
        engineio_logger=False,
        json=jsoncodec,
        max_http_buffer_size=MAX_CLIENT_PAYLOAD,
        # python-engineio's task wakes once per socket per ping_timeout to look for one
        # that missed its PONG, and forgets closed ones: a sixteenth of a core at 5,000
        # idle sessions. Each socket does both on timers of its own (transport.py).
        monitor_clients=False,
        # Each event's handler runs in the greenlet that read it, in order, rather than in
        # a greenlet of its own: 5% of the worker's time while sessions open (bench S5).
        async_handlers=False,
    )
    events.guard_event_names(socketio.server)
    transport.install(socketio.server.eio, transport.Hooks(
        config.max_socket_buffer_bytes, on_ping=manager.on_ping, on_pong=manager.on_pong,
        on_overflow=server_metrics.slow_consumers.inc, poll_gather=config.long_poll_gather))
    state.outbox.on_drop = server_metrics.webhooks_dropped.inc
    sender = Sender(state.outbox, config.webhook_secret, config.webhook_retry_for,
                    server_metrics) if config.webhook_urls else None
    server = app.extensions['notification_socketio'] = Server(
        config=config, state=state, delivery=manager, socketio=socketio,
        metrics=server_metrics, tokens=TokenVerifier(config), webhooks=sender)
    server_metrics.watch(server)
    if sender is not None:
        start_telling(server)
    app.wsgi_app = FastPush(EngineIOFront(app.wsgi_app, config), server)
    logging.getLogger(__name__).info(
        'fast paths on: %s', ', '.join([*transport.fast_paths(socketio.server.eio),
                                        'fast push and register routes', 'orjson',
                                        *([] if state.local else state.fast_paths())]))
    return app


def start_telling(server):
    """Start this process's webhook sender, and its clock for what falls due (presence
    checks, fallbacks): in the process that serves, never in one that only imports."""
    import gevent

    from .state import StateUnavailable

    log = logging.getLogger(__name__)

    def tick():
        while True:
            try:
                server.state.tick()
            except StateUnavailable as error:
                log.warning('could not check presence and fallbacks: %s', error)
            except Exception:
                log.exception('presence and fallback check failed')
            gevent.sleep(_TICK)

    server.webhooks.start()
    gevent.spawn(tick)


#: Seconds between two looks at what fell due.
_TICK = 0.25
