"""State in Redis: any number of processes on any number of hosts act as one.

A registration is a hash `nsio:reg:<len(userId)>:<userId>:<connectionId>` with its holder's
sid and the id up to which it has received; a user's history is a stream
`nsio:history:<userId>`, whose entry ids are the message ids. Appending a message and
publishing it on the Socket.IO message queue happen in one script, so every process sees
a user's messages in id order and a push is either kept and sent, or neither.
"""
import functools
import json

import redis

from .base import Claim, Entry, NotRegistered, State, StateUnavailable, parse_message_id

#: The host id that marks our deliveries on the Socket.IO channel (see fanout.py).
DELIVERY_HOST = 'notification-socketio'
CHANNEL = 'notification-socketio'
_KEY_FLOOR_MS = 10_000   # a stream key outlives HISTORY_TTL a little, so ids never repeat

_REGISTER = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'holder') == '' then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
  end
  return 0
end
local mark = ''
if redis.call('EXISTS', KEYS[2]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then mark = info[i + 1] end
  end
end
redis.call('HSET', KEYS[1], 'holder', '', 'mark', mark)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

_CLAIM = """
local registration = redis.call('HMGET', KEYS[1], 'holder', 'mark')
if not registration[1] then return false end
redis.call('HSET', KEYS[1], 'holder', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return registration
"""

_CONFIRM = """
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'mark', ARGV[2]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

_RELEASE = """
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'holder', '')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

_APPEND = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'm', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local ms = string.match(id, '^(%d+)-')
redis.call('PUBLISH', ARGV[4], ARGV[5] .. id .. '","ts":' .. ms .. ARGV[6])
return id
"""

_HISTORY = """
local now = redis.call('TIME')
local start_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  - tonumber(ARGV[3]) + 1
local start_seq = 0
if ARGV[1] ~= '' then
  local after_ms, after_seq = tonumber(ARGV[1]), tonumber(ARGV[2]) + 1
  if after_ms > start_ms or (after_ms == start_ms and after_seq > start_seq) then
    start_ms, start_seq = after_ms, after_seq
  end
end
return redis.call('XRANGE', KEYS[1], string.format('%d-%d', start_ms, start_seq), '+')
"""


def _unavailable_on_error(method):
    """Turn a Redis failure into StateUnavailable: the caller answers 503 and may retry."""
    @functools.wraps(method)
    def wrapped(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except redis.RedisError as error:
            raise StateUnavailable(f'Redis: {error}') from error
    return wrapped


class RedisState(State):
    """The shared state of every process, in Redis."""

    local = False

    def __init__(self, config, channel=CHANNEL):
        super().__init__(config)
        self.channel = channel
        self.redis = redis.Redis.from_url(
            config.redis_url, decode_responses=True, socket_timeout=5,
            socket_connect_timeout=5, health_check_interval=30)
        self._ttl_ms = int(self.registration_ttl * 1000)
        self._history_ms = int(self.history_ttl * 1000)
        self._register = self.redis.register_script(_REGISTER)
        self._claim = self.redis.register_script(_CLAIM)
        self._confirm = self.redis.register_script(_CONFIRM)
        self._release = self.redis.register_script(_RELEASE)
        self._append = self.redis.register_script(_APPEND)
        self._history = self.redis.register_script(_HISTORY)

    @staticmethod
    def registration_key(user_id, connection_id):
        """The key of one registration; the length prefix keeps `a:b`+`c` from `a`+`b:c`."""
        return f'nsio:reg:{len(user_id)}:{user_id}:{connection_id}'

    @staticmethod
    def history_key(user_id):
        """The stream holding a user's recent messages."""
        return f'nsio:history:{user_id}'

    @_unavailable_on_error
    def register(self, user_id, connection_id):
        self._register(keys=[self.registration_key(user_id, connection_id),
                             self.history_key(user_id)], args=[self._ttl_ms])

    @_unavailable_on_error
    def claim(self, user_id, connection_id, sid):
        found = self._claim(keys=[self.registration_key(user_id, connection_id)],
                            args=[sid, self._ttl_ms])
        if found is None:
            raise NotRegistered()
        previous, delivered_id = found
        return Claim(previous if previous not in ('', sid) else None, delivered_id or None)

    @_unavailable_on_error
    def confirm(self, user_id, connection_id, sid, message_id):
        self._confirm(keys=[self.registration_key(user_id, connection_id)],
                      args=[sid, message_id or '', self._ttl_ms])

    @_unavailable_on_error
    def release(self, user_id, connection_id, sid):
        self._release(keys=[self.registration_key(user_id, connection_id)],
                      args=[sid, self._ttl_ms])

    @_unavailable_on_error
    def append(self, user_id, message):
        payload = json.dumps(message, ensure_ascii=False, separators=(',', ':'))
        head = ('{"method":"emit","event":"message","host_id":"%s","user":%s,"data":[%s,'
                '{"id":"' % (DELIVERY_HOST, json.dumps(user_id), payload))
        message_id = self._append(
            keys=[self.history_key(user_id)],
            args=[self.history_size if self.history_ttl else 0,
                  max(self._history_ms, _KEY_FLOOR_MS), payload, self.channel, head, '}]}'])
        return Entry(message_id, parse_message_id(message_id)[0], message)

    @_unavailable_on_error
    def history(self, user_id, after_id=None):
        after = parse_message_id(after_id) if after_id is not None else ('', '')
        found = self._history(keys=[self.history_key(user_id)],
                              args=[*after, self._history_ms])
        return [Entry(message_id, parse_message_id(message_id)[0], json.loads(fields[1]))
                for message_id, fields in found]

    def close(self):
        self.redis.close()
