"""Prometheus metrics of one process, served at /metrics."""
import time

from flask import Blueprint, Response, current_app, g, request
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram,
                               generate_latest)
from prometheus_client import disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

bp = Blueprint('metrics', __name__)
disable_created_metrics()   # the *_created series only add noise here

#: The REST endpoints that push, by the route label they get.
PUSH_ROUTES = {'api.push': 'push', 'api.push_many': 'push_many', 'api.broadcast': 'broadcast'}
_OUTCOMES = {200: 'ok', 400: 'invalid', 401: 'unauthorized', 409: 'conflict',
             413: 'too_large', 503: 'unavailable', 504: 'unknown'}


def outcome_of(status):
    """The `outcome` label of a push answered with HTTP `status`."""
    return _OUTCOMES.get(status, 'error')


class Metrics:
    """The counters the server updates, and a collector reading live values at scrape time."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.pushes = Counter(
            'nsio_pushes', 'Push requests, by route and outcome',
            ['route', 'outcome'], registry=self.registry)
        self.push_latency = Histogram(
            'nsio_push_latency_seconds',
            'Time from a push request to its messages queued on every local socket',
            ['route'], registry=self.registry,
            buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.registrations = Counter(
            'nsio_registrations', 'Registrations made or refreshed by the backend',
            registry=self.registry)
        self.deliveries = Counter(
            'nsio_deliveries', 'Messages sent to sockets, live or replayed',
            ['kind'], registry=self.registry)
        self.recoveries = Counter(
            'nsio_recoveries', 'Sockets that got missed messages replayed',
            registry=self.registry)
        self.slow_consumers = Counter(
            'nsio_slow_consumers', 'Transports dropped because the client stopped reading '
            '(MAX_SOCKET_BUFFER_BYTES)', registry=self.registry)
        self.revocations = Counter(
            'nsio_revocations', 'Sockets disconnected by a revocation',
            registry=self.registry)

        self.webhooks = Counter(
            'nsio_webhooks', 'Webhook calls made by this process, by event and outcome '
            '(sent: a 2xx; failed: retried later; abandoned: WEBHOOK_RETRY_FOR passed)',
            ['event', 'outcome'], registry=self.registry)
        self.webhooks_dropped = Counter(
            'nsio_webhooks_dropped', 'Webhook events dropped because the in-memory queue '
            'was full (WEBHOOK_QUEUE_SIZE; never with Redis)', registry=self.registry)

    def watch(self, server):
        """Read sockets, users and state errors from `server` at each scrape."""
        self.registry.register(_LiveValues(server))


def _having(sockets, attribute):
    """How many of `sockets` have `attribute` set (transport.DirectSocket's state)."""
    return sum(getattr(socket, attribute, None) is not None for socket in sockets)


class _LiveValues:
    """Gauges read when Prometheus scrapes, rather than kept up to date on every event."""

    def __init__(self, server):
        self.server = server

    def collect(self):
        delivery = self.server.delivery
        sockets = GaugeMetricFamily('nsio_sockets_connected',
                                    'Engine.IO connections open on this process')
        eio_sockets = self.server.socketio.server.eio.sockets
        sockets.add_metric([], len(eio_sockets))
        open_sockets = list(eio_sockets.values())   # one snapshot for every count below
        legacy = GaugeMetricFamily('nsio_sockets_engineio3',
                                   'Engine.IO connections of socket.io-client 1.x and 2.x '
                                   '(Engine.IO 3): when 0 for long, they can be dropped')
        legacy.add_metric([], sum(getattr(socket, 'engineio3', False)
                                  for socket in open_sockets))
        direct = GaugeMetricFamily('nsio_websockets_direct',
                                   'WebSockets written directly, without a writer greenlet')
        direct.add_metric([], _having(open_sockets, 'conn'))
        parked = GaugeMetricFamily('nsio_websockets_parked',
                                   'WebSockets read from the event loop, without a reader '
                                   'greenlet')
        parked.add_metric([], _having(open_sockets, 'watcher'))
        decoding = GaugeMetricFamily('nsio_websockets_wsproto',
                                     'WebSockets whose frames wsproto decodes (their client '
                                     'sent a piece of a frame, a control frame or a fragment); '
                                     'the others\' whole text frames are decoded without it')
        decoding.add_metric([], _having(open_sockets, 'frames'))
        held = GaugeMetricFamily('nsio_registrations_held',
                                 'Registrations held by a socket of this process')
        held.add_metric([], len(delivery.holders))
        users = GaugeMetricFamily('nsio_users_online',
                                  'Users with at least one socket on this process')
        users.add_metric([], len({holder.user_id for holder in delivery.holders.values()}))
        errors = CounterMetricFamily('nsio_state_errors',
                                     'Calls to the shared state (Redis) that failed')
        errors.add_metric([], self.server.state.failures)
        rooms = GaugeMetricFamily('nsio_user_rooms',
                                  'Socket.IO rooms of users on this process (one per user '
                                  'with a socket here; none left behind)')
        rooms.add_metric([], sum(1 for room in self.server.socketio.server.manager.rooms.get(
            '/', {}) if isinstance(room, str) and room.startswith('user:')))
        found = [sockets, legacy, direct, parked, decoding, held, users, errors, rooms]
        if self.server.webhooks is not None:
            queued = self.server.webhooks.queued()
            if queued is not None:
                waiting = GaugeMetricFamily('nsio_webhooks_queued',
                                            'Webhook calls waiting to be made or retried '
                                            '(with Redis: of every process)')
                waiting.add_metric([], queued)
                found.append(waiting)
        return found

    def describe(self):
        return []


@bp.get('/metrics')
def metrics():
    """The Prometheus text format, no token needed (it names no user)."""
    registry = current_app.extensions['notification_socketio'].metrics.registry
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


@bp.before_app_request
def _start_timer():
    if request.endpoint in PUSH_ROUTES:
        g.push_started = time.perf_counter()


@bp.after_app_request
def _count_push(response):
    route = PUSH_ROUTES.get(request.endpoint)
    if route is not None:
        metrics_ = current_app.extensions['notification_socketio'].metrics
        metrics_.pushes.labels(route, outcome_of(response.status_code)).inc()
        if response.status_code == 200 and 'push_started' in g:
            metrics_.push_latency.labels(route).observe(
                time.perf_counter() - g.push_started)
    return response
