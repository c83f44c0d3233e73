"""The TCP proxy: every guest connection is terminated here and re-originated as a
host socket; inbound data rides the host socket's own buffers.

Theory of operation (names follow the direction of travel):

guest -> host
    rcv_nxt       next sequence number expected from the guest.
    Payload in order at rcv_nxt goes to the host socket: small segments of one batch
    of guest frames are gathered in one buffer and written with one send() when the
    batch ends, TSO super-segments at once. What the socket will not take waits in
    ToHost.pending (tcp/to_host.py). The window we advertise is the host socket's free
    send space plus a 64 KiB slack (so a full socket refuses a write and arms its
    write-space wakeup), or only what is left of the slack once bytes wait; so the
    host's own flow control reaches the guest, and memory per flow stays bounded.

host -> guest
    snd_una       oldest byte the guest has not acknowledged.
    snd_nxt       next byte to send.
    Host data is never copied into a private buffer: it stays in the host socket's
    receive queue and is read with MSG_PEEK at an offset (SO_PEEK_OFF). Bytes the guest
    acknowledges are counted in `acked_in_queue` and dropped from the queue (MSG_TRUNC,
    no copy) once per batch, and always before the socket is closed; until then the
    peek offset is acked_in_queue + (snd_nxt - snd_una).
    Loss (tcp/to_guest.py) is NewReno's without a congestion window: three duplicate
    ACKs send again the frame at snd_una only (peeked at acked_in_queue), and
    `recover` (the highest sequence sent then) keeps duplicates from starting another
    until it is acknowledged; a partial ACK sends the next hole. A timeout rewinds:
    snd_nxt = snd_una, peek again from acked_in_queue.

The core (connection.py, with handshake.py and to_guest.py) is sans-I/O: it is
handed `now`, a `HostStream` (the host socket as an interface) and a `SegmentWriter`;
host/ supplies the real ones.
"""
