"""Hand-over of established TCP connections to the C flow path (csrc/flow.c).

Python's TcpConnection is the protocol; C runs the common case of an established flow
(in-order data and ACKs both ways) without a Python call per segment. A connection is
*held* by C while it is established and nothing is queued, closing or counted
(`eligible`), and from the moment a guest-opened one's SYN-ACK is out: C takes the
guest's ACK of it (its `handshake` flag), and the copy back makes the connection
ESTABLISHED in Python. Any event C does not handle takes it back: the table calls `release`
before a segment, a host event or a timer reaches the connection, and C itself lists
flows it cannot finish ("ejects": a host error, a socket that filled, a zero window,
and a connection closed both ways, which Python then closes), which `after_call`
releases. C takes the FINs of a held flow itself (csrc/flow.c), setting the same
flags Python keeps; a released flow with any of them set stays in Python. `hold`
runs after every event the table sees, so a released connection goes back to C once
it is ordinary again.

C also opens flows itself: a plain SYN to the gateway, and a port forward's
connections (tcp/opened_in_c.py, which FastPath extends). A connection built for such a
flow when Python must see it takes C's state here (`take_on`), and C goes on holding
it as `hold` would have.

Timers: C arms retransmission deadlines in its struct. A connection's `deadline` reads
them, and C lists the flows whose new deadline comes before the one Python's timer
queue holds (`py_timer_at`), so the queue is touched only then.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from netstack import _fast
from netstack.tcp.interfaces import TcpState
from netstack.tcp.opened_in_c import V4_MAPPED, OpenedInC
from netstack.tcp.params import IDLE_TIMEOUT, RTO_INITIAL
from netstack.tcp.to_host import GATHER_MAX_SEGMENT, PENDING_SLACK, WINDOW_MAX

if TYPE_CHECKING:
    from netstack.tcp.connection import TcpConnection

# why C gave a flow back (csrc/flow.c EJECT_*)
EJECT_ERROR = 1
EJECT_PUMP = 2
EJECT_BLOCKED = 3
EJECT_DONE = 4

MAX_FRAMES_PER_CALL = 256
PYTHON_WORK = 1 << 24  # added to ns_rx / ns_host_poll results: ejects or timers wait
_RELEASE_REASONS = {
    EJECT_ERROR: "host_error",
    EJECT_PUMP: "host_eof_or_zero_window",
    EJECT_BLOCKED: "host_socket_full",
    EJECT_DONE: "closed_both_ways",
}


_NO_EVENTS: list[tuple[int, int]] = []

# TcpConnection attributes C reads and writes (copied both ways), with their type
_SHARED: tuple[tuple[str, type], ...] = (
    ("snd_una", int),
    ("snd_nxt", int),
    ("rcv_nxt", int),
    ("guest_window", int),
    ("ts_recent", int),
    ("window_advertised", int),
    ("rcv_adv", int),
    ("retries", int),
    ("rto", float),
    ("acked_in_queue", int),
    ("host_readable", bool),
    ("ack_needed", bool),
    ("last_activity", float),
    ("bytes_from_guest", int),
    ("bytes_to_guest", int),
    ("fin_from_guest", bool),
    ("host_write_shut", bool),
    ("eof_from_host", bool),
    ("fin_to_guest", bool),
    ("fin_acked", bool),
    ("fin_to_guest_first", bool),
)
# ... and those C only reads
_SET_ONCE: tuple[tuple[str, type], ...] = (
    ("seg_size", int),
    ("our_mss", int),
    ("guest_wscale", int),
    ("our_wscale", int),
    ("ts_enabled", bool),
)


class FlowPathError(Exception):
    """The link failed inside C (errno in args[0])."""


class FastPath(OpenedInC):
    """One C context: the TAP fd, the frame buffer shared with Python, held flows."""

    def __init__(
        self,
        tap_fd: int,
        vnet: bool,
        rx_buf: bytearray,
        gateway_mac: bytes,
        dns_mac: bytes,
        max_flows: int,
        router_mac: bytes = bytes(6),
        dns6_mac: bytes = bytes(6),
        by_fd_cap: int = 65536,
    ) -> None:
        from netstack._fastc import ffi, lib

        self.ffi = ffi
        self.lib = lib
        self.by_fd_cap = by_fd_cap
        self._rx_ref = ffi.from_buffer(rx_buf)  # keeps the pointer valid
        ctx = lib.ns_ctx_new(tap_fd, vnet, self._rx_ref, len(rx_buf), max_flows, by_fd_cap)
        if ctx == ffi.NULL:
            raise MemoryError("flow path context")
        self.ctx: Any = ctx
        ctx.gateway_mac = gateway_mac
        ctx.dns_mac = dns_mac
        ctx.router_mac = router_mac  # IPv6 segments are addressed to these
        ctx.dns6_mac = dns6_mac
        ctx.window_max = WINDOW_MAX
        ctx.rto_initial = RTO_INITIAL
        ctx.pending_slack = PENDING_SLACK
        ctx.gather_max_segment = GATHER_MAX_SEGMENT
        self.held: dict[int, TcpConnection] = {}  # slot -> connection
        self._ns_rx = lib.ns_rx
        self._ns_host_poll = lib.ns_host_poll
        self._ns_loop = lib.ns_loop
        self.touch_timer: Callable[[TcpConnection], float | None] = lambda conn: None
        super().__init__()
        self.holds = 0
        self.releases: dict[str, int] = {}

    def close(self) -> None:
        if self.ctx is not None:
            self.lib.ns_ctx_free(self.ctx)
            self.ctx = None

    def take_on(self, conn: TcpConnection, c: Any) -> None:
        """conn was built for C's flow c (state SYN_RECEIVED, or SYN_SENT for a forward,
        its host stream on c's socket): it takes c's state and C goes on holding the
        flow for it."""
        for name, kind in _SET_ONCE:
            setattr(conn, name, kind(getattr(c, name)))
        conn.fast = FastFlow(self, c)
        self.held[int(c.slot)] = conn
        self.holds += 1
        if conn.state is not TcpState.SYN_SENT:  # which keeps its connect timeout
            conn.state_deadline = float(c.last_activity) + IDLE_TIMEOUT
        self._copy_back(conn, c)  # ESTABLISHED if C took the guest's ACK (or SYN-ACK)

    # ------------------------------------------------------------ hand-over
    def eligible(self, conn: TcpConnection) -> bool:
        host = conn.host
        sock = getattr(host, "sock", None)
        return (
            (conn.state is TcpState.ESTABLISHED or self._synack_out(conn))
            and sock is not None
            and not getattr(host, "connecting", True)
            and getattr(host, "peek_off_supported", False)
            and not (conn.fin_from_guest or conn.fin_to_guest or conn.eof_from_host)
            and not conn.host_write_shut
            and not conn.to_host.pending
            and not conn.to_host.gathered
            and not conn.ack_needed
            and not conn.acked_in_queue
            and conn.dupacks == 0
            and conn.recover is None
        )

    @staticmethod
    def _synack_out(conn: TcpConnection) -> bool:
        """A guest-opened connection whose SYN-ACK waits for its ACK."""
        return (
            conn.state is TcpState.SYN_RECEIVED
            and conn.snd_una == conn.iss
            and conn.snd_nxt == (conn.iss + 1) & 0xFFFFFFFF
        )

    def hold(self, conn: TcpConnection) -> None:
        """Give conn to C if it is eligible (and not held already)."""
        if conn.fast is not None or not self.eligible(conn):
            return
        host: Any = conn.host
        f = conn.flow
        v6 = len(f.guest_ip) == 16
        c = self.lib.ns_flow_open(
            self.ctx,
            host.sock.fileno(),
            f.guest_ip if v6 else V4_MAPPED + f.guest_ip,
            f.guest_port,
            f.remote_ip if v6 else V4_MAPPED + f.remote_ip,
            f.remote_port,
            v6,
        )
        if c == self.ffi.NULL:
            return  # full, or an fd beyond the table: Python keeps it
        c.guest_mac = f.guest_mac
        for name, _ in _SHARED:
            setattr(c, name, getattr(conn, name))
        for name, _ in _SET_ONCE:
            setattr(c, name, getattr(conn, name))
        c.rcv_acked = conn.rcv_nxt
        c.rto_deadline = conn.rto_deadline or 0.0
        c.peer_closed = host.peer_closed  # the host's FIN is queued behind its data
        c.peek_off = host.peek_off
        c.space_known = conn.to_host._space_known
        c.written_since = conn.to_host._written_since
        if conn.state is TcpState.SYN_RECEIVED:
            c.handshake = 1
            if conn.state_deadline is None:  # the idle limit once C establishes it
                conn.state_deadline = conn.last_activity + IDLE_TIMEOUT
        conn.fast = FastFlow(self, c)
        self.held[int(c.slot)] = conn
        self.holds += 1

    def release(self, conn: TcpConnection, now: float) -> None:
        """Take conn back from C: its owed writes and ACK go out first, then its state
        is copied back, then whatever made C give it up is acted on."""
        handle = conn.fast
        if handle is None:
            return
        c = handle.c
        self.lib.ns_flow_flush(self.ctx, c, now)
        self._copy_back(conn, c)
        why, err = int(c.eject), int(c.err)
        if c.unsent_len:
            conn.to_host.queue(self.ffi.buffer(c.unsent, c.unsent_len))
        del self.held[int(c.slot)]
        self.lib.ns_flow_close(self.ctx, c)
        conn.fast = None
        reason = _RELEASE_REASONS.get(why, "python_event")
        self.releases[reason] = self.releases.get(reason, 0) + 1
        if why == EJECT_ERROR:
            conn.on_host_error(err, now)
        elif why == EJECT_PUMP:
            conn.on_host_readable(now)
        elif why == EJECT_DONE:
            conn.closed_in_c(now)

    def forget(self, conn: TcpConnection) -> None:
        """Drop conn's flow without a flush (the connection is being torn down)."""
        handle = conn.fast
        if handle is None:
            return
        self._copy_back(conn, handle.c)
        del self.held[int(handle.c.slot)]
        self.lib.ns_flow_close(self.ctx, handle.c)
        conn.fast = None

    def sync(self, conn: TcpConnection) -> None:
        """Copy a held flow's state into conn (for reading; C keeps it)."""
        if conn.fast is not None:
            self._copy_back(conn, conn.fast.c)

    def _copy_back(self, conn: TcpConnection, c: Any) -> None:
        for name, kind in _SHARED:
            setattr(conn, name, kind(getattr(c, name)))
        conn.rto_deadline = float(c.rto_deadline) or None
        conn.to_host._space_known = int(c.space_known)
        conn.to_host._written_since = int(c.written_since)
        host: Any = conn.host
        if host is not None:
            host.peek_off = int(c.peek_off)
            host.peer_closed = bool(c.peer_closed)
        if conn.state is TcpState.SYN_RECEIVED and not c.handshake:
            conn.established_in_c()
        elif conn.state is TcpState.SYN_SENT and not c.syn_sent:
            for name, kind in _SET_ONCE:  # the guest's SYN-ACK decided them (in C)
                setattr(conn, name, kind(getattr(c, name)))
            conn.established_in_c()

    # --------------------------------------------------------------- events
    def rx(self, now: float) -> int:
        """Frames from the TAP: the length of one for Python (in the shared buffer); 0
        when drained; PYTHON_WORK when drained and `after_call` has work. Raises
        FlowPathError when the link failed."""
        n = int(self._ns_rx(self.ctx, now, MAX_FRAMES_PER_CALL))
        if n < 0:
            raise FlowPathError(-n)
        return n

    def rx_next(self, now: float) -> int:
        """After a frame Python handled: the next one, as `rx`. In the C loop's lone
        mode (frames come one at a time) none is read: the loop's wait tells when
        another comes, and the read that would find the TAP empty is not made."""
        if self.ctx.rx_lone:
            self.rx_flush(now)
            return 0
        return self.rx(now)

    def rx_flush(self, now: float) -> None:
        """A reader that stops before the TAP is drained: what C gathered goes to the
        host and the ACKs it owes go out now (ns_rx does it only when drained). Raises
        FlowPathError when the link failed."""
        n = int(self.lib.ns_rx_flush(self.ctx, now))
        if n < 0:
            raise FlowPathError(-n)

    def frames_in(self) -> int:
        """Frames read from the TAP (those handed to Python included)."""
        return int(self.ctx.frames_in)

    def frames_out(self) -> int:
        return int(self.ctx.frames_out)

    def snapshot(self) -> dict[str, object]:
        """Counters for the API's get_stats."""
        ctx = self.ctx
        return {
            "flows_held": len(self.held),
            "holds": self.holds,
            "releases": dict(self.releases),
            "frames_from_guest": int(ctx.frames_in),
            "frames_from_guest_in_c": int(ctx.frames_in_c),
            "frames_to_guest_from_c": int(ctx.frames_out),
            "syns_in_c": int(ctx.syns_in_c),
            "forwards_in_c": int(ctx.forwards_in_c),
            "closed_in_c": int(ctx.closed_in_c),
            "flows_unadopted": int(ctx.nunadopted),
            "time_wait_in_c": int(ctx.ntime_wait),
            "loop_waits": int(ctx.loop_waits),
            "loop_returns": int(ctx.loop_returns),
            "yield_backoffs": int(ctx.yield_backoffs),
        }

    def delack_fd(self) -> int:
        """The delayed-ACK timerfd, to be watched in the host-socket epoll (-1: none)."""
        return int(self.ctx.delack_fd)

    def host_poll(self, epfd: int, now: float) -> tuple[list[tuple[int, int]], bool]:
        """Host-socket events C did not handle, as (fd, events), and whether
        `after_call` has work."""
        n = int(self._ns_host_poll(self.ctx, epfd, now))
        if n < 0:
            raise FlowPathError(-n)
        work = n >= PYTHON_WORK
        if work:
            n -= PYTHON_WORK
        if n == 0:
            return _NO_EVENTS, work
        ctx = self.ctx
        return [(int(ctx.ev_fd[i]), int(ctx.ev_mask[i])) for i in range(n)], work

    def use_loop(self) -> None:
        """The runtime waits in `loop`: delayed ACKs wait there, not on the timerfd."""
        self.ctx.loop_delack = 1

    def loop(self, epfd: int, deadline: float) -> int:
        """Wait in C (csrc/loop.c) on the loop's epoll until deadline (time.monotonic;
        math.inf: none), serving held flows. Returns the length of a frame for Python
        (in the shared buffer) or 0, plus PYTHON_WORK when `after_call` has work;
        `events` lists the events C left. Raises FlowPathError when the link failed."""
        n = int(self._ns_loop(self.ctx, epfd, deadline, MAX_FRAMES_PER_CALL))
        if n < 0:
            raise FlowPathError(-n)
        return n

    def events(self) -> list[tuple[int, int]]:
        """The (fd, events) the last `loop` or `host_poll` call left for Python."""
        ctx = self.ctx
        n = int(ctx.nev)
        if n == 0:
            return _NO_EVENTS
        return [(int(ctx.ev_fd[i]), int(ctx.ev_mask[i])) for i in range(n)]

    def after_call(self, now: float) -> list[TcpConnection]:
        """After a C call: tell the timer queue of earlier deadlines, take back ejected
        flows. Returns the connections taken back (the caller runs the table's
        bookkeeping on them)."""
        ctx = self.ctx
        if ctx.nfwd_py:
            self._accepted_left(now)
        if ctx.nadopts:
            self.adopt_listed()  # ejected flows among them: taken on, then back
        if ctx.ntimers:
            for i in range(ctx.ntimers):
                conn = self.held.get(int(ctx.timers[i]))
                if conn is not None and conn.fast is not None:
                    conn.fast.c.timer_listed = 0
                    self.touch_timer(conn)
            ctx.ntimers = 0
        if not ctx.nejects:
            return []
        ejected = [self.held[int(ctx.ejects[i])] for i in range(ctx.nejects)]
        for conn in ejected:
            self.release(conn, now)
        return ejected


class FastFlow:
    """A connection's flow in C (conn.fast while C holds it)."""

    __slots__ = ("path", "c")

    def __init__(self, path: FastPath, c: Any) -> None:
        self.path = path
        self.c = c

    def rto_deadline(self) -> float | None:
        return float(self.c.rto_deadline) or None

    def note_timer(self, at: float | None) -> None:
        """Where Python's timer for this flow is (or later): C reports deadlines
        before it."""
        self.c.py_timer_at = math.inf if at is None else at

    def release(self, conn: TcpConnection, now: float) -> None:
        self.path.release(conn, now)


def available() -> bool:
    return _fast.FAST
