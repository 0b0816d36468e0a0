"""A long-poll waiting for a packet wakes as soon as the packet is queued.

In-process, with gevent's own primitives: what runs in which order in one turn of the
event loop is the behaviour, so it is observed directly rather than timed.
"""
import socket as stdlib_socket

import gevent
import gevent.event
import gevent.queue
import gevent.socket

from engineio import packet as eio_packet
from engineio import socket as eio_socket

from notification_socketio import create_app, transport
from notification_socketio.config import Config

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


def test_a_waiting_poll_runs_right_after_the_greenlet_that_sent_its_packet():
    # Twenty connections become readable in the same turn of the loop; the first reader
    # to run sends a packet to a long-poll that waits. The poll must not wait behind the
    # other nineteen requests of that turn (gevent's queue wakes its waiter only then).
    socket = polling_socket()
    order = []
    pairs = [stdlib_socket.socketpair() for _ in range(READERS)]
    ours = [gevent.socket.socket(fileno=a.detach()) for a, _ in pairs]

    def poll():
        order.append(('poll', socket.poll()))

    def reader(i, conn):
        conn.recv(1)
        if 'send' not in order:
            order.append('send')
            socket.send(eio_packet.Packet(eio_packet.MESSAGE, 'hello'))
        order.append(i)

    poller = gevent.spawn(poll)
    readers = [gevent.spawn(reader, i, conn) for i, conn in enumerate(ours)]
    gevent.sleep(0.05)   # every greenlet waits: the poll on the queue, the readers on I/O
    assert order == []
    for _, theirs in pairs:
        theirs.send(b'x')
    gevent.joinall([poller, *readers], timeout=10)
    assert len(order) == READERS + 2, order
    sent = order.index('send')
    woke = next(i for i, entry in enumerate(order) if isinstance(entry, tuple))
    assert woke == sent + 2, order   # the sender finishes its turn, then the poll runs
    assert [p.data for p in order[woke][1]] == ['hello']
    for conn in ours:
        conn.close()
    for _, theirs in pairs:
        theirs.close()


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
