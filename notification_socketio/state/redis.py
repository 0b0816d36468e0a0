"""State in Redis: any number of processes on any number of hosts act as one.

A registration is a hash `nsio:reg:<len(userId)>:<userId>:<connectionId>` with its holder's
sid, the id up to which it has received and when its socket last answered a heartbeat;
`nsio:unheld:<userId>` and `nsio:held:<userId>` index a user's connectionIds. A user's history is a stream
`nsio:history:<userId>` (broadcasts: `nsio:broadcast`) whose entry ids are the message
ids, drawn from one sequence (`nsio:last-id`) so that any two can be compared. Appending
and publishing on the messages channel happen in one script: every process sees the
messages in id order, and a push is either kept and sent, or neither. A push with an
Idempotency-Key leaves `nsio:idempotency:<key>` in the same script.

A push is sent to Redis once and never retried: if Redis does not answer, it may have
run it, so the caller learns that the outcome is unknown (OutcomeUnknown). Other calls
can be repeated safely and are retried once on a broken connection; none waits longer
than REDIS_TIMEOUT for an answer.
"""
import functools
import json

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .. import jsoncodec
from .base import (EVERYONE, Appended, Claim, Entry, IdempotencyConflict, NotRegistered,
                   OutcomeUnknown, Sessions, State, StateUnavailable, TooManySessions,
                   parse_message_id)

CHANNEL = 'notification-socketio'
#: Seconds a call waits for Redis to answer.
REDIS_TIMEOUT = 3
_KEY_FLOOR_MS = 1000   # PEXPIRE 0 would delete a stream at once

_NOW_MS = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
"""

# A user's registrations are also in two sorted sets, so that no script walks them all:
# `unheld` scored by when each expires, `held` by when its socket last answered a
# heartbeat (its hash expires REGISTRATION_TTL after that). Both are cleaned of what
# expired (a range, as long as what expired) before they are counted.
# Each script using it names its `unheld` and `held` keys and the ttl `ttl_ms` first.
_FORGET_EXPIRED = """
redis.call('ZREMRANGEBYSCORE', unheld, '-inf', now_ms)
redis.call('ZREMRANGEBYSCORE', held, '-inf', now_ms - ttl_ms)
"""
_KEEP_INDEXES = """
for i = 2, 3 do
  if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  end
end
"""

# KEYS: registration, unheld, held, last id.
# ARGV: connectionId, ttl ms, registration key prefix, max sessions per user.
# Returns 0, or -1 when the user's registrations are all held (TooManySessions).
_REGISTER = _NOW_MS + """
local unheld, held, ttl_ms = KEYS[2], KEYS[3], tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'holder') == '' then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[2]), ARGV[1])
  end
else
""" + _FORGET_EXPIRED + """
  if redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[4]) then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
    if not oldest then return -1 end
    redis.call('DEL', ARGV[3] .. oldest)
    redis.call('ZREM', KEYS[2], oldest)
  end
  redis.call('HSET', KEYS[1], 'holder', '', 'mark', redis.call('GET', KEYS[4]) or '',
             'seen', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[2]), ARGV[1])
end
""" + _KEEP_INDEXES + """
return 0
"""

# KEYS: registration, unheld, held. ARGV: connectionId, ttl ms, sid.
_CLAIM = _NOW_MS + """
local registration = redis.call('HMGET', KEYS[1], 'holder', 'mark')
if not registration[1] then return false end
redis.call('HSET', KEYS[1], 'holder', ARGV[3], 'seen', now_ms)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], now_ms, ARGV[1])
""" + _KEEP_INDEXES + """
return registration
"""

# KEYS: registration, unheld, held. ARGV: connectionId, ttl ms, sid, message id or ''.
_CONFIRM = _NOW_MS + """
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[3] then return 0 end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'mark', ARGV[4]) end
redis.call('HSET', KEYS[1], 'seen', now_ms)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[3], now_ms, ARGV[1])
""" + _KEEP_INDEXES + """
return 1
"""

# KEYS: registration, unheld, held. ARGV: connectionId, ttl ms, sid.
_RELEASE = _NOW_MS + """
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'holder', '')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[2]), ARGV[1])
""" + _KEEP_INDEXES + """
return 1
"""

# KEYS: unheld, held. ARGV: registration key prefix, connectionId or '' for all.
# Revoking all of a user's registrations deletes each: as many steps as there are.
_REVOKE = """
local connection_ids = {ARGV[2]}
if ARGV[2] == '' then
  connection_ids = redis.call('ZRANGE', KEYS[1], 0, -1)
  for _, connection_id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    table.insert(connection_ids, connection_id)
  end
end
local holders = {}
for _, connection_id in ipairs(connection_ids) do
  local key = ARGV[1] .. connection_id
  local holder = redis.call('HGET', key, 'holder')
  if holder and holder ~= '' then table.insert(holders, holder) end
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[1], connection_id)
  redis.call('ZREM', KEYS[2], connection_id)
end
return holders
"""

# KEYS: unheld, held. ARGV: online timeout ms, ttl ms.
_SESSIONS = _NOW_MS + """
local unheld, held, ttl_ms = KEYS[1], KEYS[2], tonumber(ARGV[2])
""" + _FORGET_EXPIRED + """
local online = redis.call('ZCOUNT', held, now_ms - tonumber(ARGV[1]) + 1, '+inf')
return {online, redis.call('ZCARD', unheld) + redis.call('ZCARD', held)}
"""

# KEYS: last id, idempotency record, then per target its history stream and its user's
# two indexes (a user's history is kept only while the user has registrations).
# ARGV: max length, key ttl ms, payload, channel, fingerprint ('' for no key), record ttl
# ms, then one target (as JSON, null for a broadcast) per target.
# Returns {'new', ids...}, {'repeated', ids...} or {'conflict'}.
_APPEND = _NOW_MS + """
if ARGV[5] ~= '' then
  local record = redis.call('GET', KEYS[2])
  if record then
    local fingerprint, ids = string.match(record, '^(%S*) (.*)$')
    if fingerprint ~= ARGV[5] then return {'conflict'} end
    local found = {'repeated'}
    for id in string.gmatch(ids, '[^,]+') do table.insert(found, id) end
    return found
  end
end
local last = redis.call('GET', KEYS[1])
local ms, seq = now_ms, -1
if last then
  local last_ms, last_seq = string.match(last, '^(%d+)-(%d+)$')
  last_ms, last_seq = tonumber(last_ms), tonumber(last_seq)
  if last_ms >= ms then ms, seq = last_ms, last_seq end
end
local ids = {}
for i = 1, (#KEYS - 2) / 3 do
  seq = seq + 1
  local id = string.format('%d-%d', ms, seq)
  local target, stream = ARGV[6 + i], KEYS[3 * i]
  if ARGV[1] ~= '0' and (target == 'null'
                         or redis.call('EXISTS', KEYS[3 * i + 1], KEYS[3 * i + 2]) > 0) then
    redis.call('XADD', stream, 'MAXLEN', ARGV[1], id, 'm', ARGV[3])
    redis.call('PEXPIRE', stream, ARGV[2])
  end
  redis.call('PUBLISH', ARGV[4], id .. ' ' .. target .. '\\n' .. ARGV[3])
  ids[i] = id
end
redis.call('SET', KEYS[1], ids[#ids])
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[2], ARGV[5] .. ' ' .. table.concat(ids, ','), 'PX', ARGV[6])
end
table.insert(ids, 1, 'new')
return ids
"""

# KEYS: the user's history, the broadcasts'. ARGV: after ms, after seq ('' for none), ttl ms.
_HISTORY = _NOW_MS + """
local start_ms, start_seq = now_ms - tonumber(ARGV[3]) + 1, 0
if ARGV[1] ~= '' then
  local after_ms, after_seq = tonumber(ARGV[1]), tonumber(ARGV[2]) + 1
  if after_ms > start_ms or (after_ms == start_ms and after_seq > start_seq) then
    start_ms, start_seq = after_ms, after_seq
  end
end
local start = string.format('%d-%d', start_ms, start_seq)
return {redis.call('XRANGE', KEYS[1], start, '+'), redis.call('XRANGE', KEYS[2], start, '+')}
"""


def _unavailable_on_error(method):
    """Turn a Redis failure into StateUnavailable: the caller answers 503 and may retry."""
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except redis.RedisError as error:
            self.failures += 1
            raise StateUnavailable(f'Redis: {error}') from error
    return wrapped


class RedisState(State):
    """The shared state of every process, in Redis."""

    local = False
    LAST_ID_KEY = 'nsio:last-id'
    BROADCAST_KEY = 'nsio:broadcast'
    NO_IDEMPOTENCY_KEY = 'nsio:idempotency'   # declared, never written

    def __init__(self, config, channel=CHANNEL):
        super().__init__(config)
        #: python-socketio's channel; ours carries the messages (fanout.py reads both).
        self.channel = channel
        self.messages_channel = channel + ':messages'
        self.redis = redis.Redis.from_url(
            config.redis_url, decode_responses=True, socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT, health_check_interval=30,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))
        self._ttl_ms = int(self.registration_ttl * 1000)
        self._history_ms = int(self.history_ttl * 1000)
        self._idempotency_ms = int(self.idempotency_ttl * 1000)
        self._online_ms = int(self.online_timeout * 1000)
        self._scripts = {name: self.redis.register_script(source) for name, source in (
            ('register', _REGISTER), ('claim', _CLAIM), ('confirm', _CONFIRM),
            ('release', _RELEASE), ('revoke', _REVOKE), ('sessions', _SESSIONS),
            ('append', _APPEND), ('history', _HISTORY))}

    @staticmethod
    def registration_prefix(user_id):
        """Registration keys of a user; the length keeps `a:b`+`c` apart from `a`+`b:c`."""
        return f'nsio:reg:{len(user_id)}:{user_id}:'

    @classmethod
    def registration_key(cls, user_id, connection_id):
        """The key of one registration."""
        return cls.registration_prefix(user_id) + connection_id

    @staticmethod
    def index_keys(user_id):
        """The sorted sets of a user's connectionIds: unheld ones, and held ones."""
        return [f'nsio:unheld:{user_id}', f'nsio:held:{user_id}']

    def _registration_keys(self, user_id, connection_id):
        return [self.registration_key(user_id, connection_id), *self.index_keys(user_id)]

    @staticmethod
    def idempotency_key(key):
        """The record of a push made with an Idempotency-Key."""
        return f'nsio:idempotency:{key}'

    @classmethod
    def history_key(cls, target):
        """The stream holding a user's recent messages (or the broadcasts')."""
        return cls.BROADCAST_KEY if target is EVERYONE else f'nsio:history:{target}'

    def _run(self, name, keys, args):
        return self._scripts[name](keys=keys, args=args)

    def _run_once(self, name, keys, args):
        """Send a script to Redis once: nothing retries it, whatever happens.

        StateUnavailable if no connection could be made (nothing was sent); OutcomeUnknown
        if it was sent and no answer came.
        """
        pool = self.redis.connection_pool
        try:
            connection = pool.get_connection()   # connected, or it raises
        except redis.RedisError as error:
            self.failures += 1
            raise StateUnavailable(f'Redis: {error}') from error
        script = self._scripts[name]
        try:
            try:
                connection.send_command('EVALSHA', script.sha, len(keys), *keys, *args)
                return connection.read_response()
            except redis.exceptions.NoScriptError:
                connection.send_command('EVAL', script.script, len(keys), *keys, *args)
                return connection.read_response()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            connection.disconnect()
            self.failures += 1
            raise OutcomeUnknown(f'Redis: {error}') from error
        finally:
            pool.release(connection)

    @_unavailable_on_error
    def register(self, user_id, connection_id):
        if self._run('register', [*self._registration_keys(user_id, connection_id),
                                  self.LAST_ID_KEY],
                     [connection_id, self._ttl_ms, self.registration_prefix(user_id),
                      self.max_sessions]) == -1:
            raise TooManySessions()

    @_unavailable_on_error
    def claim(self, user_id, connection_id, sid):
        found = self._run('claim', self._registration_keys(user_id, connection_id),
                          [connection_id, self._ttl_ms, sid])
        if found is None:
            raise NotRegistered()
        previous, delivered_id = found
        return Claim(previous if previous not in ('', sid) else None, delivered_id or None)

    @_unavailable_on_error
    def confirm(self, user_id, connection_id, sid, message_id):
        self._run('confirm', self._registration_keys(user_id, connection_id),
                  [connection_id, self._ttl_ms, sid, message_id or ''])

    @_unavailable_on_error
    def release(self, user_id, connection_id, sid):
        self._run('release', self._registration_keys(user_id, connection_id),
                  [connection_id, self._ttl_ms, sid])

    @_unavailable_on_error
    def release_many(self, holds):
        """One round trip for all of them (a pipeline), however many there are."""
        pipeline = self.redis.pipeline(transaction=False)
        for user_id, connection_id, sid in holds:
            self._scripts['release'](keys=self._registration_keys(user_id, connection_id),
                                     args=[connection_id, self._ttl_ms, sid],
                                     client=pipeline)
        pipeline.execute()

    @_unavailable_on_error
    def revoke(self, user_id, connection_id=None):
        return self._run('revoke', self.index_keys(user_id),
                         [self.registration_prefix(user_id), connection_id or ''])

    @_unavailable_on_error
    def sessions(self, user_id):
        online, registered = self._run('sessions', self.index_keys(user_id),
                                       [self._online_ms, self._ttl_ms])
        return Sessions(online=online, registered=registered)

    def append(self, targets, message, idempotency=None):
        payload = jsoncodec.dumps(message)
        reply = self._run_once(
            'append', [self.LAST_ID_KEY,
                       self.idempotency_key(idempotency.key) if idempotency
                       else self.NO_IDEMPOTENCY_KEY,
                       *(key for target in targets
                         for key in (self.history_key(target),
                                     *(self.index_keys(target) if target is not EVERYONE
                                       else [self.BROADCAST_KEY] * 2)))],
            [self.history_size if self.history_ttl else 0,
             max(self._history_ms, _KEY_FLOOR_MS), payload, self.messages_channel,
             idempotency.fingerprint if idempotency else '', self._idempotency_ms,
             *map(json.dumps, targets)])
        outcome, *message_ids = reply
        if outcome == 'conflict':
            raise IdempotencyConflict()
        return Appended([Entry(message_id, parse_message_id(message_id)[0], message)
                         for message_id in message_ids], repeated=outcome == 'repeated')

    @_unavailable_on_error
    def history(self, user_id, after_id=None):
        after = parse_message_id(after_id) if after_id is not None else ('', '')
        found = self._run('history', [self.history_key(user_id), self.BROADCAST_KEY],
                          [*after, self._history_ms])
        entries = [(parse_message_id(message_id), jsoncodec.loads(fields[1]))
                   for stream in found for message_id, fields in stream]
        return [Entry(f'{ms}-{seq}', ms, message)
                for (ms, seq), message in sorted(entries, key=lambda pair: pair[0])]

    def close(self):
        self.redis.close()


def decode_published(data):
    """(target, Entry) of a message the append script published (bytes)."""
    head, payload = data.split(b'\n', 1)
    message_id, target = head.decode().split(' ', 1)
    return json.loads(target), Entry(message_id, parse_message_id(message_id)[0],
                                     jsoncodec.loads(payload))
