"""State in Redis: any number of processes on any number of hosts act as one.

One server, the primary of a Sentinel set, or a Cluster (redisconn.py reads REDIS_URL).
The key names below start with `nsio:`; on a Cluster the state is split in shards, and
each shard's keys start with its own hash tag instead, `{nsio-<k>.<j>}:`, which puts them
all in one slot (`Keys` and `shard_prefixes` say why). A user's keys are in one shard.

A registration is a hash `nsio:reg:<len(userId)>:<userId>:<connectionId>` with its holder's
sid, the id up to which it has received and when its socket last answered a heartbeat;
`nsio:unheld:<userId>` and `nsio:held:<userId>` index a user's connectionIds. A user's
history is a stream `nsio:history:<userId>` (broadcasts: `nsio:broadcast`) whose entry ids
are the message ids, drawn from one sequence per shard (`nsio:last-id`) so that any two of
a user's can be compared. Appending and publishing on the shard's messages channel happen
in one script: every process sees a shard's messages in id order, and a push is either
kept and sent, or neither. A push with an Idempotency-Key leaves `nsio:idempotency:<key>`
in the same script.

A push is sent to Redis once and never retried: if Redis does not answer, it may have
run it, so the caller learns that the outcome is unknown (OutcomeUnknown). Other calls
can be repeated safely and are retried once on a broken connection; none waits longer
than REDIS_TIMEOUT for an answer.
"""
import collections
import contextlib
import functools
import itertools
import logging
import json
import zlib

import gevent.event
import gevent.hub
import gevent.lock
import gevent.monkey
import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.retry import Retry

from .. import jsoncodec, redisconn, wakeup
from .base import (EVERYONE, MESSAGE_RECORDS, Appended, Claim, Entry, IdempotencyConflict,
                   MessageStatus, NotRegistered, NotReplicated, OutcomeUnknown, Revoked,
                   Sessions, State, StateUnavailable, TooManySessions, parse_message_id)

log = logging.getLogger(__name__)
CHANNEL = 'notification-socketio'
#: Seconds a call waits for Redis to answer.
REDIS_TIMEOUT = 3
_KEY_FLOOR_MS = 1000   # PEXPIRE 0 would delete a stream at once
_LEASE_MS = 30000   # a due presence check or fallback taken by one process, for this long
#: Milliseconds a push waits for REDIS_WAIT_REPLICAS replicas to confirm it.
REPLICA_WAIT_MS = 1000
#: Answers to a script that Redis did not run: it was sent to a server that is no longer
#: the primary of its keys (a failover, a Cluster slot that moved or is being failed over).
_NOT_RUN = (redis.ReadOnlyError, redis.exceptions.AskError, redis.exceptions.TryAgainError,
            redis.exceptions.ClusterDownError)
#: What redis-py's Sentinel connection raises instead of READONLY (tests/test_contract.py).
DEMOTED = 'The previous master is now a slave'


def _failure(error, maybe_made=True):
    """What a failed push is to its caller: StateUnavailable if Redis cannot have run it
    (`maybe_made` false, or refused by a server that is no longer the primary), else
    OutcomeUnknown."""
    refused = isinstance(error, _NOT_RUN) or str(error) == DEMOTED
    return (OutcomeUnknown if maybe_made and not refused else StateUnavailable)(
        f'Redis: {error}')


_NOW_MS = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
"""

# Parses a message id into two numbers; ids compare as (ms, seq).
_IDS = """
local function parse_id(id)
  if not id or id == '' then return -1, -1 end
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function after(a_ms, a_seq, b_ms, b_seq)
  return a_ms > b_ms or (a_ms == b_ms and a_seq > b_seq)
end
"""

# Queues a webhook event for every URL (ARGV `urls`, newline-separated; '' for none): a
# job per URL in the outbox (due jobs, jobs, and the event counter). The data is JSON.
_OUTBOX = """
local function enqueue(due, jobs, seq, urls, now_ms, event_type, data)
  if urls == '' then return end
  local event_id = string.format('evt_%d_%d', now_ms, redis.call('INCR', seq))
  local body = '{"id":"' .. event_id .. '","type":"' .. event_type .. '","ts":' ..
               string.format('%d', now_ms) .. ',"data":' .. data .. '}'
  local i = 0
  for url in string.gmatch(urls, '[^\\n]+') do
    i = i + 1
    local job = event_id .. '#' .. i
    redis.call('HSET', jobs, job, string.format('%d', now_ms) .. ' ' .. url .. '\\n' .. body)
    redis.call('ZADD', due, now_ms, job)
  end
end
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

# KEYS: registration, unheld, held, last id, its revocation, the user's revocation.
# ARGV: connectionId, ttl ms, registration key prefix, max sessions per user, and for a
# connection token the ms it was issued at (-1: unknown), for the backend ''.
# Returns 0, -1 when the user's registrations are all held (TooManySessions), -2 when a
# token's registration was revoked.
_REGISTER = _NOW_MS + """
local unheld, held, ttl_ms = KEYS[2], KEYS[3], tonumber(ARGV[2])
if ARGV[5] == '' then
  redis.call('DEL', KEYS[5])
else
  if redis.call('EXISTS', KEYS[5]) == 1 then return -2 end
  local revoked_all = redis.call('GET', KEYS[6])
  if revoked_all and (ARGV[5] == '-1' or tonumber(ARGV[5]) <= tonumber(revoked_all)) then
    return -2
  end
end
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

# KEYS: registration, unheld, held, the user's presence, presence checks, the outbox (due
# jobs, jobs, event counter). ARGV: connectionId, ttl ms, sid, userId, webhook URLs, ms
# before the presence is checked.
# With webhooks, a user with no presence gets one: `user.online`, in the same step.
_CLAIM = _NOW_MS + _OUTBOX + """
local registration = redis.call('HMGET', KEYS[1], 'holder', 'mark')
if not registration[1] then return false end
redis.call('HSET', KEYS[1], 'holder', ARGV[3], 'seen', now_ms)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], now_ms, ARGV[1])
""" + _KEEP_INDEXES + """
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[5], now_ms + tonumber(ARGV[6]), ARGV[4])
  if redis.call('SET', KEYS[4], '1', 'NX') then
    enqueue(KEYS[6], KEYS[7], KEYS[8], ARGV[5], now_ms, 'user.online',
            '{"userId":' .. cjson.encode(ARGV[4]) .. '}')
  end
end
return registration
"""

# KEYS: registration, unheld, held, the user's message records, acknowledged ones, pending
# fallbacks, fallbacks due, their messages. ARGV: connectionId, ttl ms, sid, message id or
# '', userId, record ttl ms, records kept.
# The user's messages between the previous mark and the new one are acknowledged.
_CONFIRM = _NOW_MS + _IDS + """
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[3] then return 0 end
if ARGV[4] ~= '' then
  local old_ms, old_seq = parse_id(redis.call('HGET', KEYS[1], 'mark'))
  local new_ms, new_seq = parse_id(ARGV[4])
  redis.call('HSET', KEYS[1], 'mark', ARGV[4])
  if after(new_ms, new_seq, old_ms, old_seq) then
    local acked = 0
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], old_ms, new_ms)) do
      local ms, seq = parse_id(id)
      if after(ms, seq, old_ms, old_seq) and not after(ms, seq, new_ms, new_seq) then
        redis.call('ZADD', KEYS[5], ms, id)
        acked = acked + 1
      end
    end
    if acked > 0 then
      redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now_ms - tonumber(ARGV[6]))
      redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -tonumber(ARGV[7]) - 1)
      redis.call('PEXPIRE', KEYS[5], ARGV[6])
    end
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[6], old_ms, new_ms)) do
      local ms, seq = parse_id(id)
      if after(ms, seq, old_ms, old_seq) and not after(ms, seq, new_ms, new_seq) then
        redis.call('ZREM', KEYS[6], id)
        redis.call('ZREM', KEYS[7], id .. ':' .. ARGV[5])
        redis.call('HDEL', KEYS[8], id .. ':' .. ARGV[5])
      end
    end
  end
end
redis.call('HSET', KEYS[1], 'seen', now_ms)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[3], now_ms, ARGV[1])
""" + _KEEP_INDEXES + """
return 1
"""

# KEYS: registration, unheld, held, the user's presence, presence checks.
# ARGV: connectionId, ttl ms, sid, userId ('' without webhooks), OFFLINE_GRACE ms.
_RELEASE = _NOW_MS + """
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'holder', '')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[2]), ARGV[1])
""" + _KEEP_INDEXES + """
if ARGV[4] ~= '' and redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('ZADD', KEYS[5], now_ms + tonumber(ARGV[5]), ARGV[4])
end
return 1
"""

# KEYS: unheld, held, the revocation (of the connection, or of all the user's), the
# user's presence, presence checks. ARGV: registration key prefix, connectionId or '' for
# all, ttl ms, userId ('' without webhooks), OFFLINE_GRACE ms.
# Revoking all of a user's registrations deletes each: as many steps as there are.
_REVOKE = _NOW_MS + """
if ARGV[2] == '' then
  redis.call('SET', KEYS[3], string.format('%d', now_ms), 'PX', ARGV[3])
else
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
end
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
if #holders > 0 and ARGV[4] ~= '' and redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('ZADD', KEYS[5], now_ms + tonumber(ARGV[5]), ARGV[4])
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

# KEYS: last id, idempotency record, fallbacks due, their messages, then per target its
# history stream, its user's two indexes, message records and pending fallbacks (a user's
# history is kept only while the user has registrations).
# ARGV: max length, key ttl ms, payload, channel, fingerprint ('' for no key), record ttl
# ms, fallback after ms (0: none), online timeout ms, message record ttl ms, records kept,
# then one target (as JSON, null for a broadcast) per target. `publish` is PUBLISH, or
# SPUBLISH on a Cluster's shard channel (`_publishing`).
# Returns {'new', id, online, id, online...}, {'repeated', ...} or {'conflict'}; online is
# the sockets holding the user's registrations (-1 for a broadcast).
_APPEND = _NOW_MS + _IDS + """
if ARGV[5] ~= '' then
  local record = redis.call('GET', KEYS[2])
  if record then
    local fingerprint, ids = string.match(record, '^(%S*) (.*)$')
    if fingerprint ~= ARGV[5] then return {'conflict'} end
    local found = {'repeated'}
    for id, online in string.gmatch(ids, '([^,/]+)/([^,]+)') do
      table.insert(found, id)
      table.insert(found, tonumber(online))
    end
    return found
  end
end
local ms, seq = now_ms, -1
local last_ms, last_seq = parse_id(redis.call('GET', KEYS[1]))
if last_ms >= ms then ms, seq = last_ms, last_seq end
local fallback_ms, record_ms = tonumber(ARGV[7]), tonumber(ARGV[9])
local reply, kept = {'new'}, {}
for i = 1, (#KEYS - 4) / 5 do
  seq = seq + 1
  local id = string.format('%d-%d', ms, seq)
  local target, base = ARGV[10 + i], 5 * i
  local stream, unheld, held = KEYS[base], KEYS[base + 1], KEYS[base + 2]
  if ARGV[1] ~= '0' and (target == 'null' or redis.call('EXISTS', unheld, held) > 0) then
    redis.call('XADD', stream, 'MAXLEN', ARGV[1], id, 'm', ARGV[3])
    redis.call('PEXPIRE', stream, ARGV[2])
  end
  redis.call(publish, ARGV[4], id .. ' ' .. (fallback_ms > 0 and '1 ' or '0 ') ..
                                 target .. '\\n' .. ARGV[3])
  local online = -1
  if target ~= 'null' then
    online = redis.call('ZCOUNT', held, now_ms - tonumber(ARGV[8]) + 1, '+inf')
    local records = KEYS[base + 3]
    redis.call('ZADD', records, ms, id)
    redis.call('ZREMRANGEBYSCORE', records, '-inf', now_ms - record_ms)
    redis.call('ZREMRANGEBYRANK', records, 0, -tonumber(ARGV[10]) - 1)
    redis.call('PEXPIRE', records, record_ms)
    if fallback_ms > 0 then
      local member = id .. ':' .. cjson.decode(target)
      redis.call('ZADD', KEYS[base + 4], ms, id)
      if redis.call('PTTL', KEYS[base + 4]) < fallback_ms + 60000 then
        redis.call('PEXPIRE', KEYS[base + 4], fallback_ms + 60000)
      end
      redis.call('ZADD', KEYS[3], now_ms + fallback_ms, member)
      redis.call('HSET', KEYS[4], member, ARGV[3])
    end
  end
  table.insert(reply, id)
  table.insert(reply, online)
  table.insert(kept, id .. '/' .. online)
end
redis.call('SET', KEYS[1], reply[#reply - 1])
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[2], ARGV[5] .. ' ' .. table.concat(kept, ','), 'PX', ARGV[6])
end
return reply
"""

# KEYS: fallbacks due, presence checks. ARGV: how many of each at most, lease ms.
# Returns what fell due of each, leased: another process takes it once the lease ends.
_DUE = _NOW_MS + """
local found = {}
for i = 1, 2 do
  local due = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', now_ms, 'LIMIT', 0, ARGV[1])
  for _, member in ipairs(due) do
    redis.call('ZADD', KEYS[i], now_ms + tonumber(ARGV[2]), member)
  end
  found[i] = due
end
return found
"""

# KEYS: the user's pending fallbacks, fallbacks due, their messages, the outbox (due jobs, jobs,
# event counter). ARGV: fallback (`<id>:<userId>`), message id, userId, webhook URLs.
# Not acknowledged in time: `message.unacknowledged`.
_FALLBACK = _NOW_MS + _OUTBOX + """
local payload = redis.call('HGET', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('ZREM', KEYS[1], ARGV[2]) == 1 and payload then
  enqueue(KEYS[4], KEYS[5], KEYS[6], ARGV[4], now_ms, 'message.unacknowledged',
          '{"userId":' .. cjson.encode(ARGV[3]) .. ',"id":"' .. ARGV[2] ..
          '","message":' .. payload .. '}')
  return 1
end
return 0
"""

# KEYS: the user's held registrations, presence, presence checks, the outbox (due jobs, jobs,
# event counter). ARGV: userId, webhook URLs, online timeout ms, OFFLINE_GRACE ms.
# A user whose newest heartbeat is older than the online timeout and the grace (or with no
# registration held) goes offline; else the check moves to when that could be so.
_PRESENCE = _NOW_MS + _OUTBOX + """
local wait_ms = tonumber(ARGV[3]) + tonumber(ARGV[4])
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if newest[2] and tonumber(newest[2]) + wait_ms > now_ms then
  redis.call('ZADD', KEYS[3], tonumber(newest[2]) + wait_ms, ARGV[1])
  return 0
end
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('DEL', KEYS[2]) == 1 then
  enqueue(KEYS[4], KEYS[5], KEYS[6], ARGV[2], now_ms, 'user.offline',
          '{"userId":' .. cjson.encode(ARGV[1]) .. '}')
  return 1
end
return 0
"""

# KEYS: the user's message records, acknowledged ones, history stream.
# ARGV: message id, its ms, record ttl ms, history ttl ms.
# Returns {acknowledged, in history} (1/0), or false if no record has the message.
_STATUS = _NOW_MS + """
local recorded = redis.call('ZSCORE', KEYS[1], ARGV[1])
if recorded and tonumber(recorded) <= now_ms - tonumber(ARGV[3]) then recorded = false end
local in_history = tonumber(ARGV[2]) > now_ms - tonumber(ARGV[4]) and
                   #redis.call('XRANGE', KEYS[3], ARGV[1], ARGV[1]) > 0
if not recorded and not in_history then return false end
local acknowledged = 0
if recorded and redis.call('ZSCORE', KEYS[2], ARGV[1]) then acknowledged = 1 end
return {acknowledged, in_history and 1 or 0}
"""

# KEYS: the outbox's due jobs, the jobs, their attempts. ARGV: how many at most, lease ms.
# Returns {{job id, job, attempt}...}, leased.
_TAKE = _NOW_MS + """
local taken = {}
for _, job_id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms,
                                   'LIMIT', 0, ARGV[1])) do
  local job = redis.call('HGET', KEYS[2], job_id)
  if job then
    redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), job_id)
    table.insert(taken, {job_id, job, redis.call('HINCRBY', KEYS[3], job_id, 1)})
  else
    redis.call('ZREM', KEYS[1], job_id)
  end
end
return taken
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


def _publishing(command, script):
    """`script` with `publish` set to `command`: a Cluster's shard channels live on their
    slot's nodes only (SPUBLISH); one server's channel is PUBLISHed."""
    return f"local publish = '{command}'\n" + script


class PushChannel:
    """One connection that every push of this process is pipelined on (under gevent).

    A push is packed as soon as it is made and its greenlet waits for its own answer. A
    writer greenlet sends what the pushes of one turn of the event loop packed in one
    write (it wakes after the greenlets made ready in that turn have run), and a reader
    greenlet reads the answers, in the order the pushes were packed, while any are
    awaited. Concurrent pushes share the connection, its writes and its round trips,
    instead of taking turns with a pooled connection each (a checkout that polls the
    socket, a write and a read per push). Nothing is retried: a push whose answer does not
    come within REDIS_TIMEOUT, or whose connection breaks, is OutcomeUnknown, like every
    push packed on that connection that still waits; the next push opens a new one.

    With REDIS_WAIT_REPLICAS, each write ends with a WAIT for that many replicas, and its
    pushes are answered once WAIT is: NotReplicated if fewer confirmed them in time.
    """

    class _Line:
        __slots__ = ('pool', 'connection', 'waiting', 'packed', 'held', 'wake', 'reader')

        def __init__(self, pool, connection):
            self.pool = pool
            self.connection = connection
            #: A Waiter per push packed, in order; with replicas to wait for, a
            #: _WAITED after the pushes of each write.
            self.waiting = collections.deque()
            self.packed = []   # the pushes packed since the last write
            self.held = []     # (answer, reply) of pushes read, whose WAIT is not yet
            self.wake = gevent.event.Event()   # set when `packed` has something
            self.reader = None

    #: In `waiting`: WAIT's answer comes next, for the pushes held.
    _WAITED = object()

    def __init__(self, state, client, shard, replicas=0):
        self.state = state
        self.client = client   # of the one server every push on this channel goes to
        self.shard = shard     # the Keys of a shard it serves: to tell the state of failures
        self.replicas = replicas
        self.line = None
        self.opening = gevent.lock.Semaphore()

    def call(self, command, script, keys, args):
        """EVALSHA/EVAL's answer (or error reply); StateUnavailable (not written) or
        OutcomeUnknown."""
        answer = gevent.hub.Waiter()
        with self.opening:   # one connection at a time (connecting may block)
            line = self.line
            if line is not None and not line.waiting and self._gone(line):
                # Closed while idle (Redis restarted, say): a push written on it would be
                # lost unseen and answered as unknown; a new connection knows better.
                self._close(line)
                line = None
            if line is None:
                pool = self.client.connection_pool
                try:
                    connection = pool.get_connection()   # checked out for as long as it lives
                except (redis.RedisError, OSError) as error:
                    self.state._failed(self.shard)
                    raise _failure(error, maybe_made=False) from error
                line = self.line = self._Line(pool, connection)
                gevent.spawn(self._write, line)
        # From here to the wait nothing yields: the line cannot close in between.
        line.packed.extend(line.connection.pack_command(command, script, len(keys),
                                                        *keys, *args))
        line.waiting.append(answer)
        line.wake.set()
        if line.reader is None:
            line.reader = gevent.spawn(self._read, line)
        return answer.get()

    def _write(self, line):
        """Send what was packed, one write per turn of the event loop, while the line
        lives. A failed write fails every push waiting on the line: part of it may have
        gone out."""
        while True:
            line.wake.wait()
            line.wake.clear()
            if line.pool is None:
                return
            if not line.packed:
                continue
            if self.replicas:
                line.packed.extend(line.connection.pack_command(
                    'WAIT', self.replicas, REPLICA_WAIT_MS))
                line.waiting.append(self._WAITED)
            packed = b''.join(line.packed)
            line.packed.clear()
            try:
                line.connection.send_packed_command([packed], check_health=False)
            except (redis.RedisError, OSError) as error:
                self._lost(line, error)
                return

    @staticmethod
    def _gone(line):
        """True if an idle line has something to read: the server closed it."""
        try:
            return line.connection.can_read()
        except (redis.RedisError, OSError):
            return True

    def _read(self, line):
        try:
            while line.waiting:
                try:
                    reply = line.connection.read_response()
                except redis.ResponseError as error:   # this push's own error reply
                    reply = error
                except (redis.RedisError, OSError) as error:
                    self._lost(line, error)
                    return
                answer = line.waiting.popleft()
                if answer is self._WAITED:   # `reply`: how many replicas confirmed
                    held, line.held = line.held, []
                    for push, push_reply in held:
                        if not isinstance(push_reply, Exception):
                            push_reply = _not_replicated(self.replicas, reply) or push_reply
                        _settle(push, push_reply)
                elif self.replicas:
                    line.held.append((answer, reply))
                else:
                    _settle(answer, reply)
        finally:
            line.reader = None

    def _lost(self, line, error):
        """The line broke or timed out: every push still waiting on it is unknown."""
        if line.pool is None and not line.waiting:
            return   # its reader and its writer can both find it broken: told once
        self._close(line)
        failure = _failure(error)
        held, line.held = line.held, []
        for answer in [answer for answer, _ in held] + list(line.waiting):
            if answer is not self._WAITED:
                wakeup.soon(answer.throw, failure)
        line.waiting.clear()
        self.state._failed(self.shard)

    def _close(self, line):
        """Disconnect a line and give its connection back to the pool, once."""
        if self.line is line:
            self.line = None
        pool, line.pool = line.pool, None
        line.wake.set()   # the writer ends
        if pool is not None:
            line.connection.disconnect()
            pool.release(line.connection)

    def reset(self):
        """Open a new connection for the next push (this one reaches the wrong server)."""
        if self.line is not None:
            self._close(self.line)


def _not_replicated(replicas, confirmed):
    """NotReplicated if WAIT's answer (`confirmed`, the replicas that have the writes) is
    short of `replicas`, else None."""
    if isinstance(confirmed, int) and confirmed >= replicas:
        return None
    return NotReplicated(f'Redis: WAIT {replicas}: {confirmed!r} in {REPLICA_WAIT_MS} ms')


def _settle(answer, reply):
    """Give a push its answer: its greenlet resumes right after the reader yields, in the
    same turn of the event loop (wakeup.py), not after the rest of the turn."""
    if isinstance(reply, Exception):
        wakeup.soon(answer.throw, reply)
    else:
        wakeup.soon(answer.switch, reply)


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


class Keys:
    """Every key of one shard of the state, under one prefix.

    One server (or Sentinel's primary) holds one shard, `nsio:`. On a Cluster, each shard's
    prefix is a hash tag (`shard_prefixes`), so that all its keys are in one slot: the
    append script takes each message's id from the shard's one sequence and publishes it
    in the same step, which is what keeps every socket's messages in id order
    (delivery.py); keys in several slots cannot be written by one script. A user's keys
    are all in the user's shard (`RedisState.shard_of`).
    """

    def __init__(self, prefix='nsio:', channel=None):
        self.prefix = prefix
        #: Where the shard's messages are published (on a Cluster, a shard channel).
        self.channel = channel or prefix + 'messages'
        self.last_id = prefix + 'last-id'
        self.broadcast = prefix + 'broadcast'
        self.no_idempotency = prefix + 'idempotency'   # declared, never written
        self.fallbacks = prefix + 'fallbacks'   # `<id>:<userId>` by when it falls due
        self.fallback_messages = prefix + 'fallback-messages'
        self.presence_checks = prefix + 'presence-checks'   # userId by when to look again
        #: What a script that decides an event writes to: due jobs, jobs, the event counter.
        self.outbox = (prefix + 'webhooks:due', prefix + 'webhooks:jobs',
                       prefix + 'webhooks:seq')
        self.attempts = prefix + 'webhooks:attempts'

    def registration_prefix(self, user_id):
        """Registration keys of a user; the length keeps `a:b`+`c` apart from `a`+`b:c`."""
        return f'{self.prefix}reg:{len(user_id)}:{user_id}:'

    def registration(self, user_id, connection_id):
        """The key of one registration."""
        return self.registration_prefix(user_id) + connection_id

    def indexes(self, user_id):
        """The sorted sets of a user's connectionIds: unheld ones, and held ones."""
        return [f'{self.prefix}unheld:{user_id}', f'{self.prefix}held:{user_id}']

    def revocations(self, user_id, connection_id):
        """Keys that keep tokens from registering again: the connection's, the user's."""
        return [f'{self.prefix}revoked:{len(user_id)}:{user_id}:{connection_id}',
                f'{self.prefix}revoked-all:{user_id}']

    def presence(self, user_id):
        """Set while the user is online (webhooks told so)."""
        return f'{self.prefix}presence:{user_id}'

    def records(self, user_id):
        """The user's message records, the acknowledged ones, the pending fallbacks."""
        return [f'{self.prefix}messages:{user_id}', f'{self.prefix}acked:{user_id}',
                f'{self.prefix}pending:{user_id}']

    def idempotency(self, key):
        """The record of a push made with an Idempotency-Key."""
        return f'{self.prefix}idempotency:{key}'

    def history(self, target):
        """The stream holding a user's recent messages (or the broadcasts')."""
        return self.broadcast if target is EVERYONE else f'{self.prefix}history:{target}'


#: Shards of a Cluster when REDIS_CLUSTER_SHARDS is not set.
CLUSTER_SHARDS = 16


def shard_prefixes(count):
    """The key prefixes of a Cluster's `count` shards: a hash tag each, spread over the slots.

    Shard k's tag is the first `nsio-k.j` whose slot is in the k-th of `count` equal parts
    of the slot space: the shards spread over the primaries as evenly as the slots do (as
    `redis-cli --cluster create` splits them, in even ranges). One shard is `{nsio}`, every
    key in one slot, as before shards existed.
    """
    if count == 1:
        return ['{nsio}:']
    prefixes = []
    for k in range(count):
        low = k * REDIS_CLUSTER_HASH_SLOTS // count
        high = (k + 1) * REDIS_CLUSTER_HASH_SLOTS // count
        tag = next(tag for tag in (f'nsio-{k}.{j}' for j in itertools.count())
                   if low <= key_slot(tag.encode()) < high)
        prefixes.append('{' + tag + '}:')
    return prefixes


def shard_number(user_id, count):
    """The shard of `count` that holds a user (the same in every process)."""
    if count == 1:
        return 0
    return zlib.crc32(user_id.encode('utf-8', 'surrogatepass')) % count


class RedisState(State):
    """The shared state of every process, in Redis (one server, Sentinel's primary, a Cluster).

    On a Cluster the state is split in shards (REDIS_CLUSTER_SHARDS), each in its own slot
    with its own id sequence, history of broadcasts, fallbacks, presence checks and
    webhook outbox; a user is in one shard (`shard_of`), so that a push to one user is one
    script on one node. A push to users of several shards runs one script per shard, at
    once; a broadcast, one in every shard.
    """

    local = False

    def __init__(self, config, channel=CHANNEL):
        super().__init__(config)
        #: python-socketio's channel; ours carry the messages (fanout.py reads them all).
        self.channel = channel
        self.redis = redisconn.connect(
            config.redis_url, decode_responses=True, socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT, health_check_interval=30,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))
        self.cluster = isinstance(self.redis, redis.cluster.RedisCluster)
        if self.cluster:
            self.shards = [Keys(prefix) for prefix in shard_prefixes(
                config.redis_cluster_shards or CLUSTER_SHARDS)]
        else:
            self.shards = [Keys('nsio:', channel=channel + ':messages')]
        self.shard_count = len(self.shards)
        self._ttl_ms = int(self.registration_ttl * 1000)
        self._history_ms = int(self.history_ttl * 1000)
        self._idempotency_ms = int(self.idempotency_ttl * 1000)
        self._online_ms = int(self.online_timeout * 1000)
        self._grace_ms = int(self.offline_grace * 1000)
        self._record_ms = int(self.record_ttl * 1000)
        self._urls = '\n'.join(self.webhook_urls)
        self._scripts = {name: self.redis.register_script(source) for name, source in (
            ('register', _REGISTER), ('claim', _CLAIM), ('confirm', _CONFIRM),
            ('release', _RELEASE), ('revoke', _REVOKE), ('sessions', _SESSIONS),
            ('append', _publishing('SPUBLISH' if self.cluster else 'PUBLISH', _APPEND)),
            ('history', _HISTORY), ('due', _DUE), ('fallback', _FALLBACK),
            ('presence', _PRESENCE), ('status', _STATUS), ('take', _TAKE))}
        self.outbox = RedisOutbox(self)
        self.wait_replicas = config.redis_wait_replicas
        #: Pushes pipelined on one connection per server: only under gevent, as the
        #: server runs (PushChannel).
        self.pipelined = gevent.monkey.is_module_patched('socket')
        self._channels = {}   # a server's address -> its PushChannel

    def shard_of(self, user_id):
        return shard_number(user_id, self.shard_count)

    def keys_of(self, user_id):
        """The Keys of the user's shard."""
        return self.shards[self.shard_of(user_id)]

    def _registration_keys(self, keys, user_id, connection_id):
        return [keys.registration(user_id, connection_id), *keys.indexes(user_id)]

    def _node(self, keys):
        """The client of the server holding a shard (on a Cluster, its slot's primary)."""
        if self.cluster:
            return self.redis.get_redis_connection(self.redis.get_node_from_key(keys.last_id))
        return self.redis

    def _pushes(self, keys):
        """The PushChannel to the server holding a shard."""
        if not self.cluster:
            address = None
        else:
            node = self.redis.get_node_from_key(keys.last_id)
            address = node.name
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = PushChannel(
                self, self._node(keys), keys, self.wait_replicas)
        return channel

    def _run(self, name, keys, args):
        return self._scripts[name](keys=keys, args=args)

    def _run_once(self, shard, name, keys, args):
        """Send a script to the server of `shard` once: nothing retries it, whatever happens.

        StateUnavailable if it was not run (no connection could be made, or the server
        refused it: a replica since a failover, a Cluster slot that moved); OutcomeUnknown
        if it was sent and no answer came.
        """
        script = self._scripts[name]
        if self.pipelined:
            pushes = self._pushes(shard)
            try:
                try:
                    return pushes.call('EVALSHA', script.sha, keys, args)
                except redis.exceptions.NoScriptError:
                    return pushes.call('EVAL', script.script, keys, args)
            except _NOT_RUN as error:
                pushes.reset()
                self._failed(shard)
                raise _failure(error) from error
        pool = self._node(shard).connection_pool
        try:
            connection = pool.get_connection()   # connected, or it raises
        except redis.RedisError as error:
            self._failed(shard)
            raise _failure(error, maybe_made=False) from error
        try:
            try:
                connection.send_command('EVALSHA', script.sha, len(keys), *keys, *args)
                reply = connection.read_response()
            except redis.exceptions.NoScriptError:
                connection.send_command('EVAL', script.script, len(keys), *keys, *args)
                reply = connection.read_response()
            if self.wait_replicas:
                connection.send_command('WAIT', self.wait_replicas, REPLICA_WAIT_MS)
                missing = _not_replicated(self.wait_replicas, connection.read_response())
                if missing is not None:
                    raise missing
            return reply
        except (*_NOT_RUN, redis.ConnectionError, redis.TimeoutError, OSError) as error:
            connection.disconnect()
            self._failed(shard)
            raise _failure(error) from error
        finally:
            pool.release(connection)

    def _failed(self, shard):
        """A push to `shard` failed: count it and, on a Cluster, let the cluster client find
        who serves the shard's slot now.

        A command through it meets the same failure (or a MOVED) and refreshes its map of
        the slots, as it does for its own commands; the next script goes to the new node.
        """
        self.failures += 1
        if self.cluster:
            with contextlib.suppress(redis.RedisError):
                self.redis.exists(shard.last_id)

    def register(self, user_id, connection_id):
        self._register(user_id, connection_id, '')

    def register_token(self, user_id, connection_id, issued_at):
        self._register(user_id, connection_id,
                       -1 if issued_at is None else int(issued_at * 1000))

    @_unavailable_on_error
    def _register(self, user_id, connection_id, issued_at):
        keys = self.keys_of(user_id)
        outcome = self._run('register', [
            *self._registration_keys(keys, user_id, connection_id), keys.last_id,
            *keys.revocations(user_id, connection_id)],
            [connection_id, self._ttl_ms, keys.registration_prefix(user_id), self.max_sessions,
             issued_at])
        if outcome == -1:
            raise TooManySessions()
        if outcome == -2:
            raise Revoked()

    @_unavailable_on_error
    def claim(self, user_id, connection_id, sid):
        keys = self.keys_of(user_id)
        found = self._run('claim', [*self._registration_keys(keys, user_id, connection_id),
                                    keys.presence(user_id), keys.presence_checks,
                                    *keys.outbox],
                          [connection_id, self._ttl_ms, sid, user_id,
                           self._urls if self.presence else '',
                           self._online_ms + self._grace_ms])
        if found is None:
            raise NotRegistered()
        previous, delivered_id = found
        return Claim(previous if previous not in ('', sid) else None, delivered_id or None)

    @_unavailable_on_error
    def confirm(self, user_id, connection_id, sid, message_id):
        keys = self.keys_of(user_id)
        self._run('confirm', [*self._registration_keys(keys, user_id, connection_id),
                              *keys.records(user_id), keys.fallbacks, keys.fallback_messages],
                  [connection_id, self._ttl_ms, sid, message_id or '', user_id,
                   self._record_ms, MESSAGE_RECORDS])

    def _release_call(self, keys, user_id, connection_id, sid):
        return ([*self._registration_keys(keys, user_id, connection_id),
                 keys.presence(user_id), keys.presence_checks],
                [connection_id, self._ttl_ms, sid, user_id if self.presence else '',
                 self._grace_ms])

    @_unavailable_on_error
    def release(self, user_id, connection_id, sid):
        self._run('release', *self._release_call(self.keys_of(user_id), user_id,
                                                 connection_id, sid))

    @_unavailable_on_error
    def release_many(self, holds):
        """One round trip (a pipeline) per server, however many there are."""
        pipelines = {}   # a server's client -> its pipeline
        for user_id, connection_id, sid in holds:
            keys = self.keys_of(user_id)
            client = self._node(keys)
            pipeline = pipelines.get(client)
            if pipeline is None:
                pipeline = pipelines[client] = client.pipeline(transaction=False)
            call_keys, args = self._release_call(keys, user_id, connection_id, sid)
            self._scripts['release'](keys=call_keys, args=args, client=pipeline)
        for pipeline in pipelines.values():
            pipeline.execute()

    @_unavailable_on_error
    def revoke(self, user_id, connection_id=None):
        keys = self.keys_of(user_id)
        revocation = keys.revocations(user_id, connection_id or '')[0 if connection_id else 1]
        return self._run('revoke', [*keys.indexes(user_id), revocation,
                                    keys.presence(user_id), keys.presence_checks],
                         [keys.registration_prefix(user_id), connection_id or '',
                          self._ttl_ms, user_id if self.presence else '', self._grace_ms])

    @_unavailable_on_error
    def message_status(self, user_id, message_id):
        keys = self.keys_of(user_id)
        records, acked, _ = keys.records(user_id)
        found = self._run('status', [records, acked, keys.history(user_id)],
                          [message_id, parse_message_id(message_id)[0], self._record_ms,
                           self._history_ms])
        if found is None:
            return None
        return MessageStatus(acknowledged=bool(found[0]), in_history=bool(found[1]))

    def tick(self, limit=100):
        """Each shard's due fallbacks and presence checks; a shard whose server fails
        does not hold the others back (StateUnavailable after all were tried)."""
        failure = None
        for keys in self.shards:
            try:
                self._tick(keys, limit)
            except StateUnavailable as error:
                failure = failure or error
        if failure is not None:
            raise failure

    @_unavailable_on_error
    def _tick(self, keys, limit):
        fallbacks, checks = self._run('due', [keys.fallbacks, keys.presence_checks],
                                      [limit, _LEASE_MS])
        for fallback in fallbacks:
            message_id, user_id = fallback.split(':', 1)
            self._run('fallback', [keys.records(user_id)[2], keys.fallbacks,
                                   keys.fallback_messages, *keys.outbox],
                      [fallback, message_id, user_id, self._urls])
        for user_id in checks:
            self._run('presence', [keys.indexes(user_id)[1], keys.presence(user_id),
                                   keys.presence_checks, *keys.outbox],
                      [user_id, self._urls, self._online_ms, self._grace_ms])

    @_unavailable_on_error
    def sessions(self, user_id):
        online, registered = self._run('sessions', self.keys_of(user_id).indexes(user_id),
                                       [self._online_ms, self._ttl_ms])
        return Sessions(online=online, registered=registered)

    def append(self, targets, message, idempotency=None, fallback_after=None):
        """One script per shard the targets are in (a broadcast: every shard), at once.

        The answer's entry for a broadcast is the first shard's; each shard's users get the
        message with their shard's id. If the scripts of some shards fail, the push was made
        for the others' targets: OutcomeUnknown (a retry with the Idempotency-Key makes the
        rest and repeats nothing), unless no script can have run (StateUnavailable).
        """
        payload = jsoncodec.dumps(message)
        if self.shard_count == 1 or (len(targets) == 1 and targets[0] is not EVERYONE):
            keys = self.keys_of(targets[0]) if self.shard_count > 1 else self.shards[0]
            return self._appended(message, self._run_once(keys, 'append', *self._append_call(
                keys, targets, payload, idempotency, fallback_after)))
        by_shard = {}   # Keys -> the positions in `targets` it holds
        for position, target in enumerate(targets):
            for keys in self.shards if target is EVERYONE else [self.keys_of(target)]:
                by_shard.setdefault(keys, []).append(position)
        calls = [(keys, positions, self._append_call(keys, [targets[n] for n in positions],
                                                     payload, idempotency, fallback_after))
                 for keys, positions in by_shard.items()]
        parts = [self._appended(message, reply) for reply in self._run_each(calls)]
        entries, online = [None] * len(targets), [None] * len(targets)
        for (_, positions, _), part in zip(calls, parts):
            for position, entry, count in zip(positions, part.entries, part.online):
                if entries[position] is None:   # a broadcast's: the first shard's
                    entries[position], online[position] = entry, count
        return Appended(entries, repeated=all(part.repeated for part in parts), online=online)

    @staticmethod
    def _appended(message, reply):
        """The append script's reply as an Appended (IdempotencyConflict for a conflict)."""
        outcome, *found = reply
        if outcome == 'conflict':
            raise IdempotencyConflict()
        return Appended([Entry(message_id, parse_message_id(message_id)[0], message)
                         for message_id in found[::2]], repeated=outcome == 'repeated',
                        online=[None if online < 0 else online for online in found[1::2]])

    def _run_each(self, calls):
        """The append scripts of several shards, sent at once; their replies, or the
        failure that tells the caller what may have been made."""
        if len(calls) == 1:   # the targets are all in one shard
            keys, _, call = calls[0]
            return [self._run_once(keys, 'append', *call)]

        def run(keys, call):
            try:
                return self._run_once(keys, 'append', *call)
            except (StateUnavailable, OutcomeUnknown) as error:
                return error
        if self.pipelined:
            runs = [gevent.spawn(run, keys, call) for keys, _, call in calls]
            gevent.joinall(runs)
            replies = [done.value for done in runs]
        else:
            replies = [run(keys, call) for keys, _, call in calls]
        failures = [reply for reply in replies if isinstance(reply, Exception)]
        if not failures:
            return replies
        if len(failures) == len(replies) and all(
                isinstance(failure, StateUnavailable) for failure in failures):
            raise failures[0]   # made nowhere
        if all(isinstance(failure, NotReplicated) for failure in failures):
            raise failures[0]   # made everywhere, not yet on enough replicas
        raise OutcomeUnknown(f'made in {len(replies) - len(failures)} of {len(replies)} '
                             f'shards of the Redis Cluster; {failures[0]}')

    def _append_call(self, keys, targets, payload, idempotency, fallback_after):
        return ([keys.last_id,
                 keys.idempotency(idempotency.key) if idempotency else keys.no_idempotency,
                 keys.fallbacks, keys.fallback_messages,
                 *(key for target in targets for key in self._target_keys(keys, target))],
                [self.history_size if self.history_ttl else 0,
                 max(self._history_ms, _KEY_FLOOR_MS), payload, keys.channel,
                 idempotency.fingerprint if idempotency else '', self._idempotency_ms,
                 int(fallback_after * 1000) if fallback_after and self.webhook_urls else 0,
                 self._online_ms, self._record_ms, MESSAGE_RECORDS, *map(json.dumps, targets)])

    @staticmethod
    def _target_keys(keys, target):
        if target is EVERYONE:
            return [keys.broadcast] * 5   # declared, only the stream is used
        return [keys.history(target), *keys.indexes(target), keys.records(target)[0],
                keys.records(target)[2]]

    @_unavailable_on_error
    def history(self, user_id, after_id=None):
        keys = self.keys_of(user_id)
        after = parse_message_id(after_id) if after_id is not None else ('', '')
        found = self._run('history', [keys.history(user_id), keys.broadcast],
                          [*after, self._history_ms])
        entries = [(parse_message_id(message_id), jsoncodec.loads(fields[1]))
                   for stream in found for message_id, fields in stream]
        return [Entry(f'{ms}-{seq}', ms, message)
                for (ms, seq), message in sorted(entries, key=lambda pair: pair[0])]

    def fast_paths(self):
        """'hiredis' when redis-py reads and writes Redis's protocol with it (in C), and
        'pipelined pushes' when pushes share one connection per server (under gevent)."""
        found = []
        connection = self._node(self.shards[0]).connection_pool.make_connection()
        if type(connection._parser).__name__ == '_HiredisParser':
            found.append('hiredis')
        else:
            log.warning('fast path OFF: hiredis (redis-py parses Redis\'s answers in '
                        'Python: pip install hiredis)')
        if self.pipelined:
            found.append('pipelined pushes')
        else:
            log.warning('fast path OFF: pipelined pushes (gevent has not patched socket: '
                        'each push takes a pooled connection)')
        return found

    def close(self):
        for channel in self._channels.values():
            channel.reset()
        self.redis.close()


class RedisOutbox:
    """The webhook jobs in Redis, which every process takes from (webhooks.py sends them).

    Each shard has its own outbox; a job's id says which (`<shard>/<id in the shard>`).
    """

    def __init__(self, state):
        self.state = state
        self.urls = state.webhook_urls
        self.on_drop = None   # never full: Redis's memory is the bound
        self._first = 0   # the shard taken from first, in turn: none waits behind another

    @property
    def failures(self):
        return self.state.failures

    @failures.setter
    def failures(self, value):
        self.state.failures = value

    def _job(self, job):
        """The Keys of a job's shard, and its id there."""
        shard, _, job_id = job.job_id.partition('/')
        return self.state.shards[int(shard)], job_id

    def take(self, limit):
        """Due jobs of the shards, taken in turn; a shard whose server fails holds back none
        of the others' (StateUnavailable only if it left nothing to take)."""
        shards = self.state.shards
        self._first = (self._first + 1) % len(shards)
        taken, failure = [], None
        for number in itertools.chain(range(self._first, len(shards)), range(self._first)):
            if len(taken) >= limit:
                break
            try:
                taken += self._take(number, limit - len(taken))
            except StateUnavailable as error:
                failure = failure or error
        if failure is not None and not taken:
            raise failure
        return taken

    @_unavailable_on_error
    def _take(self, number, limit):
        from ..webhooks import LEASE, Job
        keys = self.state.shards[number]
        due, jobs, _ = keys.outbox
        taken = []
        for job_id, record, attempt in self.state._run(
                'take', [due, jobs, keys.attempts], [limit, LEASE * 1000]):
            head, body = record.split('\n', 1)
            created, url = head.split(' ', 1)
            taken.append(Job(f'{number}/{job_id}', url, body.encode(), int(created) / 1000,
                             attempt=attempt))
        return taken

    @_unavailable_on_error
    def done(self, job):
        keys, job_id = self._job(job)
        due, jobs, _ = keys.outbox
        pipeline = self.state._node(keys).pipeline(transaction=True)
        pipeline.zrem(due, job_id).hdel(jobs, job_id).hdel(keys.attempts, job_id)
        pipeline.execute()

    @_unavailable_on_error
    def retry(self, job, at):
        keys, job_id = self._job(job)
        self.state.redis.zadd(keys.outbox[0], {job_id: int(at * 1000)}, xx=True)

    @_unavailable_on_error
    def queued(self):
        return sum(self.state.redis.zcard(keys.outbox[0]) for keys in self.state.shards)


def decode_published(data):
    """(target, Entry, acknowledge soon) of a message the append script published (bytes)."""
    head, payload = data.split(b'\n', 1)
    message_id, acknowledge_soon, target = head.decode().split(' ', 2)
    return (json.loads(target), Entry(message_id, parse_message_id(message_id)[0],
                                      jsoncodec.loads(payload)), acknowledge_soon == '1')
