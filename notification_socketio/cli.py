"""The `notification-socketio` command.

`serve` (the default) starts gunicorn as wsgi.py would; `push`, `broadcast` and `listen`
try a running server from a terminal.
"""
import argparse
import json
import os
import queue
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
    push = verbs.add_parser('push', help='push a message to a user')
    push.add_argument('user_id')
    push.add_argument('message', help='JSON, or else sent as a string')
    broadcast = verbs.add_parser('broadcast', help='push a message to every registered session')
    broadcast.add_argument('message', help='JSON, or else sent as a string')
    listen = verbs.add_parser('listen', help="register a connection for a user and print "
                                             "the user's messages as JSON lines")
    listen.add_argument('user_id')
    listen.add_argument('--polling', action='store_true', help='long-polling, not WebSocket')
    listen.add_argument('--count', type=int, help='exit after this many messages')
    for verb in (push, broadcast, listen):
        verb.add_argument('--url', default=os.environ.get(
            'NOTIFICATION_URL', f'http://127.0.0.1:{os.environ.get("PORT", "3000")}'),
            help='the server (default: $NOTIFICATION_URL, else http://127.0.0.1:$PORT)')
        verb.add_argument('--token', default=os.environ.get('AUTH_TOKEN', '').split(',')[0],
                          help='the API token (default: the first one of $AUTH_TOKEN)')

    args, extra = parser.parse_known_args(argv)
    if args.verb in (None, 'serve'):
        return serve(extra)
    if extra:
        parser.error(f'unrecognized arguments: {" ".join(extra)}')
    from .client import NotificationClient, NotificationError
    client = NotificationClient(args.url, args.token)
    try:
        if args.verb == 'push':
            print(json.dumps({'id': client.push(args.user_id, _json_or_text(args.message))}))
        elif args.verb == 'broadcast':
            print(json.dumps({'id': client.broadcast(_json_or_text(args.message))}))
        else:
            return listen_to(client, args.user_id, args.polling, args.count)
    except NotificationError as error:
        print(f'notification-socketio: {error}', file=sys.stderr)
        return 1
    return 0


def serve(gunicorn_args):
    """Validate the configuration, then replace this process with gunicorn."""
    try:
        Config.from_env()
    except ConfigError as error:
        print(f'notification-socketio: {error}', file=sys.stderr)
        return 2
    argv = [sys.executable, '-m', 'gunicorn', '-c', GUNICORN_CONFIG, *gunicorn_args, APP]
    os.execv(sys.executable, argv)


def listen_to(client, user_id, polling=False, count=None):
    """Register, connect, and print every message of the user until `count` or Ctrl-C."""
    import socketio

    connection_id = client.register(user_id)
    messages = queue.Queue()
    sio = socketio.Client()

    @sio.event
    def connect():
        sio.emit('register', (user_id, connection_id), callback=_report_register)

    @sio.on('message')
    def on_message(message, meta=None):
        messages.put({'id': (meta or {}).get('id'), 'ts': (meta or {}).get('ts'),
                      'message': message})

    sio.connect(client.url, transports=['polling'] if polling else ['websocket', 'polling'])
    print(f'listening to user {user_id!r} over {sio.transport()}', file=sys.stderr)
    try:
        received = 0
        while count is None or received < count:
            print(json.dumps(messages.get(), ensure_ascii=False), flush=True)
            received += 1
    except KeyboardInterrupt:
        pass
    finally:
        sio.disconnect()
        client.revoke(user_id, connection_id)
    return 0


def _report_register(ack):
    if not ack.get('ok'):
        print(f'notification-socketio: register failed: {ack.get("error")}', file=sys.stderr)


def _json_or_text(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


if __name__ == '__main__':
    sys.exit(main())
