"""Opening a connection, both ways: the guest's SYN answered once the host side has
connected (SYN-ACK), and a forwarded connection's SYN to the guest with its SYN-ACK
taken in. Functions over a TcpConnection (sans-I/O, take `now`); the connection
calls them and owns the state they set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from netstack.tcp import to_guest
from netstack.tcp.interfaces import TcpState
from netstack.tcp.params import CONNECT_TIMEOUT, DEFAULT_MSS, OUR_WSCALE, RTO_INITIAL
from netstack.wire import tcp
from netstack.wire.tcp import ACK, RST, SYN

if TYPE_CHECKING:
    from netstack.tcp.connection import TcpConnection


def take_syn_options(conn: TcpConnection, syn: tcp.TcpHeader) -> None:
    """Negotiate from the guest's SYN or SYN-ACK."""
    opts = syn.options
    conn.guest_wscale = opts.wscale if opts.wscale is not None else 0
    conn.our_wscale = OUR_WSCALE if opts.wscale is not None else 0
    conn.ts_enabled = opts.ts_val is not None
    conn.ts_recent = opts.ts_val or 0
    mss_to_guest = min(opts.mss or DEFAULT_MSS, conn.mtu - conn.headers_len)
    conn.seg_size = max(64, mss_to_guest - (12 if conn.ts_enabled else 0))
    conn.guest_window = syn.window  # SYN windows are never scaled


# ------------------------------------------------------- the guest opens (outbound)
def answer_guest_syn(conn: TcpConnection, now: float) -> None:
    """The host side connected: SYN-ACK the guest's SYN."""
    if conn.state is not TcpState.CONNECTING:
        return
    conn._set_state(TcpState.SYN_RECEIVED, "host connected")
    conn.snd_nxt = (conn.iss + 1) & 0xFFFFFFFF
    conn.state_deadline = None
    send_synack(conn, now)
    conn._arm_rto(now)


def send_synack(conn: TcpConnection, now: float) -> None:
    opts = tcp.TcpOptions(
        mss=conn.our_mss,
        wscale=conn.our_wscale if conn.guest_wscale or conn.our_wscale else None,
        ts_val=conn._ts_val(now) if conn.ts_enabled else None,
        ts_ecr=conn.ts_recent,
    )
    window = min(conn._receive_window(), 0xFFFF)  # a SYN's window is never scaled
    conn.window_advertised = window
    conn.advertise(window)
    conn.writer.send_syn(conn.flow, conn.iss, conn.rcv_nxt, SYN | ACK, window, opts)


# ------------------------------------------------------ we open (a port forward)
def open_to_guest(conn: TcpConnection, now: float) -> None:
    """Start a connection toward the guest (the host side is already connected)."""
    conn._set_state(TcpState.SYN_SENT, "forwarded connection")
    conn.snd_nxt = (conn.iss + 1) & 0xFFFFFFFF
    conn.state_deadline = now + CONNECT_TIMEOUT
    send_syn(conn, now)
    conn._arm_rto(now)


def send_syn(conn: TcpConnection, now: float) -> None:
    def resend_now() -> None:  # the guest's MAC was learned (ARP answered)
        if conn.state is TcpState.SYN_SENT:
            send_syn(conn, conn.last_activity)

    mac = conn.guest.guest_mac_for(conn.flow.guest_ip, resend_now)
    if mac is None:
        return  # an ARP request went out; the SYN follows its answer
    if mac != conn.flow.guest_mac:
        conn.flow = conn.flow._replace(guest_mac=mac)
    opts = tcp.TcpOptions(mss=conn.our_mss, wscale=OUR_WSCALE, ts_val=conn._ts_val(now))
    window = min(conn._receive_window(), 0xFFFF)
    conn.window_advertised = window
    conn.writer.send_syn(conn.flow, conn.iss, 0, SYN, window, opts)


def on_synack(conn: TcpConnection, seg: tcp.TcpHeader, now: float) -> None:
    """A segment while our SYN waits: the guest's SYN-ACK establishes, its RST refuses."""
    flags = seg.flags
    if flags & ACK and seg.ack != (conn.iss + 1) & 0xFFFFFFFF:
        if not flags & RST:
            conn.writer.send(conn.flow, seg.ack, 0, RST, 0, None, 0, 0)
        return
    if flags & RST:
        if flags & ACK:
            conn._close(reset_host=False, why="guest refused the forwarded connection")
        return
    if not (flags & SYN and flags & ACK):
        return
    take_syn_options(conn, seg)
    conn.rcv_nxt = (seg.seq + 1) & 0xFFFFFFFF
    conn.rcv_adv = (conn.rcv_nxt + conn.window_advertised) & 0xFFFFFFFF  # our SYN's window
    conn.snd_una = seg.ack
    conn.retries = 0
    conn.rto = RTO_INITIAL
    conn._disarm_rto()
    conn.state_deadline = None
    conn.last_activity = now
    conn._set_state(TcpState.ESTABLISHED, "guest accepted")
    conn._send_ack(now)
    conn.host_readable = True  # the client may have written before the guest answered
    to_guest.pump(conn, now)
