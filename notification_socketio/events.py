"""Socket.IO events: a client claims its registration with `register`, and leaves."""
from flask import current_app, request

from .delivery import NAMESPACE
from .state import NotRegistered, StateUnavailable, parse_message_id
from .validation import InvalidInput, check_id


def init_socketio(socketio):
    """Attach the event handlers; call before `socketio.init_app` (see STACK.md)."""
    socketio.on_event('register', on_register, namespace=NAMESPACE)
    socketio.on_event('disconnect', on_disconnect, namespace=NAMESPACE)


def on_register(*args):
    """`register(userId, connectionId[, {"since": id}])`; the acknowledgement says how it went."""
    try:
        user_id, connection_id, since = _register_arguments(args)
    except InvalidInput as error:
        return {'ok': False, 'error': str(error)}
    try:
        _delivery().attach(request.sid, user_id, connection_id, since)
    except StateUnavailable:
        return {'ok': False, 'error': 'the server cannot reach its state right now; '
                                      'register again in a moment'}
    except NotRegistered:
        return {'ok': False, 'error': 'no valid registration for this userId and '
                                      'connectionId: the backend registers it first '
                                      '(PUT /api/{userId}/register), and it expires '
                                      'when no socket holds it'}
    return {'ok': True}


def on_disconnect(*_reason):
    """A socket went away: its registration stays valid for REGISTRATION_TTL."""
    _delivery().detach(request.sid)


def _register_arguments(args):
    if len(args) not in (2, 3):
        raise InvalidInput('register takes userId, connectionId and an optional '
                           'options object')
    user_id = check_id(args[0], 'userId')
    connection_id = check_id(args[1], 'connectionId')
    options = args[2] if len(args) == 3 and args[2] is not None else {}
    if not isinstance(options, dict):
        raise InvalidInput('the options of register must be an object like {"since": id}')
    since = options.get('since')
    if since is not None:
        try:
            parse_message_id(since)
        except ValueError as error:
            raise InvalidInput(f'since: {error}') from None
    return user_id, connection_id, since


def _delivery():
    return current_app.extensions['notification_socketio'].delivery
