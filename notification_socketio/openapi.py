"""The OpenAPI 3 document of every HTTP route, served at /api/openapi.json.

Kept true by tests/test_openapi.py: schemathesis fuzzes the live server with it, and every
documented status of every route is produced and checked against its schema.
"""
from flask import Blueprint

from . import __version__
from .validation import MAX_FALLBACK_AFTER, MAX_ID_LENGTH

bp = Blueprint('openapi', __name__)

_ID = {'type': 'string', 'minLength': 1, 'maxLength': MAX_ID_LENGTH}
_MESSAGE_ID = {'type': 'string', 'pattern': r'^[0-9]+-[0-9]+$',
               'example': '1732780000000-0'}
_ANY_JSON_BUT_NULL = {'description': 'Any JSON value except null.',
                      'not': {'type': 'null'}}


def _json(schema, description):
    return {'description': description, 'content': {'application/json': {'schema': schema}}}


def _error(description):
    return _json({'$ref': '#/components/schemas/Error'}, description)


_USER_ID = {'name': 'userId', 'in': 'path', 'required': True, 'schema': _ID,
            'description': 'Any string; percent-encode characters such as "/".'}
_CONNECTION_ID = {'name': 'connectionId', 'in': 'query', 'required': True, 'schema': _ID,
                  'description': 'A random, unguessable string made up by the backend.'}
_IDEMPOTENCY_KEY = {
    'name': 'Idempotency-Key', 'in': 'header', 'required': False,
    'schema': {'type': 'string', 'minLength': 1, 'maxLength': 255,
               'pattern': '^[!-~]([ -~]*[!-~])?$'},
    'description': 'Makes the push idempotent: a repeat with the same key and the same '
                   'request within IDEMPOTENCY_TTL pushes nothing and answers what the '
                   'first answered (with `Idempotent-Replayed: true`); the same key with '
                   'another request is a 409.'}
_UNAUTHORIZED = _error('X-AUTH-TOKEN is missing or wrong.')
_UNAVAILABLE = _error('The shared state (Redis) cannot be reached; nothing was done, retry.')
_INVALID = _error('The request is malformed; the error says how.')
_TOO_LARGE = _error('The body is larger than MAX_MESSAGE_BYTES.')
_PUSH_FAILURES = {
    '401': _UNAUTHORIZED, '400': _INVALID, '413': _TOO_LARGE, '503': _UNAVAILABLE,
    '409': _error('The Idempotency-Key was used before with another request.'),
    '504': _error('The shared state (Redis) took the push and did not answer in time: '
                  'the outcome is unknown; or, with REDIS_WAIT_REPLICAS, no replica '
                  'confirmed it in time. Retry with the same Idempotency-Key.'),
}
_OK = _json({'type': 'object', 'required': ['ok'], 'properties': {'ok': {'const': True}}},
            'Done.')
_FALLBACK_AFTER = {
    'type': 'number', 'minimum': 1, 'maximum': MAX_FALLBACK_AFTER,
    'description': 'Seconds: if no socket of the user has acknowledged the message by '
                   'then, a `message.unacknowledged` webhook carries it (WEBHOOK_URL).'}
_ONLINE = {'type': 'integer', 'minimum': 0,
           'description': 'Sockets that held the user\'s registrations when it was sent.'}
_BROADCAST_BODY = {
    'required': True,
    'content': {
        'application/json': {'schema': {
            'type': 'object', 'required': ['message'],
            'properties': {'message': _ANY_JSON_BUT_NULL}}},
        'application/x-www-form-urlencoded': {'schema': {
            'type': 'object', 'required': ['message'],
            'description': 'Read as the original read it (the qs syntax): message=<text> '
                           'is that string; message[title]=Hi&message[tags][]=a is an '
                           'object holding a list. At most 10 levels, 1,000 parameters, '
                           '100 list items.',
            'properties': {'message': {'type': 'string'}}}},
    },
}
_MESSAGE_BODY = {**_BROADCAST_BODY, 'content': {
    **_BROADCAST_BODY['content'],
    'application/json': {'schema': {
        'type': 'object', 'required': ['message'],
        'properties': {'message': _ANY_JSON_BUT_NULL, 'fallback_after': _FALLBACK_AFTER}}}}}
_BROADCASTED = _json({'type': 'object', 'required': ['id'],
                      'properties': {'id': _MESSAGE_ID}},
                     'Kept in the history and sent; `id` is the message id the sockets see.')
_PUSHED = _json({'type': 'object', 'required': ['id', 'online'],
                 'properties': {'id': _MESSAGE_ID, 'online': _ONLINE}},
                'Kept in the history and sent; `id` is the message id the sockets see.')
_EVENT_USER = {'type': 'object', 'required': ['userId'],
               'properties': {'userId': {'type': 'string'}}}


def _event(event_type, data, summary):
    """A webhook of the document's `webhooks` section."""
    return {'post': {
        'operationId': event_type.replace('.', '_'), 'summary': summary,
        'parameters': [{
            'name': 'X-Notification-Signature', 'in': 'header', 'required': True,
            'schema': {'type': 'string', 'pattern': '^t=[0-9]+,v1=[0-9a-f]{64}$'},
            'description': 'The hex HMAC-SHA256, keyed with WEBHOOK_SECRET, of '
                           '"<t>.<raw body>"; reject a t far from now (a replay).'}],
        'requestBody': {'required': True, 'content': {'application/json': {'schema': {
            'type': 'object', 'required': ['id', 'type', 'ts', 'data'],
            'properties': {
                'id': {'type': 'string', 'description': 'The same on every retry: '
                                                        'de-duplicate on it.'},
                'type': {'const': event_type},
                'ts': {'type': 'integer', 'description': 'When it happened, ms since '
                                                         'the epoch.'},
                'data': data}}}}},
        'responses': {'2XX': {'description': 'Received; anything else (or no answer in '
                                             '10 s) is retried with backoff.'}}}}
_SECURED = [{'token': []}]

DOCUMENT = {
    'openapi': '3.1.0',
    'info': {
        'title': 'notification-socketio',
        'version': __version__,
        'description': 'Push JSON messages to every open browser tab of a user over '
                       'Socket.IO. Socket.IO clients connect to /socket.io/ and emit '
                       '`register(userId, connectionId)` (or `register(token)`); see '
                       'README.md. The `webhooks` are POSTed to each WEBHOOK_URL.',
    },
    'webhooks': {
        'user.online': _event('user.online', _EVENT_USER,
                              'A user went from no live socket, on any process, to one.'),
        'user.offline': _event('user.offline', _EVENT_USER,
                               'The user\'s last live socket has been gone for '
                               'OFFLINE_GRACE seconds.'),
        'message.unacknowledged': _event('message.unacknowledged', {
            'type': 'object', 'required': ['userId', 'id', 'message'],
            'properties': {'userId': {'type': 'string'}, 'id': _MESSAGE_ID,
                           'message': _ANY_JSON_BUT_NULL}},
            'A push with `fallback_after`: no socket of the user acknowledged it in time.'),
    },
    'components': {
        'securitySchemes': {'token': {'type': 'apiKey', 'in': 'header',
                                      'name': 'X-AUTH-TOKEN'}},
        'schemas': {'Error': {'type': 'object', 'required': ['error'],
                              'properties': {'error': {'type': 'string'}}}},
    },
    'paths': {
        '/api/status/ping': {'get': {
            'operationId': 'ping', 'summary': 'Liveness.', 'security': [],
            'responses': {'200': {'description': 'Alive.', 'content': {
                'text/plain': {'schema': {'type': 'string', 'const': 'pong'}}}}}}},
        '/api/status/info': {'get': {
            'operationId': 'info', 'summary': 'Name and version.', 'security': [],
            'responses': {'200': _json({
                'type': 'object', 'required': ['name', 'version'],
                'properties': {'name': {'type': 'string'}, 'version': {'type': 'string'}}},
                'The server.')}}},
        '/api/{userId}/register': {
            'parameters': [_USER_ID, _CONNECTION_ID],
            'put': {
                'operationId': 'register', 'security': _SECURED,
                'summary': 'Create or refresh a registration for one socket to claim.',
                'responses': {
                    '200': _json({'type': 'object', 'required': ['ok', 'ttl'], 'properties': {
                        'ok': {'const': True}, 'ttl': {'type': 'number'}}},
                        'Registered; it expires `ttl` seconds after no socket holds it.'),
                    '400': _INVALID, '401': _UNAUTHORIZED,
                    '429': _error('The user has MAX_SESSIONS_PER_USER registrations, all '
                                  'held by live sockets; nothing was changed.'),
                    '503': _UNAVAILABLE}},
            'delete': {
                'operationId': 'revoke', 'security': _SECURED,
                'summary': 'Revoke a registration: its socket is disconnected and it can '
                           'no longer be claimed.',
                'responses': {'200': _OK, '400': _INVALID, '401': _UNAUTHORIZED,
                              '503': _UNAVAILABLE}},
        },
        '/api/{userId}/push': {
            'parameters': [_USER_ID],
            'post': {
                'operationId': 'push', 'security': _SECURED,
                'summary': "Send a message to every socket of the user.",
                'parameters': [_IDEMPOTENCY_KEY],
                'requestBody': _MESSAGE_BODY,
                'responses': {'200': _PUSHED, **_PUSH_FAILURES}},
        },
        '/api/{userId}/messages/{id}': {
            'parameters': [_USER_ID, {'name': 'id', 'in': 'path', 'required': True,
                                      'schema': _MESSAGE_ID}],
            'get': {
                'operationId': 'message_status', 'security': _SECURED,
                'summary': 'Whether a socket of the user acknowledged a message.',
                'responses': {
                    '200': _json({
                        'type': 'object',
                        'required': ['id', 'userId', 'acknowledged', 'inHistory'],
                        'properties': {
                            'id': _MESSAGE_ID, 'userId': {'type': 'string'},
                            'acknowledged': {'type': 'boolean', 'description':
                                             'A socket of the user confirmed receiving it '
                                             '(Engine.IO heartbeat).'},
                            'inHistory': {'type': 'boolean', 'description':
                                          'A reconnecting socket would still get it.'}}},
                        'What is known of the message.'),
                    '400': _INVALID, '401': _UNAUTHORIZED,
                    '404': _error('The user never had this message, or it left every '
                                  'record (the newest 1,000 per user, kept an hour or '
                                  'HISTORY_TTL).'),
                    '503': _UNAVAILABLE}},
        },
        '/api/push': {'post': {
            'operationId': 'push_many', 'security': _SECURED,
            'parameters': [_IDEMPOTENCY_KEY],
            'summary': 'Send one message to many users.',
            'requestBody': {'required': True, 'content': {'application/json': {'schema': {
                'type': 'object', 'required': ['users', 'message'], 'properties': {
                    'users': {'type': 'array', 'minItems': 1, 'items': _ID},
                    'message': _ANY_JSON_BUT_NULL, 'fallback_after': _FALLBACK_AFTER}}}}},
            'responses': {
                '200': _json({'type': 'object', 'required': ['ids', 'online'], 'properties': {
                    'ids': {'type': 'object', 'additionalProperties': _MESSAGE_ID},
                    'online': {'type': 'object', 'additionalProperties': _ONLINE}}},
                    'Sent; the message id of each user, and its sockets.'),
                **_PUSH_FAILURES}}},
        '/api/broadcast': {'post': {
            'operationId': 'broadcast', 'security': _SECURED,
            'summary': 'Send one message to every registered session, whoever its user.',
            'parameters': [_IDEMPOTENCY_KEY],
            'requestBody': _BROADCAST_BODY,
            'responses': {'200': _BROADCASTED, **_PUSH_FAILURES}}},
        '/api/webhooks': {'get': {
            'operationId': 'webhooks', 'security': _SECURED,
            'summary': 'The webhook URLs, the calls waiting, and this process\'s latest '
                       'calls (the console shows them).',
            'responses': {
                '200': _json({
                    'type': 'object', 'required': ['urls', 'queued', 'recent'],
                    'properties': {
                        'urls': {'type': 'array', 'items': {'type': 'string'},
                                 'description': 'Without credentials or query string.'},
                        'queued': {'type': ['integer', 'null'], 'minimum': 0},
                        'recent': {'type': 'array', 'items': {'type': 'object'}}}},
                    'Webhooks.'),
                '401': _UNAUTHORIZED}}},
        '/api/{userId}/sessions': {
            'parameters': [_USER_ID],
            'get': {
                'operationId': 'sessions', 'security': _SECURED,
                'summary': "The user's presence.",
                'responses': {
                    '200': _json({
                        'type': 'object', 'required': ['userId', 'online', 'registered'],
                        'properties': {
                            'userId': {'type': 'string'},
                            'online': {'type': 'integer', 'minimum': 0,
                                       'description': 'Registrations held by a live socket.'},
                            'registered': {'type': 'integer', 'minimum': 0,
                                           'description': 'Valid registrations.'}}},
                        'Presence.'),
                    '400': _INVALID, '401': _UNAUTHORIZED, '503': _UNAVAILABLE}},
            'delete': {
                'operationId': 'revoke_all', 'security': _SECURED,
                'summary': 'Revoke every registration of the user and disconnect its sockets.',
                'responses': {'200': _OK, '400': _INVALID, '401': _UNAUTHORIZED,
                              '503': _UNAVAILABLE}},
        },
        '/api/openapi.json': {'get': {
            'operationId': 'openapi', 'summary': 'This document.', 'security': [],
            'responses': {'200': _json({'type': 'object'}, 'The OpenAPI document.')}}},
        '/metrics': {'get': {
            'operationId': 'metrics', 'summary': 'Prometheus metrics of this process.',
            'security': [],
            'responses': {'200': {'description': 'The Prometheus text format.', 'content': {
                'text/plain': {'schema': {'type': 'string'}}}}}}},
        '/console': {'get': {
            'operationId': 'console', 'security': [],
            'summary': 'A page to try the server in a browser (the token stays in the page).',
            'description': 'Absent (404, like any unknown route) when CONSOLE=0.',
            'responses': {
                '200': {'description': 'The console page.',
                        'content': {'text/html': {'schema': {'type': 'string'}}}}}}},
    },
}


@bp.get('/api/openapi.json')
def openapi():
    """The OpenAPI document of every route."""
    return DOCUMENT
