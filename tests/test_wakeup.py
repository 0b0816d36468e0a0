"""A greenlet waiting for a packet (a long-poll) or a reply (a push on Redis) resumes in
the same turn of the event loop as the greenlet that gave it, right after it (wakeup.py).

In-process, with gevent's own primitives: what runs in which order in one turn of the
event loop is the behaviour, so it is observed directly rather than timed.
"""
import socket as stdlib_socket

import gevent
import gevent.event
import gevent.hub
import gevent.queue
import gevent.socket
import pytest
import redis

from engineio import packet as eio_packet
from engineio import socket as eio_socket
from werkzeug.test import EnvironBuilder

from conftest import TOKEN

from notification_socketio import create_app, transport
from notification_socketio.config import Config
from notification_socketio.state import redis as redis_state

READERS = 20


def engineio_server():
    app = create_app(Config.for_testing())
    return app.extensions['notification_socketio'].socketio.server.eio


def polling_socket():
    """A long-polling Engine.IO socket as the server makes one, its poll kept alive."""
    socket = eio_socket.Socket(engineio_server(), 'sid')
    socket.__class__ = transport.DirectSocket   # as transport.install does on connect
    socket.one_shot = False
    return socket


def one_turn(wake, waiting):
    """Order in which greenlets run when READERS connections become readable in one turn
    of the loop and the first reader to run calls `wake()`, for `waiting()`, a greenlet
    that waits meanwhile: 'woke' marks where it resumed."""
    order = []
    pairs = [stdlib_socket.socketpair() for _ in range(READERS)]
    ours = [gevent.socket.socket(fileno=a.detach()) for a, _ in pairs]

    def waiter():
        result = waiting()
        order.append('woke')
        return result

    def reader(i, conn):
        conn.recv(1)
        if 'wake' not in order:
            order.append('wake')
            wake()
        order.append(i)

    waiting_greenlet = gevent.spawn(waiter)
    readers = [gevent.spawn(reader, i, conn) for i, conn in enumerate(ours)]
    gevent.sleep(0.05)   # every greenlet waits: the waiter for its wake-up, the readers on I/O
    assert order == []
    for _, theirs in pairs:
        theirs.send(b'x')
    gevent.joinall([waiting_greenlet, *readers], timeout=10)
    for conn in ours:
        conn.close()
    for _, theirs in pairs:
        theirs.close()
    assert len(order) == READERS + 2, order
    return order, waiting_greenlet.get()


def test_a_waiting_poll_runs_right_after_the_greenlet_that_sent_its_packet():
    # The poll must not wait behind the other nineteen requests of the turn (gevent's
    # queue wakes its waiter only after them).
    socket = polling_socket()
    order, packets = one_turn(
        lambda: socket.send(eio_packet.Packet(eio_packet.MESSAGE, 'hello')), socket.poll)
    assert order.index('woke') == order.index('wake') + 2, order   # the sender ends, then
    assert [p.data for p in packets] == ['hello']                   # the poll runs


def test_a_redis_push_resumes_right_after_the_reader_that_read_its_answer():
    # state/redis.py's PushChannel: each push waits on a Waiter that the reader greenlet
    # settles with the push's reply (or error).
    answer = gevent.hub.Waiter()
    order, reply = one_turn(lambda: redis_state._settle(answer, b'1-0'), answer.get)
    assert order.index('woke') == order.index('wake') + 2, order
    assert reply == b'1-0'
    failed = gevent.hub.Waiter()
    order, _ = one_turn(lambda: redis_state._settle(failed, redis.ResponseError('NOSCRIPT')),
                        lambda: pytest.raises(redis.ResponseError, failed.get))
    assert order.index('woke') == order.index('wake') + 2, order


def test_a_poll_on_a_connection_of_its_own_does_not_take_the_prompt_wake_up():
    # Its answer waits for a lull of the worker anyway (transport.Lull).
    socket = polling_socket()
    socket.one_shot = True
    poller = gevent.spawn(socket.poll)
    gevent.sleep(0.05)
    assert socket.queue.poll is None
    socket.send(eio_packet.Packet(eio_packet.MESSAGE, 'hello'))
    assert [p.data for p in poller.get(timeout=5)] == ['hello']


def test_what_a_promptly_woken_poll_schedules_runs_without_waiting_for_io():
    # A poll woken from a greenlet that runs in the loop's callbacks wakes after that
    # turn's callbacks ran; what it schedules in turn must still run before the loop
    # blocks on I/O. Nothing here does I/O: without care, it would wait for the timeout.
    queue = engineio_server().create_queue()
    done = gevent.event.Event()

    def poll():
        queue.wait(timeout=10)
        gevent.spawn(done.set)   # a loop callback

    poller = gevent.spawn(poll)
    gevent.sleep(0.05)
    gevent.spawn(queue.put, 'packet')   # runs in the loop's callbacks
    assert done.wait(timeout=5)
    poller.join(timeout=5)
    assert poller.successful()


@pytest.mark.parametrize('body', [
    {'json': {'message': 'hello'}},   # the fast route
    {'data': {'message': 'hello'}},   # a form body (the original's): through Flask
])
def test_the_pushes_of_one_turn_all_deliver_before_any_is_answered(monkeypatch, body):
    # A message reaches its sockets as soon as its push is read; the HTTP answers of the
    # turn's pushes to one user each wait until the others delivered too
    # (wakeup.after_this_turn).
    app = create_app(Config.for_testing())
    delivery = app.extensions['notification_socketio'].delivery
    order = []
    push = delivery.push

    def delivered(targets, *args):
        appended = push(targets, *args)
        order.append(('delivered', targets[0]))
        return appended

    monkeypatch.setattr(delivery, 'push', delivered)

    def post(i):
        environ = EnvironBuilder(path=f'/api/u{i}/push', method='POST',
                                 headers={'X-AUTH-TOKEN': TOKEN}, **body).get_environ()
        return b''.join(app.wsgi_app(
            environ, lambda status, headers: order.append(('answered', f'u{i}', status))))

    posts = [gevent.spawn(post, i) for i in range(3)]   # all run in the same turn
    gevent.joinall(posts, timeout=10)
    assert all(p.successful() for p in posts)
    assert order[:3] == [('delivered', f'u{i}') for i in range(3)], order
    assert order[3:] == [('answered', f'u{i}', '200 OK') for i in range(3)], order


def test_a_poll_waits_until_its_timeout_and_no_longer():
    queue = engineio_server().create_queue()
    with pytest.raises(gevent.queue.Empty):
        queue.wait(0.05)
    assert queue.poll is None   # a packet put later wakes nobody
    queue.put('packet')
    assert queue.wait(1) == 'packet'   # there already: no wait


def test_closing_the_socket_ends_a_waiting_poll():
    # python-engineio's close() queues None for the poll under way.
    socket = polling_socket()
    poller = gevent.spawn(socket.poll)
    gevent.sleep(0.05)
    assert socket.queue.poll is not None
    socket.close(wait=False, abort=True)
    assert poller.get(timeout=5) == []
