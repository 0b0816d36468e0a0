"""gunicorn settings for a push server; `gunicorn wsgi:app` reads them via gunicorn.conf.py.

Command-line flags still win over these, as usual with gunicorn.
"""
import sys

from notification_socketio.config import Config, ConfigError
from notification_socketio.logs import gunicorn_logger

try:
    _config = Config.from_env()
except ConfigError as _error:
    # Fail closed before any worker starts, in one line, with a non-zero exit.
    sys.exit(f'notification-socketio: {_error}')

bind = [f'0.0.0.0:{_config.port}']
# gevent-websocket's worker, with gunicorn's access log (worker.py).
worker_class = 'notification_socketio.worker.Worker'
# One worker: long-polling needs every request of a session on the same process.
# WEB_CONCURRENCY (set by PaaS) is deliberately not read; scale out with processes + Redis.
workers = 1
# Every request under way (a pending long-poll included) holds one slot; a WebSocket holds
# one only until its handshake is done (worker.Handler.detach). gunicorn's default is 1000.
# Set well above what a process serves (bench SCALE: 20,000 sessions), so that the bound
# is the file descriptors (`ulimit -n`), which start-up reports.
worker_connections = 100000
timeout = 30
graceful_timeout = 15
keepalive = 75
# Access lines without the query string: it carries connectionIds.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms'
errorlog = '-'
loglevel = 'info'
# gunicorn's own lines in the server's format (logs.py); its access log stays off unless
# --access-logfile asks for it.
logger_class = gunicorn_logger(_config.log_format)
# gunicorn 27 shares one control socket among every gunicorn on the host, and stopping
# one deletes it for the others; a push server needs none.
control_socket_disable = True


def on_starting(server):
    """Refuse several workers in one process when they cannot share state."""
    if server.cfg.workers > 1 and not _config.redis_url:
        sys.exit('notification-socketio: several workers need REDIS_URL to share state; '
                 'run one worker per process (-w 1)')
    if server.cfg.workers > 1:
        server.log.warning('%d workers in one process: long-polling clients need every '
                           'request on the same worker; prefer one worker per process '
                           'behind a sticky load balancer', server.cfg.workers)


def post_worker_init(worker):
    """On SIGTERM, close every Socket.IO connection so that the worker drains quickly."""
    from notification_socketio.shutdown import install_drain
    from notification_socketio.worker import Handler, Server
    install_drain(worker)
    _use_every_file_descriptor(worker)
    _lean_log_records()
    if worker.wsgi_handler is Handler and worker.server_class is Server:
        worker.log.info('fast paths on: gunicorn handler without per-request log formatting, '
                        'idle WebSockets read by the event loop, log records without thread '
                        'or caller lookups')
    else:
        worker.log.warning('fast path OFF: the worker runs %s, not the server\'s handler '
                           '(-k notification_socketio.worker.Worker)',
                           worker.wsgi_handler.__name__)


def _lean_log_records():
    """Log records without the thread, multiprocessing and caller fields (the logging
    HOWTO's "Optimization"): no format of the server's uses them, and under gevent the
    thread is a dummy made anew for each greenlet that logs. Two lines per session opened
    cost 9 us less each. In the worker only, whose logging is the server's own.
    """
    import logging
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging._srcfile = None


def _use_every_file_descriptor(worker):
    """Raise the soft limit of open files to the hard one: each session holds one.

    A systemd unit or a shell often starts processes with a soft limit of 1,024 and a
    far higher hard one; past the soft limit, new sessions would be refused.
    """
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    limit = 'unlimited' if soft == resource.RLIM_INFINITY else f'{soft:,}'
    worker.log.info('open files: at most %s (ulimit -n), one per session', limit)
