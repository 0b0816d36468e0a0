"""Engine.IO's heartbeat as a delivery acknowledgement.

Messages, PINGs and everything else leave through one ordered queue per socket, and a
client answers a PING with a PONG only after it has read what was queued before it. So a
PONG proves that the client received every message sent before the matching PING: the
only acknowledgement that unmodified Socket.IO clients (the original's included) send.
python-engineio has no hook for it, so the socket's own `send` and `receive` are wrapped.
"""
from engineio import packet as eio_packet


def watch_heartbeat(eio_socket, on_ping, on_pong):
    """Call `on_ping()` as a PING is queued to the client and `on_pong()` when it answers."""
    if getattr(eio_socket, 'heartbeat_watched', False):
        return
    eio_socket.heartbeat_watched = True
    send, receive = eio_socket.send, eio_socket.receive

    def watched_send(pkt):
        if pkt.packet_type == eio_packet.PING:
            on_ping()
        send(pkt)

    def watched_receive(pkt):
        receive(pkt)
        if pkt.packet_type == eio_packet.PONG:
            on_pong()

    eio_socket.send = watched_send
    eio_socket.receive = watched_receive
