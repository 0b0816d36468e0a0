"""Waking a waiting greenlet in the same turn of the event loop.

gevent wakes a greenlet that waits on its primitives (a queue, an event, an AsyncResult)
with a loop callback, and the loop runs callbacks once a turn, after every greenlet that
the turn's I/O made ready: under load, 6 to 10 ms after it was woken. `soon(function,
*args)` calls `function` right after the current greenlet yields, in the same turn: it
feeds an event to a libev watcher of its own, which libev runs next. A greenlet woken that
way may itself schedule loop callbacks after the turn's callbacks ran: a zero timer,
started with each wake-up, keeps the loop from blocking on I/O before they run.

`function` runs in the hub, as a watcher's callback does: it may switch to a greenlet
(a `gevent.hub.Waiter`'s `switch` or `throw`), never block.

`after_this_turn()` is the other way round: the caller steps back until every greenlet
that this turn made ready has run. A push answers its HTTP request that way (api.py,
fastpush.py): the messages of every push read in the same turn reach their sockets first.
"""
import sys

import gevent
import gevent.core


class _Soon:

    def __init__(self):
        self.calls = []       # (function, args), in order
        self.watcher = None   # a libev check watcher, never started: only fed
        self.guard = None     # the zero timer
        self.feeds = False    # the watcher takes fed events

    def ready(self):
        """Make the watcher and the zero timer on this thread's loop, once; True if the
        watcher takes fed events."""
        loop = gevent.get_hub().loop
        if self.watcher is None or self.watcher.loop is not loop:
            self.watcher, self.guard = loop.check(), loop.timer(0)
            self.feeds = callable(getattr(self.watcher, 'feed', None))
        return self.feeds

    def __call__(self, function, *args):
        if not self.ready():
            gevent.get_hub().loop.run_callback(function, *args)   # gevent's own wake-up
            return                           # (transport.py logs that this path is off)
        self.calls.append((function, args))
        if len(self.calls) > 1:
            return   # fed already
        self.watcher.feed(gevent.core.READ, self._run)
        if not self.guard.active:
            self.guard.start(_nothing)

    def _run(self):
        calls, self.calls = self.calls, []
        for function, args in calls:
            try:
                function(*args)
            except Exception:   # noqa: BLE001 - reported as the hub reports a callback's
                gevent.get_hub().handle_error(function, *sys.exc_info())


def _nothing():
    pass


def after_this_turn():
    """Resume once the greenlets that this turn of the event loop made ready have run
    (gevent.sleep(0) puts the caller behind them, in the loop's callbacks)."""
    gevent.sleep(0)


#: soon(function, *args): call `function(*args)` from the hub right after the current
#: greenlet yields, in the same turn of the event loop.
soon = _Soon()


def available():
    """True if gevent's loop watchers take fed events (what `soon` relies on)."""
    return soon.ready()
