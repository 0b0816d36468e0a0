"""State in Redis: any number of processes on any number of hosts act as one.

A registration is a hash `nsio:reg:<len(userId)>:<userId>:<connectionId>` with its holder's
sid, the id up to which it has received and when its socket last answered a heartbeat;
`nsio:regs:<userId>` lists a user's connectionIds. A user's history is a stream
`nsio:history:<userId>` (broadcasts: `nsio:broadcast`) whose entry ids are the message
ids, drawn from one sequence (`nsio:last-id`) so that any two can be compared. Appending
and publishing on the Socket.IO message queue happen in one script: every process sees
the messages in id order, and a push is either kept and sent, or neither.
"""
import functools
import json

import redis

from .. import jsoncodec
from .base import (EVERYONE, Claim, Entry, NotRegistered, Sessions, State, StateUnavailable,
                   TooManySessions, parse_message_id)

#: The host id that marks our deliveries on the Socket.IO channel (see fanout.py).
DELIVERY_HOST = 'notification-socketio'
CHANNEL = 'notification-socketio'
_KEY_FLOOR_MS = 1000   # PEXPIRE 0 would delete a stream at once

_NOW_MS = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
"""

# KEYS: registration, user index, last id.
# ARGV: connectionId, ttl ms, registration key prefix, max sessions per user.
# Returns 0, or -1 when the user's registrations are all held (TooManySessions).
_REGISTER = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'holder') == '' then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
  end
else
  if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[4]) then
    local oldest, oldest_ttl, count = nil, nil, 0
    for _, connection_id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
      local holder = redis.call('HGET', ARGV[3] .. connection_id, 'holder')
      if not holder then
        redis.call('SREM', KEYS[2], connection_id)
      else
        count = count + 1
        if holder == '' then
          local ttl = redis.call('PTTL', ARGV[3] .. connection_id)
          if not oldest_ttl or ttl < oldest_ttl then oldest, oldest_ttl = connection_id, ttl end
        end
      end
    end
    if count >= tonumber(ARGV[4]) then
      if not oldest then return -1 end
      redis.call('DEL', ARGV[3] .. oldest)
      redis.call('SREM', KEYS[2], oldest)
    end
  end
  redis.call('HSET', KEYS[1], 'holder', '', 'mark', redis.call('GET', KEYS[3]) or '',
             'seen', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
redis.call('SADD', KEYS[2], ARGV[1])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 0
"""

# KEYS: registration, user index. ARGV: sid, ttl ms.
_CLAIM = _NOW_MS + """
local registration = redis.call('HMGET', KEYS[1], 'holder', 'mark')
if not registration[1] then return false end
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'seen', now_ms)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return registration
"""

# KEYS: registration, user index. ARGV: sid, message id or '', ttl ms.
_CONFIRM = _NOW_MS + """
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'mark', ARGV[2]) end
redis.call('HSET', KEYS[1], 'seen', now_ms)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return 1
"""

# KEYS: registration. ARGV: sid, ttl ms.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'holder', '')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: user index. ARGV: registration key prefix, connectionId or '' for all.
_REVOKE = """
local connection_ids = {ARGV[2]}
if ARGV[2] == '' then connection_ids = redis.call('SMEMBERS', KEYS[1]) end
local holders = {}
for _, connection_id in ipairs(connection_ids) do
  local key = ARGV[1] .. connection_id
  local holder = redis.call('HGET', key, 'holder')
  if holder and holder ~= '' then table.insert(holders, holder) end
  redis.call('DEL', key)
  redis.call('SREM', KEYS[1], connection_id)
end
return holders
"""

# KEYS: user index. ARGV: registration key prefix, online timeout ms.
_SESSIONS = _NOW_MS + """
local online, registered = 0, 0
for _, connection_id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local registration = redis.call('HMGET', ARGV[1] .. connection_id, 'holder', 'seen')
  if not registration[1] then
    redis.call('SREM', KEYS[1], connection_id)
  else
    registered = registered + 1
    if registration[1] ~= '' and now_ms - tonumber(registration[2]) < tonumber(ARGV[2]) then
      online = online + 1
    end
  end
end
return {online, registered}
"""

# KEYS: last id, then one history stream per target.
# ARGV: max length, key ttl ms, payload, channel, head, then one tail per target.
_APPEND = _NOW_MS + """
local last = redis.call('GET', KEYS[1])
local ms, seq = now_ms, -1
if last then
  local last_ms, last_seq = string.match(last, '^(%d+)-(%d+)$')
  last_ms, last_seq = tonumber(last_ms), tonumber(last_seq)
  if last_ms >= ms then ms, seq = last_ms, last_seq end
end
local ids = {}
for i = 2, #KEYS do
  seq = seq + 1
  local id = string.format('%d-%d', ms, seq)
  redis.call('XADD', KEYS[i], 'MAXLEN', ARGV[1], id, 'm', ARGV[3])
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
  redis.call('PUBLISH', ARGV[4], ARGV[5] .. id .. '","ts":' .. string.format('%d', ms)
             .. ARGV[4 + i])
  ids[i - 1] = id
end
redis.call('SET', KEYS[1], ids[#ids])
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

    def __init__(self, config, channel=CHANNEL):
        super().__init__(config)
        self.channel = channel
        self.redis = redis.Redis.from_url(
            config.redis_url, decode_responses=True, socket_timeout=5,
            socket_connect_timeout=5, health_check_interval=30)
        self._ttl_ms = int(self.registration_ttl * 1000)
        self._history_ms = int(self.history_ttl * 1000)
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
    def index_key(user_id):
        """The set of a user's connectionIds."""
        return f'nsio:regs:{user_id}'

    @classmethod
    def history_key(cls, target):
        """The stream holding a user's recent messages (or the broadcasts')."""
        return cls.BROADCAST_KEY if target is EVERYONE else f'nsio:history:{target}'

    def _run(self, name, keys, args):
        return self._scripts[name](keys=keys, args=args)

    @_unavailable_on_error
    def register(self, user_id, connection_id):
        if self._run('register', [self.registration_key(user_id, connection_id),
                                  self.index_key(user_id), self.LAST_ID_KEY],
                     [connection_id, self._ttl_ms, self.registration_prefix(user_id),
                      self.max_sessions]) == -1:
            raise TooManySessions()

    @_unavailable_on_error
    def claim(self, user_id, connection_id, sid):
        found = self._run('claim', [self.registration_key(user_id, connection_id),
                                    self.index_key(user_id)], [sid, self._ttl_ms])
        if found is None:
            raise NotRegistered()
        previous, delivered_id = found
        return Claim(previous if previous not in ('', sid) else None, delivered_id or None)

    @_unavailable_on_error
    def confirm(self, user_id, connection_id, sid, message_id):
        self._run('confirm', [self.registration_key(user_id, connection_id),
                              self.index_key(user_id)], [sid, message_id or '', self._ttl_ms])

    @_unavailable_on_error
    def release(self, user_id, connection_id, sid):
        self._run('release', [self.registration_key(user_id, connection_id)],
                  [sid, self._ttl_ms])

    @_unavailable_on_error
    def revoke(self, user_id, connection_id=None):
        return self._run('revoke', [self.index_key(user_id)],
                         [self.registration_prefix(user_id), connection_id or ''])

    @_unavailable_on_error
    def sessions(self, user_id):
        online, registered = self._run('sessions', [self.index_key(user_id)],
                                       [self.registration_prefix(user_id), self._online_ms])
        return Sessions(online=online, registered=registered)

    @_unavailable_on_error
    def append(self, targets, message):
        payload = jsoncodec.dumps(message)
        head = ('{"method":"emit","event":"message","host_id":"%s","data":[%s,{"id":"'
                % (DELIVERY_HOST, payload))
        tails = ['}],"user":%s}' % json.dumps(target) for target in targets]
        message_ids = self._run(
            'append', [self.LAST_ID_KEY, *map(self.history_key, targets)],
            [self.history_size if self.history_ttl else 0,
             max(self._history_ms, _KEY_FLOOR_MS), payload, self.channel, head, *tails])
        return [Entry(message_id, parse_message_id(message_id)[0], message)
                for message_id in message_ids]

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
