"""The TCP proxy: every guest connection is terminated here and re-originated as a
host socket; inbound data rides the host socket's own buffers.

Theory of operation (names follow the direction of travel):

guest -> host
    rcv_nxt       next sequence number expected from the guest.
    Payload in order at rcv_nxt is written to the host socket at once; what the socket
    will not take yet waits in `pending_to_host` (bounded by the window we advertised).
    The window we advertise is the host socket's free send space less that backlog,
    so the host's own flow control reaches the guest.

host -> guest
    snd_una       oldest byte the guest has not acknowledged.
    snd_nxt       next byte to send.
    Host data is never copied into a private buffer: it stays in the host socket's
    receive queue and is read with MSG_PEEK at offset snd_nxt - snd_una (SO_PEEK_OFF).
    When the guest acknowledges bytes they are dropped from the queue (MSG_TRUNC).
    A retransmission is a rewind: snd_nxt = snd_una, peek again from offset 0.

The core (connection.py) is sans-I/O: it is handed `now`, a `HostStream` (the host
socket as an interface) and a `SegmentWriter`; host/ supplies the real ones.
"""
