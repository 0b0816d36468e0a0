"""Delivery: the one path every message takes, from the history to the user's room."""
import logging

from .state import NotRegistered

NAMESPACE = '/'
log = logging.getLogger(__name__)


def user_room(user_id):
    """The Socket.IO room that holds every socket claiming a registration of `user_id`."""
    return 'user:' + user_id


def redact(connection_id):
    """A connectionId as it may appear in logs: enough to correlate, too little to claim."""
    return connection_id[:4] + '***'


class Delivery:
    """Keeps which socket holds which registration, and emits messages to them."""

    def __init__(self, socketio, state):
        self.socketio = socketio
        self.state = state
        self.claims = {}   # sid -> (user_id, connection_id) of the registration it holds

    def push(self, user_id, message):
        """Keep `message` in the user's history and send it to every socket of the user."""
        entry = self.state.append(user_id, message)
        self.socketio.emit('message', (entry.message, entry.meta),
                           to=user_room(user_id), namespace=NAMESPACE)
        return entry

    def attach(self, sid, user_id, connection_id):
        """Socket `sid` claims a registration: it joins the user's room, the older holder goes.

        Raises NotRegistered, leaving everything as it was, when there is no such registration.
        """
        if self.claims.get(sid) == (user_id, connection_id):
            return
        previous = self.state.claim(user_id, connection_id, sid)
        self.detach(sid)
        self.claims[sid] = (user_id, connection_id)
        server = self.socketio.server
        server.enter_room(sid, user_room(user_id), namespace=NAMESPACE)
        log.info('socket claimed connection %s of user %s', redact(connection_id), user_id)
        if previous is not None:
            # A newer claim wins: the client reconnected before its old socket timed out.
            log.info('socket replaced on connection %s of user %s',
                     redact(connection_id), user_id)
            server.disconnect(previous, namespace=NAMESPACE)

    def detach(self, sid):
        """Socket `sid` lets its registration go (disconnect, or a claim of another one)."""
        claim = self.claims.pop(sid, None)
        if claim is None:
            return
        user_id, connection_id = claim
        self.socketio.server.leave_room(sid, user_room(user_id), namespace=NAMESPACE)
        self.state.release(user_id, connection_id, sid)


__all__ = ['Delivery', 'NotRegistered', 'redact', 'user_room']
