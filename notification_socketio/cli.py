"""The `notification-socketio` command: `serve` (the default) starts gunicorn as wsgi.py would."""
import argparse
import os
import sys

from .config import Config, ConfigError

GUNICORN_CONFIG = 'python:notification_socketio.gunicorn_conf'
APP = 'notification_socketio:create_app()'


def main(argv=None):
    """Parse the command line and run the verb."""
    parser = argparse.ArgumentParser(
        prog='notification-socketio',
        description='Push notifications to browsers over Socket.IO. '
                    'Configuration comes from the environment (see README.md).')
    verbs = parser.add_subparsers(dest='verb')
    verbs.add_parser('serve', help='run the server under gunicorn (the default verb); '
                                   'other flags go to gunicorn, e.g. --bind 127.0.0.1:3000')
    args, extra = parser.parse_known_args(argv)
    if args.verb in (None, 'serve'):
        return serve(extra)
    parser.error(f'unrecognized arguments: {" ".join(extra)}')


def serve(gunicorn_args):
    """Validate the configuration, then replace this process with gunicorn."""
    try:
        Config.from_env()
    except ConfigError as error:
        print(f'notification-socketio: {error}', file=sys.stderr)
        return 2
    argv = [sys.executable, '-m', 'gunicorn', '-c', GUNICORN_CONFIG, *gunicorn_args, APP]
    os.execv(sys.executable, argv)


if __name__ == '__main__':
    sys.exit(main())
