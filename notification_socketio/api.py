"""The REST API the backend calls: register a connection, push a message, status."""
import functools
import logging

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from . import __version__
from .delivery import redact
from .state import StateUnavailable, TooManySessions
from .validation import (NO_MESSAGE, InvalidInput, check_id, message_of, parse_json,
                         token_matches)

bp = Blueprint('api', __name__, url_prefix='/api')
log = logging.getLogger(__name__)


class UserIdConverter(PathConverter):
    """Any userId, once percent-decoded: slashes, newlines and leading slashes included."""

    regex = '(?s:.+?)'
    part_isolating = False


@bp.record_once
def _accept_any_user_id(state):
    state.app.url_map.converters['user_id'] = UserIdConverter
    # `/api//push` is user "/" ... not a path to tidy up with a redirect.
    state.app.url_map.merge_slashes = False


def require_token(view):
    """Answer 401 unless X-AUTH-TOKEN is one of the configured tokens."""
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if not token_matches(request.headers.get('X-AUTH-TOKEN', ''),
                             _server().config.auth_tokens):
            return error_response(401, 'missing or wrong X-AUTH-TOKEN header')
        return view(*args, **kwargs)
    return wrapped


@bp.get('/status/ping')
def ping():
    """Liveness: answers `pong`, no token needed."""
    return 'pong', 200, {'Content-Type': 'text/plain; charset=utf-8'}


@bp.get('/status/info')
def info():
    """The server's name and version, no token needed."""
    return {'name': 'notification-socketio', 'version': __version__}


@bp.put('/<user_id:user_id>/register')
@require_token
def register(user_id):
    """Create a registration that one socket can then claim with `register`."""
    user_id = check_id(user_id, 'userId')
    connection_id = check_id(request.args.get('connectionId'), 'connectionId')
    server = _server()
    server.state.register(user_id, connection_id)
    server.metrics.registrations.inc()
    log.info('registered connection %s for user %s', redact(connection_id), user_id)
    return {'ok': True, 'ttl': server.config.registration_ttl}


@bp.post('/<user_id:user_id>/push')
@require_token
def push(user_id):
    """Send `message` to every socket of the user; answer with its message id."""
    user_id = check_id(user_id, 'userId')
    [entry] = _server().delivery.push([user_id], _read_message())
    return {'id': entry.message_id}


@bp.post('/push')
@require_token
def push_many():
    """Send one message to many users; answer with each user's message id."""
    payload = _read_json_body()
    user_ids = payload.get('users')
    if not isinstance(user_ids, list) or not user_ids:
        raise InvalidInput('"users" must be a non-empty list of userIds')
    user_ids = list(dict.fromkeys(check_id(user_id, 'each userId') for user_id in user_ids))
    entries = _server().delivery.push(user_ids, message_of(payload))
    return {'ids': {user_id: entry.message_id for user_id, entry in zip(user_ids, entries)}}


@bp.post('/broadcast')
@require_token
def broadcast():
    """Send one message to every registered session, whoever its user."""
    entry = _server().delivery.broadcast(_read_message())
    return {'id': entry.message_id}


@bp.get('/<user_id:user_id>/sessions')
@require_token
def sessions(user_id):
    """The user's presence: sockets online, and registrations held or not."""
    user_id = check_id(user_id, 'userId')
    online, registered = _server().state.sessions(user_id)
    return {'userId': user_id, 'online': online, 'registered': registered}


@bp.delete('/<user_id:user_id>/register')
@require_token
def revoke(user_id):
    """Revoke one registration: its socket is disconnected and it can no longer be claimed."""
    user_id = check_id(user_id, 'userId')
    connection_id = check_id(request.args.get('connectionId'), 'connectionId')
    _server().delivery.revoke(user_id, connection_id)
    return {'ok': True}


@bp.delete('/<user_id:user_id>/sessions')
@require_token
def revoke_all(user_id):
    """Revoke every registration of the user and disconnect its sockets."""
    user_id = check_id(user_id, 'userId')
    _server().delivery.revoke(user_id)
    return {'ok': True}


def _read_message():
    """The `message` of a JSON or form-encoded body."""
    if request.mimetype == 'application/x-www-form-urlencoded':
        body = request.get_data()
        if 'message' in request.form:
            return request.form['message']
        # `curl -d '{"message": ...}'` sends JSON labelled as a form.
        try:
            return message_of(parse_json(body))
        except InvalidInput:
            raise InvalidInput(NO_MESSAGE) from None
    return message_of(_read_json_body())


def _read_json_body():
    """The body as a JSON object, whatever its content type says."""
    body = request.get_data()
    if not body:
        raise InvalidInput(NO_MESSAGE)
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise InvalidInput(NO_MESSAGE)
    return payload


def error_response(status, message):
    """The JSON error every failure answers with."""
    return jsonify(error=message), status


@bp.app_errorhandler(InvalidInput)
def _invalid_input(error):
    return error_response(400, str(error))


@bp.app_errorhandler(TooManySessions)
def _too_many_sessions(error):
    limit = _server().config.max_sessions_per_user
    return error_response(429, f'this user already has {limit} registrations, all held by '
                               'live sockets (MAX_SESSIONS_PER_USER); revoke one first')


@bp.app_errorhandler(StateUnavailable)
def _state_unavailable(error):
    log.warning('%s %s: %s', request.method, request.path, error)
    return error_response(503, 'the server cannot reach its shared state (Redis) right now; '
                               'nothing was done, retry')


@bp.app_errorhandler(HTTPException)
def _http_error(error):
    body, status = error_response(error.code, _HTTP_ERRORS.get(error.code, error.name))
    for name, value in error.get_headers():
        if name.lower() != 'content-type':   # keep what the status needs, such as Allow
            body.headers[name] = value
    return body, status


@bp.app_errorhandler(Exception)
def _unexpected_error(error):
    log.exception('unexpected error on %s %s', request.method, request.path)
    return error_response(500, 'internal error')


_HTTP_ERRORS = {
    404: 'no such route',
    405: 'method not allowed on this route',
    413: 'the body is larger than MAX_MESSAGE_BYTES',
}


def _server():
    return current_app.extensions['notification_socketio']
