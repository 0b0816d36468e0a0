"""Socket.IO events: a client claims its registration with `register`, and leaves.

A socket whose `register` fails MAX_REGISTER_FAILURES times (wrong arguments, or no
such registration: a client guessing connectionIds) is disconnected. Any other event
is answered, when the client asks for an acknowledgement, with `ok: false`.
"""
import logging

from flask import Flask, current_app, request
from socketio import packet as sio_packet

from .delivery import NAMESPACE, redact
from .engineio_front import ENGINEIO_PATH
from .state import (NotRegistered, Revoked, StateUnavailable, TooManySessions,
                    parse_message_id)
from .validation import InvalidInput, check_id


def init_socketio(socketio):
    """Attach the event handlers; call before `socketio.init_app`, on a bare SocketIO()."""
    socketio.on_event('register', on_register, namespace=NAMESPACE)
    socketio.on_event('disconnect', on_disconnect, namespace=NAMESPACE)
    socketio.on_event('*', on_unknown_event, namespace=NAMESPACE)


log = logging.getLogger(__name__)


class App(Flask):
    """Flask, with no URL matching in the request context of a Socket.IO event.

    Flask-SocketIO runs every event handler in a request context built from the socket's
    environ, whose path (/socket.io/) no Flask route serves (python-engineio answers it
    before Flask). Flask would bind and match the URL map for each event, and find
    nothing: 15 us of every `register` and `disconnect`. The handlers use the request
    only for `request.sid`.
    """

    def create_url_adapter(self, request):
        if request is not None and request.path.startswith(ENGINEIO_PATH):
            return None
        return super().create_url_adapter(request)


def guard_event_names(server):
    """Events a client names like the server's own never reach a handler.

    python-socketio hands a client's event called "disconnect" to the disconnect handler,
    and one called "*" to the catch-all handler with its arguments shifted (the first
    taken for a sid). Such events, and names that are not strings, get `ok: false`.
    """
    handle_event = server._handle_event
    reserved = {*server.reserved_events, '*'}

    def guarded(eio_sid, namespace, id, data):
        if data and (not isinstance(data[0], str) or data[0] in reserved):
            if id is not None:
                server._send_packet(eio_sid, server.packet_class(
                    sio_packet.ACK, namespace=namespace, id=id,
                    data=[{'ok': False, 'error': 'this event name is reserved'}]))
            return None
        return handle_event(eio_sid, namespace, id, data)

    server._handle_event = guarded


_UNAVAILABLE = {'ok': False, 'error': 'the server cannot reach its state right now; '
                                     'register again in a moment'}


def on_register(*args):
    """`register(userId, connectionId[, {"since": id}])`, or `register(token[, options])`.

    The acknowledgement says how it went.
    """
    if args and (len(args) == 1 or (len(args) == 2 and not isinstance(args[1], str))):
        return _register_with_token(args)
    try:
        user_id, connection_id, since = _register_arguments(args)
    except InvalidInput as error:
        return _failed(str(error))
    return _attach(user_id, connection_id, since)


def _register_with_token(args):
    """A connection token makes the registration, as PUT /api/{userId}/register would."""
    server = current_app.extensions['notification_socketio']
    try:
        if not isinstance(args[0], str):
            raise InvalidInput('register takes userId and connectionId, or a connection '
                               'token, then an optional options object')
        since = _since(args[1] if len(args) == 2 else None)
        user_id, connection_id, issued_at = server.tokens.verify(args[0])
    except InvalidInput as error:
        log.info('socket failed to register with a connection token: %s', error)
        return _failed(str(error))
    try:
        server.state.register_token(user_id, connection_id, issued_at)
    except Revoked:
        log.info('socket presented a token of revoked connection %r of user %r',
                 redact(connection_id), user_id[:64])
        return _failed('this connection was revoked by the backend')
    except TooManySessions:
        return {'ok': False, 'error': 'this user has too many sessions open'}
    except StateUnavailable:
        return _UNAVAILABLE
    return _attach(user_id, connection_id, since)


def _attach(user_id, connection_id, since):
    try:
        _delivery().attach(request.sid, user_id, connection_id, since)
    except StateUnavailable:
        return _UNAVAILABLE
    except NotRegistered:
        # The client chose these strings: quoted, so that they cannot forge log lines.
        log.info('socket failed to claim connection %r of user %r',
                 redact(connection_id), user_id[:64])
        return _failed('no valid registration for this userId and connectionId: the '
                       'backend registers it first (PUT /api/{userId}/register), and it '
                       'expires when no socket holds it')
    return {'ok': True}


def _failed(error):
    """Count a failed `register` of this socket; past the limit, disconnect it."""
    server = current_app.extensions['notification_socketio']
    failures = server.delivery.register_failures
    failures[request.sid] = failures.get(request.sid, 0) + 1
    if failures[request.sid] >= server.config.max_register_failures:
        log.warning('socket disconnected after %d failed register attempts',
                    failures[request.sid])
        # After this acknowledgement has gone out, so that the client learns why.
        server.socketio.start_background_task(server.socketio.server.disconnect,
                                              request.sid, namespace=NAMESPACE)
        return {'ok': False, 'error': error + ' (too many failed attempts: disconnected)'}
    return {'ok': False, 'error': error}


def on_unknown_event(event, *_args):
    """Any event but `register`: nothing happens; an acknowledgement says so."""
    return {'ok': False, 'error': 'unknown event; the only event is register'}


def on_disconnect(*_reason):
    """A socket went away: its registration stays valid for REGISTRATION_TTL."""
    _delivery().detach(request.sid)


def _register_arguments(args):
    if len(args) not in (2, 3):
        raise InvalidInput('register takes userId, connectionId and an optional '
                           'options object')
    user_id = check_id(args[0], 'userId')
    connection_id = check_id(args[1], 'connectionId')
    return user_id, connection_id, _since(args[2] if len(args) == 3 else None)


def _since(options):
    """The `since` of register's options object (None or a dict)."""
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise InvalidInput('the options of register must be an object like {"since": id}')
    since = options.get('since')
    if since is not None:
        try:
            parse_message_id(since)
        except ValueError as error:
            raise InvalidInput(f'since: {error}') from None
    return since


def _delivery():
    return current_app.extensions['notification_socketio'].delivery
