"""What a connection sends the guest besides ACKs: host data as the guest's window
allows, our FIN at the host's EOF, and what is sent again: the segment after a hole
(three duplicate ACKs, a partial ACK), everything from the oldest unacknowledged byte
(a timeout), a probe of a zero window. Functions over a TcpConnection (sans-I/O, take
`now`); the connection calls them and owns the state they set.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from netstack.log import get_logger
from netstack.wire.tcp import ACK, FIN, PSH, seq_diff, seq_lt

if TYPE_CHECKING:
    from netstack.tcp.connection import TcpConnection

log = get_logger("netstack.tcp.connection")


def pump(conn: TcpConnection, now: float) -> None:
    """Send host data the guest's window allows; FIN once the host's EOF is reached."""
    host = conn.host
    if host is None or conn.fin_to_guest:
        return
    writer = conn.writer
    hlen = 20 + (12 if conn.ts_enabled else 0)
    while True:
        in_flight = seq_diff(conn.snd_nxt, conn.snd_una)
        room = conn.guest_window - in_flight
        if room <= 0:
            if in_flight == 0 and conn.rto_deadline is None:
                conn._arm_rto(now)  # persist: probe a zero window
            return
        view = writer.payload_view(hlen, room)
        try:
            n = host.peek_into(view, conn.acked_in_queue + in_flight)
        except OSError as e:
            conn.on_host_error(e.errno or errno.EIO, now)
            return
        if n is None:
            conn.host_readable = False
            return
        if n == 0:
            conn.host_readable = False
            conn.eof_from_host = True
            send_fin(conn, now)
            return
        drained = n < len(view) and not host.peer_closed
        window = conn._window_field()
        writer.send(
            conn.flow,
            conn.snd_nxt,
            conn.rcv_nxt,
            ACK | PSH,
            window,
            conn._ts(now),
            n,
            conn.seg_size,
        )
        conn.ack_needed = False
        conn.snd_nxt = (conn.snd_nxt + n) & 0xFFFFFFFF
        conn.bytes_to_guest += n
        conn.last_activity = now
        if conn.rto_deadline is None:
            conn._arm_rto(now)
        if drained:
            # a short read emptied the queue: the next byte (or FIN) from the host
            # brings a fresh edge, so asking again now would only say EAGAIN
            conn.host_readable = False
            return


def send_fin(conn: TcpConnection, now: float) -> None:
    if conn.fin_to_guest:
        return
    conn.fin_to_guest = True
    if not conn.fin_from_guest:
        conn.fin_to_guest_first = True
    conn.writer.send(
        conn.flow,
        conn.snd_nxt,
        conn.rcv_nxt,
        FIN | ACK,
        conn._window_field(),
        conn._ts(now),
        0,
        conn.seg_size,
    )
    conn.ack_needed = False
    conn.snd_nxt = (conn.snd_nxt + 1) & 0xFFFFFFFF
    conn._arm_rto(now)


def rewind(conn: TcpConnection, why: str) -> None:
    """Go back to the oldest unacknowledged byte (a retransmission after a timeout);
    what was sent before stays acceptable to acknowledge (`recover`)."""
    log.debug("tcp retransmit from %d: %s", conn.snd_una, why)
    top = conn.snd_nxt
    if conn.fin_to_guest and not conn.fin_acked:
        top = (top - 1) & 0xFFFFFFFF  # an ACK of our FIN waits for it to be resent
    if conn.recover is None or seq_lt(conn.recover, top):
        conn.recover = top
    conn.resend_on_partial_ack = False  # all of it is being sent again
    conn.snd_nxt = conn.snd_una
    if conn.fin_to_guest and not conn.fin_acked:
        conn.fin_to_guest = False
    conn.host_readable = True
    conn.dupacks = 0


def retransmit_first(conn: TcpConnection, now: float) -> None:
    """Resend what starts at snd_una, leaving snd_nxt where it is: one segment on a
    plain link, one frame (up to 64 KiB, what a lost write to the TAP took with it)
    on a vnet link."""
    log.debug("tcp fast retransmit at %d", conn.snd_una)
    host = conn.host
    data_in_flight = seq_diff(conn.snd_nxt, conn.snd_una)
    if conn.fin_to_guest and not conn.fin_acked:
        data_in_flight -= 1
    if host is None or data_in_flight <= 0:
        if conn.fin_to_guest and not conn.fin_acked and data_in_flight == 0:
            conn.fin_to_guest = False  # only our FIN is outstanding: send it again
            conn.snd_nxt = conn.snd_una
            send_fin(conn, now)
        return
    hlen = 20 + (12 if conn.ts_enabled else 0)
    limit = data_in_flight if conn.writer.link.vnet else min(conn.seg_size, data_in_flight)
    view = conn.writer.payload_view(hlen, limit)
    try:
        n = host.peek_into(view, conn.acked_in_queue)
    except OSError as e:
        conn.on_host_error(e.errno or errno.EIO, now)
        return
    if not n:
        return  # not there any more: the timeout's rewind decides
    conn.writer.send(
        conn.flow,
        conn.snd_una,
        conn.rcv_nxt,
        ACK | PSH,
        conn._window_field(),
        conn._ts(now),
        n,
        conn.seg_size,
    )
    conn.ack_needed = False
    conn._arm_rto(now, restart=True)


def send_window_probe(conn: TcpConnection, now: float) -> None:
    # a segment just below the window: the guest answers with its current window
    conn.writer.send(
        conn.flow,
        (conn.snd_una - 1) & 0xFFFFFFFF,
        conn.rcv_nxt,
        ACK,
        conn._window_field(),
        conn._ts(now),
        0,
        conn.seg_size,
    )
