"""A Python client for backends: the REST API with timeouts, retries and typed errors.

    from notification_socketio.client import NotificationClient
    notifications = NotificationClient('http://localhost:3000', token=os.environ['NOTIFY_TOKEN'])
    notifications.push(user_id, {'title': 'Build finished'})

Every push carries an Idempotency-Key (a new UUID, or the one you pass), so a push whose
answer was lost (a timeout, a dropped connection, a 504 "outcome unknown") is retried
safely: the server answers a repeat with the first push's ids and sends nothing twice.
Pass your own key (a job id, say) to make a push idempotent across your own retries too.

`connection_token` signs a connection token that a page registers with, without a REST
call per page (the server needs CONNECTION_SECRET or CONNECTION_PUBLIC_KEY).
"""
import secrets
import time
import uuid
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry


def connection_token(key, user_id, connection_id=None, ttl=300, algorithm='HS256'):
    """A signed connection token for the page: `socket.emit('register', token, ack)`.

    `key` is CONNECTION_SECRET for HS256, or the PEM private key (RS256, ES256) whose
    public key the server has as CONNECTION_PUBLIC_KEY. The token names the user and a
    connectionId (made up if None: revoke it with `revoke(user_id, connection_id)`, so keep
    it), and expires after `ttl` seconds (at most the server's REGISTRATION_TTL).
    Needs PyJWT (`pip install "PyJWT[crypto]"`).
    """
    import jwt
    now = int(time.time())
    return jwt.encode({'sub': user_id, 'jti': connection_id or secrets.token_urlsafe(24),
                       'iat': now, 'exp': now + int(ttl)}, key, algorithm=algorithm)


class NotificationError(Exception):
    """The server refused or could not be reached; `status` is the HTTP status, if any."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class Unauthorized(NotificationError):
    """401: the token is wrong."""


class BadRequest(NotificationError):
    """400 or 413: the request itself is wrong (too large, malformed); do not retry it."""


class Unavailable(NotificationError):
    """503, 504 or no answer, after every retry: try again later (with the same key).

    `status` 503: nothing was done. 504 or None: the outcome is unknown; a push retried
    with the same `idempotency_key` is made at most once.
    """


class Conflict(NotificationError):
    """409: the idempotency key was used before for another push."""


class NotificationClient:
    """Calls one notification-socketio server (or a load balancer in front of several).

    Every call times out after `timeout` seconds, and is retried `retries` times with
    backoff when it may not have happened: no connection, no answer, 503 (nothing was
    done) or 504 (the outcome is unknown). Registrations, presence and revocations are
    idempotent by nature, and pushes by their Idempotency-Key.
    """

    def __init__(self, url, token, timeout=5.0, retries=3, session=None):
        self.url = url.rstrip('/')
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers['X-AUTH-TOKEN'] = token
        retry = Retry(total=retries, connect=retries, read=retries, status=retries,
                      backoff_factor=0.2, status_forcelist=[503, 504], allowed_methods=None,
                      raise_on_status=False)
        adapter = HTTPAdapter(max_retries=retry)
        self.session.mount('http://', adapter)
        self.session.mount('https://', adapter)

    def register(self, user_id, connection_id=None):
        """Register a connection for the user; return its connectionId (made up if None).

        Hand the connectionId to the browser, which claims it with `register`.
        """
        connection_id = connection_id or secrets.token_urlsafe(24)
        self._call('PUT', f'/api/{_path(user_id)}/register',
                   params={'connectionId': connection_id})
        return connection_id

    def push(self, user_id, message, idempotency_key=None, fallback_after=None):
        """Send `message` (any JSON value but None) to the user; return its message id.

        With `fallback_after` (seconds), a `message.unacknowledged` webhook follows if no
        socket of the user acknowledged it by then.
        """
        body = {'message': message}
        if fallback_after is not None:
            body['fallback_after'] = fallback_after
        return self._push(f'/api/{_path(user_id)}/push', body, idempotency_key)['id']

    def push_many(self, user_ids, message, idempotency_key=None):
        """Send one message to many users; return {userId: message id}."""
        return self._push('/api/push', {'users': list(user_ids), 'message': message},
                          idempotency_key)['ids']

    def broadcast(self, message, idempotency_key=None):
        """Send one message to every registered session; return its message id."""
        return self._push('/api/broadcast', {'message': message}, idempotency_key)['id']

    def _push(self, path, body, idempotency_key):
        key = idempotency_key or str(uuid.uuid4())
        return self._call('POST', path, json=body, headers={'Idempotency-Key': key})

    def message(self, user_id, message_id):
        """Whether a socket of the user acknowledged a message, and whether it is still in
        the history: {'id', 'userId', 'acknowledged', 'inHistory'}; NotificationError with
        status 404 if the server keeps no record of it."""
        return self._call('GET', f'/api/{_path(user_id)}/messages/{_path(message_id)}')

    def sessions(self, user_id):
        """The user's presence: {'userId': ..., 'online': n, 'registered': n}."""
        return self._call('GET', f'/api/{_path(user_id)}/sessions')

    def revoke(self, user_id, connection_id=None):
        """Revoke one registration of the user, or all of them; their sockets are dropped."""
        if connection_id is None:
            self._call('DELETE', f'/api/{_path(user_id)}/sessions')
        else:
            self._call('DELETE', f'/api/{_path(user_id)}/register',
                       params={'connectionId': connection_id})

    def _call(self, method, path, **kwargs):
        try:
            response = self.session.request(method, self.url + path, timeout=self.timeout,
                                            **kwargs)
        except requests.RequestException as error:
            raise Unavailable(f'{method} {path}: {error}') from error
        if response.status_code == 200:
            return response.json()
        try:
            reason = response.json()['error']
        except (ValueError, KeyError, TypeError):
            reason = response.text[:200] or response.reason
        error_class = {401: Unauthorized, 400: BadRequest, 409: Conflict, 413: BadRequest,
                       503: Unavailable, 504: Unavailable}.get(response.status_code,
                                                               NotificationError)
        raise error_class(f'{method} {path}: {response.status_code} {reason}',
                          response.status_code)

    def close(self):
        """Close the connections kept open."""
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _path(user_id):
    """A userId as one path segment: '/' and everything else percent-encoded."""
    return quote(user_id, safe='')
