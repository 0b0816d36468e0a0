"""Telling the backend, in the state: presence, fallbacks, message records, token
revocations, the webhook outbox; every backend passes the same tests.

The end-to-end behaviour (real servers, a real receiver) is in tests/test_webhooks.py.
"""
import hashlib
import hmac
import json
import time

import pytest
import redis

from notification_socketio.config import Config, ConfigError
from notification_socketio.state import EVERYONE, Revoked, StateUnavailable
from notification_socketio.state.memory import MemoryState
from notification_socketio.state.redis import RedisState
from notification_socketio.webhooks import MemoryOutbox, backoff, sign, verify

from test_state import (FakeClock, RealClock, backend,  # noqa: F401  (fixtures)
                        redis_url, shared_topologies, users_of_shards)

URLS = ('http://receiver.test/a', 'http://receiver.test/b')
GRACE = 0.4


@pytest.fixture(params=['memory', 'redis', 'cluster', 'sentinel'])
def telling(request):
    """(state, clock) with webhooks on, OFFLINE_GRACE of GRACE seconds."""
    config = dict(webhook_urls=URLS, webhook_secret='s' * 32, offline_grace=GRACE,
                  registration_ttl=60, history_ttl=60, history_size=10)
    if request.param == 'memory':
        clock = FakeClock()
        yield MemoryState(Config.for_testing(**config), clock=clock), clock
        return
    state = RedisState(Config.for_testing(redis_url=redis_url(request), **config))
    yield state, RealClock()
    state.close()


def events(state):
    """The events queued since the last call: (type, data) in order, one per event.

    Each event is queued once per URL, with the same body.
    """
    jobs = state.outbox.take(1000)
    for job in jobs:
        state.outbox.done(job)
    bodies = {}
    for job in jobs:
        bodies.setdefault(job.body, set()).add(job.url)
    assert all(urls == set(URLS) for urls in bodies.values()), bodies
    decoded = sorted((json.loads(body) for body in bodies), key=lambda e: e['ts'])
    assert len({event['id'] for event in decoded}) == len(decoded)
    return [(event['type'], event['data']) for event in decoded]


def test_a_user_goes_online_once_and_offline_after_the_grace(telling):
    state, clock = telling
    state.register('u1', 'c1')
    state.register('u1', 'c2')
    assert events(state) == []
    state.claim('u1', 'c1', 'sid1')
    state.claim('u1', 'c2', 'sid2')
    assert events(state) == [('user.online', {'userId': 'u1'})]
    state.release('u1', 'c1', 'sid1')
    clock.advance(GRACE * 2)
    state.tick()
    assert events(state) == []   # c2 is still held
    state.release('u1', 'c2', 'sid2')
    state.tick()
    assert events(state) == []   # within the grace
    clock.advance(GRACE * 2)
    state.tick()
    assert events(state) == [('user.offline', {'userId': 'u1'})]
    state.tick()
    assert events(state) == []


def test_a_reload_within_the_grace_tells_nothing(telling):
    state, clock = telling
    state.register('u1', 'c1')
    state.claim('u1', 'c1', 'sid1')
    assert events(state) == [('user.online', {'userId': 'u1'})]
    state.release('u1', 'c1', 'sid1')
    clock.advance(GRACE / 4)
    state.claim('u1', 'c1', 'sid2')   # the page came back
    clock.advance(GRACE * 2)
    state.tick()
    assert events(state) == []
    state.release('u1', 'c1', 'sid2')
    clock.advance(GRACE * 2)
    state.tick()
    assert events(state) == [('user.offline', {'userId': 'u1'})]


def test_revoking_the_last_registration_sends_offline(telling):
    state, clock = telling
    state.register('u/1', 'c1')
    state.claim('u/1', 'c1', 'sid1')
    assert events(state) == [('user.online', {'userId': 'u/1'})]
    assert state.revoke('u/1') == ['sid1']
    clock.advance(GRACE * 2)
    state.tick()
    assert events(state) == [('user.offline', {'userId': 'u/1'})]


def test_an_unacknowledged_message_falls_back_and_an_acknowledged_one_does_not(telling):
    state, clock = telling
    state.register('reader', 'c1')
    state.claim('reader', 'c1', 'sid1')
    events(state)
    message = {'title': 'Invoice', 'amount': 12.5, 'tags': ['a', 'é', '"']}
    away = 'away/é😀'
    appended = state.append(['reader', away, EVERYONE], message, fallback_after=1)
    read, unread, _ = (entry.message_id for entry in appended.entries)
    assert appended.online == [1, 0, None]
    state.confirm('reader', 'c1', 'sid1', appended.entries[-1].message_id)
    status = state.message_status('reader', read)
    assert (status.acknowledged, status.in_history) == (True, True)
    status = state.message_status(away, unread)
    assert (status.acknowledged, status.in_history) == (False, False)   # no registration
    clock.advance(0.5)
    state.tick()
    assert events(state) == []
    clock.advance(1)
    state.tick()
    assert events(state) == [('message.unacknowledged',
                              {'userId': away, 'id': unread, 'message': message})]
    state.tick()
    assert events(state) == []


def test_only_the_messages_a_socket_received_are_acknowledged(telling):
    state, _ = telling
    before = state.append(['u1'], 'before the registration').entries[0].message_id
    state.register('u1', 'c1')
    state.claim('u1', 'c1', 'sid1')
    first, second = (state.append(['u1'], text).entries[0].message_id
                     for text in ('first', 'second'))
    state.confirm('u1', 'c1', 'sid1', first)
    assert state.message_status('u1', before).acknowledged is False   # never its to receive
    assert state.message_status('u1', first).acknowledged is True
    assert state.message_status('u1', second).acknowledged is False
    state.confirm('u1', 'c1', 'other-sid', second)   # not its holder: ignored
    assert state.message_status('u1', second).acknowledged is False
    assert state.message_status('u1', '1-0') is None
    assert state.message_status('u2', first) is None
    broadcast = state.append([EVERYONE], 'to all').entries[0].message_id
    assert state.message_status('u1', broadcast) is None   # not one of the user's own


def test_a_token_of_a_revoked_connection_cannot_register_it_again(telling):
    state, clock = telling
    state.register_token('u1', 'c1', clock())
    state.claim('u1', 'c1', 'sid1')
    state.revoke('u1', 'c1')
    with pytest.raises(Revoked):
        state.register_token('u1', 'c1', clock())
    state.register_token('u1', 'c2', clock())   # another connection is not revoked
    state.register('u1', 'c1')                   # the backend registers it again
    state.register_token('u1', 'c1', clock())


def test_revoking_all_refuses_tokens_issued_before_it(telling):
    state, clock = telling
    issued_before = clock() - 5
    state.revoke('u1')
    for issued_at in (issued_before, None):
        with pytest.raises(Revoked):
            state.register_token('u1', 'c9', issued_at)
    state.register_token('u1', 'c9', clock() + 5)
    state.register_token('u2', 'c9', issued_before)


def test_without_webhooks_nothing_is_queued(backend):
    state, clock = backend(offline_grace=0)
    state.register('u1', 'c1')
    state.claim('u1', 'c1', 'sid1')
    state.append(['u1', 'u2'], 'm', fallback_after=1)
    state.release('u1', 'c1', 'sid1')
    clock.advance(1.5)
    state.tick()
    assert state.outbox.take(100) == []


def test_a_signature_is_an_hmac_of_the_timestamp_and_the_body():
    body = b'{"id":"evt_1","type":"user.online"}'
    header = sign('secret', body, 1700000000)
    expected = hmac.new(b'secret', b'1700000000.' + body, hashlib.sha256).hexdigest()
    assert header == f't=1700000000,v1={expected}'
    assert verify('secret', body, header, now=1700000100)
    assert not verify('secret', body + b' ', header, now=1700000100)
    assert not verify('other', body, header, now=1700000100)
    assert not verify('secret', body, header, now=1700000000 + 301)   # a replay, later
    assert not verify('secret', body, 'v1=' + expected, now=1700000000)
    assert not verify('secret', body, None)


def test_backoff_starts_at_a_second_and_is_capped():
    assert [backoff(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_the_memory_queue_drops_its_oldest_event_when_full():
    dropped = []
    outbox = MemoryOutbox(('http://a.test/',), size=3, on_drop=lambda: dropped.append(1))
    for n in range(5):
        outbox.add('user.online', {'userId': f'u{n}'})
    assert len(dropped) == 2
    users = [json.loads(job.body)['data']['userId'] for job in outbox.take(10)]
    assert users == ['u2', 'u3', 'u4']


def test_a_failed_job_comes_back_after_its_backoff_with_the_same_body():
    outbox = MemoryOutbox(('http://a.test/',), size=10)
    outbox.add('user.online', {'userId': 'u1'})
    job, = outbox.take(10)
    assert outbox.take(10) == []   # leased
    outbox.retry(job, time.time() - 1)
    again, = outbox.take(10)
    assert (again.body, again.attempt) == (job.body, 2)
    outbox.done(again)
    assert outbox.queued() == 0


@pytest.mark.parametrize('environ, error', [
    ({'WEBHOOK_URL': 'https://backend.test/hooks'}, 'WEBHOOK_SECRET is not'),
    ({'WEBHOOK_URL': 'ftp://backend.test/', 'WEBHOOK_SECRET': 's' * 32}, 'http(s) URLs'),
    ({'WEBHOOK_URL': 'https://b.test/', 'WEBHOOK_SECRET': 'short'}, 'at least 16'),
    ({'CONNECTION_SECRET': 'too short'}, 'at least 32 bytes'),
    ({'CONNECTION_PUBLIC_KEY': 'not a key'}, 'not a PEM public key'),
    ({'OFFLINE_GRACE': '-1'}, 'OFFLINE_GRACE'),
])
def test_settings_of_telling_the_backend_fail_closed(environ, error):
    with pytest.raises(ConfigError, match=error.replace('(', r'\(').replace(')', r'\)')):
        Config.from_env({'AUTH_TOKEN': 't', **environ})


def test_several_webhook_urls_are_read():
    config = Config.from_env({'AUTH_TOKEN': 't', 'WEBHOOK_SECRET': 's' * 32,
                              'WEBHOOK_URL': 'https://a.test/h, http://b.test:8080/h'})
    assert config.webhook_urls == ('https://a.test/h', 'http://b.test:8080/h')


@pytest.fixture(params=['cluster'])
def cluster_telling(request):
    """A RedisState on the Cluster, webhooks on: its outbox is one per shard."""
    state = RedisState(Config.for_testing(redis_url=redis_url(request), webhook_urls=URLS[:1],
                                          webhook_secret='s' * 32))
    yield state
    state.close()


def test_a_shard_whose_server_fails_holds_back_no_other_shards_events(
        cluster_telling, monkeypatch):
    state = cluster_telling
    up, down = users_of_shards(state, 1, 2)
    for user_id in (up, down):
        state.register(user_id, 'c1')
        state.claim(user_id, 'c1', 'sid-' + user_id)   # user.online, in the user's shard
    run = state._run
    failing = state.keys_of(down).prefix

    def refusing(name, keys, args):
        if keys[0].startswith(failing):
            raise redis.ConnectionError('the shard\'s primary is down (for the test)')
        return run(name, keys, args)
    monkeypatch.setattr(state, '_run', refusing)
    taken = state.outbox.take(100)
    assert [json.loads(job.body)['data']['userId'] for job in taken] == [up]
    state.outbox.done(taken[0])
    with pytest.raises(StateUnavailable):   # nothing to take, and a shard failed
        state.outbox.take(100)

    monkeypatch.setattr(state, '_run', run)
    taken = state.outbox.take(100)
    assert [json.loads(job.body)['data']['userId'] for job in taken] == [down]
