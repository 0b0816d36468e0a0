"""The REST API the backend calls: register a connection, push a message, status."""
import functools
import logging

from flask import Blueprint, current_app, request
from werkzeug.routing import PathConverter

from . import __version__, wakeup
from .delivery import redact
from .errors import error_response
from .webhooks import safe_url
from .state import EVERYONE, parse_message_id
from .validation import (IDEMPOTENCY_HEADER, NO_MESSAGE, InvalidInput, check_id,
                         fallback_after_of, idempotency_of, message_of, parse_form,
                         parse_json, token_matches)

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
    message, payload = _read_message()
    appended = _push([user_id], message, fallback_after_of(payload))
    wakeup.after_this_turn()   # the turn's other pushes deliver before this answer
    return _answer({'id': appended.entries[0].message_id, 'online': appended.online[0]},
                   appended)


@bp.post('/push')
@require_token
def push_many():
    """Send one message to many users; answer with each user's message id."""
    payload = _read_json_body()
    user_ids = payload.get('users')
    if not isinstance(user_ids, list) or not user_ids:
        raise InvalidInput('"users" must be a non-empty list of userIds')
    user_ids = list(dict.fromkeys(check_id(user_id, 'each userId') for user_id in user_ids))
    appended = _push(user_ids, message_of(payload), fallback_after_of(payload))
    return _answer({'ids': {user_id: entry.message_id
                            for user_id, entry in zip(user_ids, appended.entries)},
                    'online': dict(zip(user_ids, appended.online))},
                   appended)


@bp.post('/broadcast')
@require_token
def broadcast():
    """Send one message to every registered session, whoever its user."""
    appended = _push([EVERYONE], _read_message()[0])
    return _answer({'id': appended.entries[0].message_id}, appended)


def _push(targets, message, fallback_after=None):
    """Push once per Idempotency-Key, if the request has one."""
    idempotency = idempotency_of(request.headers.get(IDEMPOTENCY_HEADER), request.path,
                                 request.get_data())
    return _server().delivery.push(targets, message, idempotency, fallback_after)


def _answer(body, appended):
    """The push's answer; a repeated key answers what the first push did, and says so."""
    return body, 200, {'Idempotent-Replayed': 'true'} if appended.repeated else {}


@bp.get('/<user_id:user_id>/sessions')
@require_token
def sessions(user_id):
    """The user's presence: sockets online, and registrations held or not."""
    user_id = check_id(user_id, 'userId')
    online, registered = _server().state.sessions(user_id)
    return {'userId': user_id, 'online': online, 'registered': registered}


@bp.get('/<user_id:user_id>/messages/<message_id>')
@require_token
def message_status(user_id, message_id):
    """Whether a socket of the user acknowledged a message, and whether it is in the history."""
    user_id = check_id(user_id, 'userId')
    try:
        parse_message_id(message_id)
    except ValueError as error:
        raise InvalidInput(str(error)) from None
    status = _server().state.message_status(user_id, message_id)
    if status is None:
        return error_response(404, 'no such message for this user (or it is older than '
                                   'every record kept)')
    return {'id': message_id, 'userId': user_id, 'acknowledged': status.acknowledged,
            'inHistory': status.in_history}


@bp.get('/webhooks')
@require_token
def webhooks():
    """The webhooks configured, how many wait, and the latest calls of this process."""
    server = _server()
    sender = server.webhooks
    return {'urls': [safe_url(url) for url in server.config.webhook_urls],
            'queued': sender.queued() if sender else 0,
            'recent': list(sender.recent) if sender else []}


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
    """The `message` of a JSON or form-encoded body, and the whole body decoded."""
    if request.mimetype == 'application/x-www-form-urlencoded':
        body = request.get_data()
        form = parse_form(body)
        if 'message' in form:
            return form['message'], form
        # `curl -d '{"message": ...}'` sends JSON labelled as a form.
        try:
            payload = parse_json(body)
            return message_of(payload), payload
        except InvalidInput:
            raise InvalidInput(NO_MESSAGE) from None
    payload = _read_json_body()
    return message_of(payload), payload


def _read_json_body():
    """The body as a JSON object, whatever its content type says."""
    body = request.get_data()
    if not body:
        raise InvalidInput(NO_MESSAGE)
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise InvalidInput(NO_MESSAGE)
    return payload


def _server():
    return current_app.extensions['notification_socketio']
