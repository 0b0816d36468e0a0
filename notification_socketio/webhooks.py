"""Webhooks: tell the backend what happened, signed, at least once, never in anyone's way.

An event (`user.online`, `user.offline`, `message.unacknowledged`) becomes one job per
WEBHOOK_URL, kept in an outbox: in Redis (the state's scripts add the job in the same
step that decides the event, so a process that dies loses nothing) or, without Redis, in
this process's memory, bounded by WEBHOOK_QUEUE_SIZE (past it, the oldest job is dropped
and counted). A sender greenlet in every process takes due jobs, POSTs them, and on
anything but a 2xx (or no answer within 10 s) puts them back with exponential backoff
(1 s, 2 s, 4 s ... at most a minute apart) for WEBHOOK_RETRY_FOR seconds. A job taken is
leased: if its process dies, another takes it once the lease ends. The body is the same
on every attempt (same event id); the signature is made afresh with the attempt's time.
"""
import collections
import hashlib
import heapq
import hmac
import itertools
import logging
import time
import uuid
from urllib.parse import urlsplit

import gevent
import gevent.event
import gevent.pool
import requests

from . import __version__, jsoncodec

SIGNATURE_HEADER = 'X-Notification-Signature'
#: Seconds a receiver has to answer.
CALL_TIMEOUT = 10
#: Seconds a taken job stays with its process before another may take it.
LEASE = 30
_FIRST_DELAY, _MAX_DELAY = 1.0, 60.0
_CONCURRENCY = 16
_POLL = 0.5
log = logging.getLogger(__name__)


def sign(secret, body, timestamp):
    """The signature header value of `body` (bytes) at `timestamp` (unix seconds)."""
    digest = hmac.new(secret.encode(), b'%d.' % timestamp + body, hashlib.sha256).hexdigest()
    return f't={timestamp},v1={digest}'


def verify(secret, body, header, tolerance=300, now=None):
    """Whether `header` signs `body` with `secret` within `tolerance` seconds (receivers)."""
    fields = {}
    for part in (header or '').split(','):
        name, _, value = part.strip().partition('=')
        fields.setdefault(name, []).append(value)
    try:
        timestamp = int(fields['t'][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).rsplit('v1=', 1)[1]
    return any(hmac.compare_digest(expected, given) for given in fields.get('v1', ()))


def event_body(event_type, data):
    """The JSON body of a new event, as bytes."""
    return jsoncodec.dumps({'id': 'evt_' + uuid.uuid4().hex, 'type': event_type,
                            'ts': int(time.time() * 1000), 'data': data}).encode()


def backoff(attempt):
    """Seconds before attempt `attempt + 1`, after attempt `attempt` (1-based) failed."""
    return min(_FIRST_DELAY * 2 ** (attempt - 1), _MAX_DELAY)


def safe_url(url):
    """A URL as it may be shown: no credentials, no query string."""
    parts = urlsplit(url)
    host = parts.hostname or ''
    if parts.port:
        host += f':{parts.port}'
    return f'{parts.scheme}://{host}{parts.path}'


class Job:
    """One event for one URL."""

    __slots__ = ('job_id', 'url', 'body', 'created', 'attempt', 'due')

    def __init__(self, job_id, url, body, created, attempt=0, due=0.0):
        self.job_id = job_id
        self.url = url
        self.body = body
        self.created = created   # unix seconds
        self.attempt = attempt   # attempts made before this one
        self.due = due


class MemoryOutbox:
    """The outbox without Redis: this process's memory, at most `size` jobs."""

    def __init__(self, urls, size, on_drop=lambda: None):
        self.urls = urls
        self.size = size
        self._jobs = collections.OrderedDict()   # job_id -> Job, oldest first
        self._due = []                           # heap of (due, seq, job)
        self._seq = itertools.count()
        self.on_drop = on_drop
        self.woken = gevent.event.Event()

    def add(self, event_type, data):
        """Queue an event for every URL (the state calls it when it decides one)."""
        if not self.urls:
            return
        body = event_body(event_type, data)
        now = time.time()
        for url in self.urls:
            while len(self._jobs) >= self.size:
                _, dropped = self._jobs.popitem(last=False)
                log.warning('webhook queue full (WEBHOOK_QUEUE_SIZE=%d): dropped the oldest '
                            'event for %s', self.size, safe_url(dropped.url))
                self.on_drop()
            job = Job(uuid.uuid4().hex, url, body, now, due=now)
            self._jobs[job.job_id] = job
            heapq.heappush(self._due, (now, next(self._seq), job))
        self.woken.set()

    def take(self, limit):
        """Up to `limit` due jobs, leased to the caller."""
        now = time.time()
        taken = []
        while self._due and self._due[0][0] <= now and len(taken) < limit:
            due, _, job = heapq.heappop(self._due)
            if self._jobs.get(job.job_id) is job and job.due == due:
                job.attempt += 1
                job.due = now + LEASE
                heapq.heappush(self._due, (job.due, next(self._seq), job))
                taken.append(job)
        return taken

    def done(self, job):
        self._jobs.pop(job.job_id, None)

    def retry(self, job, at):
        if self._jobs.get(job.job_id) is job:
            job.due = at
            heapq.heappush(self._due, (at, next(self._seq), job))

    def queued(self):
        return len(self._jobs)


class Sender:
    """The greenlet that delivers due jobs of an outbox; one per process."""

    def __init__(self, outbox, secret, retry_for, metrics, session=None):
        self.outbox = outbox
        self.secret = secret
        self.retry_for = retry_for
        self.metrics = metrics
        if session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_maxsize=_CONCURRENCY)
            session.mount('http://', adapter)
            session.mount('https://', adapter)
        self.session = session
        self.session.headers['User-Agent'] = f'notification-socketio/{__version__}'
        self.recent = collections.deque(maxlen=50)   # for the console
        self._pool = gevent.pool.Pool(_CONCURRENCY)
        self._greenlet = None

    def start(self):
        if self._greenlet is None and self.outbox.urls:
            self._greenlet = gevent.spawn(self._run)

    def queued(self):
        """Jobs waiting (or under way), every process's with Redis; None if unknown."""
        try:
            return self.outbox.queued()
        except Exception:   # the state is away
            return None

    def _run(self):
        woken = getattr(self.outbox, 'woken', None)
        while True:
            try:
                jobs = self.outbox.take(self._pool.free_count() or 1)
            except Exception as error:   # the state is away: try again soon
                log.warning('could not read the webhook queue: %s', error)
                jobs = []
            for job in jobs:
                self._pool.wait_available()
                self._pool.spawn(self._deliver, job)
            if not jobs:
                if woken is not None:
                    woken.clear()
                    woken.wait(_POLL)
                else:
                    gevent.sleep(_POLL)

    def _deliver(self, job):
        started = time.time()
        status, error = None, None
        try:
            with gevent.Timeout(CALL_TIMEOUT + 1, TimeoutError('no answer in time')):
                response = self.session.post(
                    job.url, data=job.body, timeout=CALL_TIMEOUT, allow_redirects=False,
                    headers={'Content-Type': 'application/json',
                             SIGNATURE_HEADER: sign(self.secret, job.body, int(started))})
                status = response.status_code
                response.close()
        except (requests.RequestException, TimeoutError, OSError) as exc:
            # The kind only: requests' messages quote the URL, query string included.
            error = 'no answer within %ds' % CALL_TIMEOUT if isinstance(
                exc, (requests.Timeout, TimeoutError)) else type(exc).__name__
        ok = status is not None and 200 <= status < 300
        event_type = _event_type(job.body)
        if ok:
            outcome = 'sent'
            self._settle(self.outbox.done, job)
        elif time.time() - job.created >= self.retry_for:
            outcome = 'abandoned'
            log.error('webhook %s to %s abandoned after %d attempts over %ds (%s)',
                      event_type, safe_url(job.url), job.attempt, self.retry_for,
                      error or f'HTTP {status}')
            self._settle(self.outbox.done, job)
        else:
            outcome = 'failed'
            delay = backoff(job.attempt)
            log.warning('webhook %s to %s failed (%s); attempt %d in %.0fs', event_type,
                        safe_url(job.url), error or f'HTTP {status}', job.attempt + 1, delay)
            self._settle(self.outbox.retry, job, time.time() + delay)
        self.metrics.webhooks.labels(event_type, outcome).inc()
        self.recent.appendleft({
            'at': int(started * 1000), 'event': event_type, 'url': safe_url(job.url),
            'attempt': job.attempt, 'outcome': outcome, 'status': status,
            'error': error and error[:200],
            'ms': round((time.time() - started) * 1000)})

    @staticmethod
    def _settle(step, *args):
        try:
            step(*args)
        except Exception as error:   # the lease ends, another attempt follows
            log.warning('could not update the webhook queue: %s', error)


def _event_type(body):
    try:
        return str(jsoncodec.loads(body)['type'])
    except (ValueError, KeyError, TypeError):
        return 'unknown'
