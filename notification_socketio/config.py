"""Configuration: read from the environment once, validated, frozen."""
import dataclasses
import os
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A setting is missing or wrong; the message is one line for the operator."""


#: The socket.io client of the protocol this server speaks: served at /socket.io/ from
#: SOCKETIO_CLIENT_DIR, or its official build on the CDN. /console loads it from the CDN
#: with its SRI hash (the sha384 of the same file in the npm package; tests/test_browser.py
#: checks the two agree) unless a local copy is served.
CLIENT_VERSION = '4.8.1'
CLIENT_CDN = f'https://cdn.socket.io/{CLIENT_VERSION}/'
LOCAL_CLIENT_URL = '/socket.io/socket.io.min.js'
DEFAULT_CLIENT_URL = CLIENT_CDN + 'socket.io.min.js'
DEFAULT_CLIENT_INTEGRITY = 'sha384-mkQ3/7FUtcGyoppY6bz/PORYoGqOl7/aSUMn2ymDOJcapfS6PHqxhRTMh1RR0Q6+'


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of the server, as API.md's configuration table lists it."""

    auth_tokens: tuple
    port: int = 3000
    redis_url: str = None
    redis_wait_replicas: int = 0
    redis_cluster_shards: int = None   # on a Cluster: 16
    cors_allowed_origins: object = '*'
    registration_ttl: int = 86400
    history_size: int = 100
    history_ttl: int = 300
    idempotency_ttl: int = 300
    max_message_bytes: int = 65536
    log_format: str = 'text'
    console: bool = True
    socketio_client_url: str = DEFAULT_CLIENT_URL
    socketio_client_integrity: str = DEFAULT_CLIENT_INTEGRITY
    serve_client: bool = True
    socketio_client_dir: str = None
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    long_poll_gather: float = 0.15
    max_sessions_per_user: int = 10000
    max_register_failures: int = 5
    max_socket_buffer_bytes: int = 1048576
    webhook_urls: tuple = ()
    webhook_secret: str = None
    webhook_retry_for: int = 3600
    webhook_queue_size: int = 10000
    offline_grace: float = 10.0
    connection_secret: str = None
    connection_public_key: str = None

    @classmethod
    def from_env(cls, environ=None):
        """Build the configuration from environment variables (os.environ by default)."""
        env = os.environ if environ is None else environ
        tokens = tuple(t.strip() for t in env.get('AUTH_TOKEN', '').split(',')
                       if t.strip())
        if not tokens:
            raise ConfigError(
                'AUTH_TOKEN is not set: refusing to start with an open API '
                '(set AUTH_TOKEN to one token, or several separated by commas)')
        return cls(
            auth_tokens=tokens,
            port=_int(env, 'PORT', 3000, low=1, high=65535),
            redis_url=_redis_url(env.get('REDIS_URL', '').strip() or None),
            redis_wait_replicas=_int(env, 'REDIS_WAIT_REPLICAS', 0, low=0, high=100),
            redis_cluster_shards=_int(env, 'REDIS_CLUSTER_SHARDS', None, low=1, high=1024),
            cors_allowed_origins=_origins(env.get('CORS_ALLOWED_ORIGINS', '*')),
            registration_ttl=_int(env, 'REGISTRATION_TTL', 86400, low=1),
            history_size=_int(env, 'HISTORY_SIZE', 100, low=0),
            history_ttl=_int(env, 'HISTORY_TTL', 300, low=0),
            idempotency_ttl=_int(env, 'IDEMPOTENCY_TTL', 300, low=1, high=86400 * 7),
            max_message_bytes=_int(env, 'MAX_MESSAGE_BYTES', 65536, low=64),
            log_format=_choice(env, 'LOG_FORMAT', 'text', ('text', 'json')),
            console=_choice(env, 'CONSOLE', '1', ('0', '1')) == '1',
            **_client_script(env),
            serve_client=_choice(env, 'SERVE_CLIENT', '1', ('0', '1')) == '1',
            socketio_client_dir=_client_dir(env.get('SOCKETIO_CLIENT_DIR', '').strip()),
            ping_interval=_float(env, 'PING_INTERVAL', 25.0),
            ping_timeout=_float(env, 'PING_TIMEOUT', 20.0),
            long_poll_gather=_float(env, 'LONG_POLL_GATHER', 0.15, low=0, high=1),
            max_sessions_per_user=_int(env, 'MAX_SESSIONS_PER_USER', 10000, low=1),
            max_register_failures=_int(env, 'MAX_REGISTER_FAILURES', 5, low=1),
            max_socket_buffer_bytes=_int(env, 'MAX_SOCKET_BUFFER_BYTES', 1048576,
                                         low=65536),
            **_webhooks(env),
            offline_grace=_float(env, 'OFFLINE_GRACE', 10.0, low=0),
            **_connection_keys(env),
        )

    def __post_init__(self):
        if self.redis_wait_replicas and not self.redis_url:
            raise ConfigError('REDIS_WAIT_REPLICAS needs REDIS_URL: without Redis there is '
                              'no replica to wait for')
        if self.redis_cluster_shards is not None and not self._on_a_cluster():
            raise ConfigError('REDIS_CLUSTER_SHARDS applies to a Redis Cluster only '
                              '(REDIS_URL redis+cluster://...)')
        if self.max_socket_buffer_bytes < 2 * self.max_message_bytes:
            raise ConfigError('MAX_SOCKET_BUFFER_BYTES must be at least twice '
                              'MAX_MESSAGE_BYTES, or one message would overflow a socket')

    def _on_a_cluster(self):
        from . import redisconn
        return self.redis_url is not None and redisconn.kind(self.redis_url) == 'cluster'

    @classmethod
    def for_testing(cls, **overrides):
        """A valid configuration with one token, for tests and tools."""
        return dataclasses.replace(cls(auth_tokens=('test-token',)), **overrides)


def _int(env, name, default, low=None, high=None):
    raw = env.get(name, '').strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f'{name} must be a whole number, not {raw!r}') from None
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f'at least {low}' if high is None else f'between {low} and {high}'
        raise ConfigError(f'{name} must be {bounds}, not {value}')
    return value


def _float(env, name, default, low=None, high=3600):
    raw = env.get(name, '').strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f'{name} must be a number of seconds, not {raw!r}') from None
    if not (0 < value if low is None else low <= value) or value > high:
        raise ConfigError(f'{name} must be between {low or 0} and {high} seconds, not {raw}')
    return value


def _webhooks(env):
    """WEBHOOK_URL (one or several, comma-separated) and the secret that signs each call."""
    urls = tuple(dict.fromkeys(u.strip() for u in env.get('WEBHOOK_URL', '').split(',')
                               if u.strip()))
    secret = env.get('WEBHOOK_SECRET', '').strip() or None
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ('http', 'https') or not parts.hostname:
            raise ConfigError(f'WEBHOOK_URL entries must be http(s) URLs, not {url!r}')
    if urls and not secret:
        raise ConfigError('WEBHOOK_URL is set but WEBHOOK_SECRET is not: refusing to send '
                          'unsigned webhooks (set WEBHOOK_SECRET to a long random string)')
    if secret and len(secret) < 16:
        raise ConfigError('WEBHOOK_SECRET must be at least 16 characters long')
    return {'webhook_urls': urls, 'webhook_secret': secret,
            'webhook_retry_for': _int(env, 'WEBHOOK_RETRY_FOR', 3600, low=600,
                                      high=7 * 86400),
            'webhook_queue_size': _int(env, 'WEBHOOK_QUEUE_SIZE', 10000, low=100)}


def _connection_keys(env):
    """CONNECTION_SECRET (HS256) and CONNECTION_PUBLIC_KEY (PEM: RS256 or ES256)."""
    secret = env.get('CONNECTION_SECRET', '').strip() or None
    if secret is not None and len(secret.encode()) < 32:
        # RFC 7518 3.2: an HS256 key at least as long as the hash (32 bytes).
        raise ConfigError('CONNECTION_SECRET must be at least 32 bytes long (HS256)')
    public_key = env.get('CONNECTION_PUBLIC_KEY', '').strip() or None
    if public_key is not None:
        from .tokens import load_public_key
        try:
            load_public_key(public_key)
        except ValueError as error:
            raise ConfigError(f'CONNECTION_PUBLIC_KEY: {error}') from None
    return {'connection_secret': secret, 'connection_public_key': public_key}


def _choice(env, name, default, choices):
    value = env.get(name, '').strip().lower() or default
    if value not in choices:
        raise ConfigError(f'{name} must be one of {", ".join(choices)}, not {value!r}')
    return value


def _origins(raw):
    origins = [o.strip().rstrip('/') for o in raw.split(',') if o.strip()]
    if not origins or '*' in origins:
        return '*'
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in ('http', 'https') or not parts.netloc:
            raise ConfigError(
                f'CORS_ALLOWED_ORIGINS entries must look like https://host[:port], '
                f'not {origin!r}')
    return origins


def _client_dir(path):
    """A folder holding the socket.io client's browser builds (socket.io-client's dist/)."""
    if not path:
        return None
    for name in ('socket.io.js', 'socket.io.min.js'):
        if not os.path.isfile(os.path.join(path, name)):
            raise ConfigError(f'SOCKETIO_CLIENT_DIR must be a folder holding the socket.io '
                              f'client\'s builds (socket.io-client/dist); {name} is not in '
                              f'{path!r}')
    return path


def _client_script(env):
    """Where /console loads socket.io from, and the SRI hash the browser checks it against.

    By default the server's own copy, when SOCKETIO_CLIENT_DIR gives one, else the
    official build on the CDN with its hash. A URL of one's own comes with
    `SOCKETIO_CLIENT_INTEGRITY` (sha256/384/512-...) or none.
    """
    local = env.get('SOCKETIO_CLIENT_DIR', '').strip() and \
        env.get('SERVE_CLIENT', '1').strip() != '0'
    url = env.get('SOCKETIO_CLIENT_URL', '').strip() or (
        LOCAL_CLIENT_URL if local else DEFAULT_CLIENT_URL)
    integrity = env.get('SOCKETIO_CLIENT_INTEGRITY', '').strip()
    if url == DEFAULT_CLIENT_URL:
        integrity = integrity or DEFAULT_CLIENT_INTEGRITY
    scheme = urlsplit(url).scheme
    if scheme not in ('http', 'https', '') or url.lower().startswith('javascript:'):
        raise ConfigError(f'SOCKETIO_CLIENT_URL must be an http(s) URL or a path, not {url!r}')
    if integrity and not integrity.startswith(('sha256-', 'sha384-', 'sha512-')):
        raise ConfigError('SOCKETIO_CLIENT_INTEGRITY must look like sha384-<base64>')
    return {'socketio_client_url': url, 'socketio_client_integrity': integrity}


def _redis_url(url):
    if url is None:
        return None
    from . import redisconn
    try:
        redisconn.check(url)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return url
