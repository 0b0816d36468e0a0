"""Configuration from the environment."""
import pytest

from notification_socketio.config import Config, ConfigError


def test_defaults_need_only_a_token():
    config = Config.from_env({'AUTH_TOKEN': 'secret'})
    assert config.auth_tokens == ('secret',)
    assert (config.port, config.redis_url, config.cors_allowed_origins) == (3000, None, '*')
    assert (config.registration_ttl, config.history_size, config.history_ttl) == (86400, 100, 300)
    assert (config.max_message_bytes, config.log_format, config.console) == (65536, 'text', True)
    assert config.long_poll_gather == 0.15


@pytest.mark.parametrize('value', [None, '', ' ', ',', ' , '])
def test_no_token_means_no_server(value):
    env = {} if value is None else {'AUTH_TOKEN': value}
    with pytest.raises(ConfigError, match='AUTH_TOKEN'):
        Config.from_env(env)


def test_several_tokens_for_rotation():
    assert Config.from_env({'AUTH_TOKEN': 'old, new,'}).auth_tokens == ('old', 'new')


def test_values_are_read():
    config = Config.from_env({
        'AUTH_TOKEN': 't', 'PORT': '8080', 'REDIS_URL': 'rediss://h:6380/1',
        'CORS_ALLOWED_ORIGINS': 'https://a.example, http://b.example:8000/',
        'REGISTRATION_TTL': '10', 'HISTORY_SIZE': '0', 'HISTORY_TTL': '5',
        'MAX_MESSAGE_BYTES': '1024', 'LOG_FORMAT': 'JSON', 'CONSOLE': '0',
        'LONG_POLL_GATHER': '0'})
    assert config.port == 8080 and config.redis_url == 'rediss://h:6380/1'
    assert config.cors_allowed_origins == ['https://a.example', 'http://b.example:8000']
    assert (config.registration_ttl, config.history_size, config.history_ttl) == (10, 0, 5)
    assert config.max_message_bytes == 1024 and config.log_format == 'json'
    assert config.console is False and config.long_poll_gather == 0


@pytest.mark.parametrize('url', [
    'redis://h:6379/0', 'rediss://user:pw@h:6380/1', 'redis+sentinel://a:26379,b:26379/0/main',
    'rediss+sentinel://:pw@a:26379/0/main', 'redis+cluster://a:7000,b:7001',
    'rediss+cluster://user:pw@[::1]:7000',
])
def test_redis_urls_for_one_server_sentinel_and_cluster(url):
    assert Config.from_env({'AUTH_TOKEN': 't', 'REDIS_URL': url}).redis_url == url


@pytest.mark.parametrize('name, value', [
    ('PORT', 'eighty'), ('PORT', '0'), ('PORT', '70000'), ('REGISTRATION_TTL', '0'),
    ('HISTORY_SIZE', '-1'), ('MAX_MESSAGE_BYTES', '1'), ('LOG_FORMAT', 'xml'),
    ('CONSOLE', 'maybe'), ('REDIS_URL', 'http://localhost:6379'),
    ('REDIS_URL', 'redis+sentinel://h:26379/0'), ('REDIS_URL', 'redis+cluster://h'),
    ('REDIS_URL', 'redis+cluster://h:7000,:7001'),
    ('CORS_ALLOWED_ORIGINS', 'example.com'), ('PING_INTERVAL', '0'),
    ('REDIS_WAIT_REPLICAS', '-1'), ('REDIS_WAIT_REPLICAS', 'one'),
    ('REDIS_CLUSTER_SHARDS', '0'), ('REDIS_CLUSTER_SHARDS', '1025'),
    ('LONG_POLL_GATHER', '-0.1'), ('LONG_POLL_GATHER', '1.5'), ('LONG_POLL_GATHER', 'soon'),
    ('LONG_POLL_GATHER', 'nan'),
])
def test_wrong_values_are_refused_by_name(name, value):
    with pytest.raises(ConfigError, match=name):
        Config.from_env({'AUTH_TOKEN': 't', name: value})


def test_waiting_for_replicas_needs_redis():
    with pytest.raises(ConfigError, match='REDIS_WAIT_REPLICAS needs REDIS_URL'):
        Config.from_env({'AUTH_TOKEN': 't', 'REDIS_WAIT_REPLICAS': '1'})
    assert Config.from_env({'AUTH_TOKEN': 't', 'REDIS_URL': 'redis://h:6379/0',
                            'REDIS_WAIT_REPLICAS': '1'}).redis_wait_replicas == 1
    assert Config.from_env({'AUTH_TOKEN': 't'}).redis_wait_replicas == 0


def test_shards_are_a_cluster_setting():
    cluster = {'AUTH_TOKEN': 't', 'REDIS_URL': 'redis+cluster://a:7000'}
    assert Config.from_env(cluster).redis_cluster_shards is None   # the state's default
    assert Config.from_env({**cluster, 'REDIS_CLUSTER_SHARDS': '4'}).redis_cluster_shards == 4
    for url in (None, 'redis://h:6379/0', 'redis+sentinel://a:26379/0/main'):
        env = {'AUTH_TOKEN': 't', 'REDIS_CLUSTER_SHARDS': '4', **({'REDIS_URL': url} if url
                                                                   else {})}
        with pytest.raises(ConfigError, match='REDIS_CLUSTER_SHARDS applies to a Redis '
                                              'Cluster only'):
            Config.from_env(env)
