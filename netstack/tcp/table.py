"""The TCP flow table: finds the connection for a guest segment, opens new ones on a
SYN (within limits), answers strays with RST, and reaps closed connections."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from netstack.log import get_logger
from netstack.stack.stats import Stats
from netstack.stack.timers import TimerQueue
from netstack.tcp.connection import TcpConnection
from netstack.tcp.fastpath import FastPath
from netstack.tcp.interfaces import Guest, HostStream, LaterTarget, Refusal, TcpState
from netstack.tcp.output import FlowAddrs, SegmentWriter
from netstack.tcp.to_host import PendingBudget
from netstack.wire import tcp

log = get_logger(__name__)

FlowKey = tuple[bytes, int, bytes, int]  # guest ip, guest port, remote ip, remote port

# A host address to connect to (tried in order), a refusal, None: drop silently, or
# a destination decided later (a directory VIP waiting for an instance).
Target = list[tuple[str, int]] | Refusal | None | LaterTarget


class HostConnector(Protocol):
    def connect_tcp(
        self, conn: TcpConnection, targets: list[tuple[str, int]], now: float
    ) -> HostStream: ...

    def adopt_tcp(self, conn: TcpConnection, fd: int) -> HostStream:
        """The host stream on a socket C connected (and added to the loop's epoll)."""
        ...


HALF_OPEN = (TcpState.CONNECTING, TcpState.SYN_RECEIVED)


class TcpTable:
    def __init__(
        self,
        writer: SegmentWriter,
        mtu: int,
        connector: HostConnector,
        resolve: Callable[[bytes, int], Target],
        guest: Guest,
        stats: Stats,
        timers: TimerQueue,
        max_flows: int = 4096,
        max_half_open: int = 512,
    ) -> None:
        self.writer = writer
        self.pending_budget = PendingBudget()  # guest bytes waiting for host sockets, all flows
        self.mtu = mtu
        self.connector = connector
        self.resolve = resolve
        self.guest = guest
        self.stats = stats
        self.timers = timers
        self.max_flows = max_flows
        self.max_half_open = max_half_open
        self.conns: dict[FlowKey, TcpConnection] = {}
        self.dirty: dict[FlowKey, TcpConnection] = {}
        # closed flows lingering to answer a retransmitted FIN, oldest first: the first
        # to give way when the table is full
        self.time_wait: dict[FlowKey, TcpConnection] = {}
        # guest SYNs whose handshake is not complete, oldest first: under a flood the
        # oldest gives way to the newest
        self.half_open: dict[FlowKey, TcpConnection] = {}
        # the C flow path, when the runtime has one: established flows run there
        self.fastpath: FastPath | None = None

    def on_segment(
        self,
        guest_mac: bytes,
        src: bytes,
        dst: bytes,
        seg: tcp.TcpHeader,
        payload: memoryview,
        quote: bytes,
        now: float,
    ) -> None:
        key = (src, seg.src_port, dst, seg.dst_port)
        conn = self.conns.get(key)
        if (
            conn is not None
            and conn.state in (TcpState.TIME_WAIT, TcpState.CLOSED)
            and seg.flags & tcp.SYN
            and not seg.flags & tcp.ACK
        ):
            self._remove(key, conn)  # the guest reuses the 4-tuple
            conn = None
        if conn is None:
            self._new_flow(key, guest_mac, seg, payload, quote, now)
            return
        if conn.fast is not None:
            conn.fast.release(conn, now)  # a segment C did not take: Python's now
        conn.on_segment(seg, payload, now)
        self.dirty[key] = conn

    def _new_flow(
        self,
        key: FlowKey,
        guest_mac: bytes,
        seg: tcp.TcpHeader,
        payload: memoryview,
        quote: bytes,
        now: float,
    ) -> None:
        flags = seg.flags
        src, sport, dst, dport = key
        flow = FlowAddrs(guest_mac, src, sport, dst, dport)
        if flags & tcp.RST:
            return
        if not flags & tcp.SYN or flags & tcp.ACK:
            self.stats.drop("tcp_no_flow")
            self._reset_stray(flow, seg, len(payload))
            return
        target = self.resolve(dst, dport)
        if target is None:
            self.stats.drop("tcp_destination_dropped")
            return
        conn = TcpConnection(
            flow, self.writer, seg, quote, self.mtu, now, self.guest, self.pending_budget
        )
        if isinstance(target, Refusal):
            self.stats.count("tcp_refused_" + target.value)
            conn.refuse(target)
            return
        self._half_open_room()
        if not self._room():
            self.stats.drop("tcp_flow_limit")
            conn.refuse(Refusal.RESET)
            return
        self.conns[key] = conn
        self.half_open[key] = conn
        self._counts_changed()
        self.stats.count("tcp_flows_opened")
        if isinstance(target, list):
            host = self.connector.connect_tcp(conn, target, now)
            conn.attach_host(host)
            if host.connected_at_once():
                # a loopback connect: the SYN-ACK goes now, not after a loop wait
                self.timers.touch(conn)
                self.host_connected(conn, True, 0, now)
                return
        else:
            target.then(lambda decided, when: self._decided_late(key, conn, decided, when), now)
        self.timers.touch(conn)

    def adopt_from_c(self, c: Any) -> TcpConnection | None:
        """A connection for the flow C opened from a guest's SYN (csrc/flow_syn.c) or
        for a forward (csrc/flow_forward.c), which Python is about to see: C goes on
        holding it. None: a forwarded flow on a 4-tuple a live connection here has
        (C could not know): it is dropped unseen, as open_to_guest drops one."""
        v4 = not c.v6
        guest_ip = bytes(c.guest_ip)[12:] if v4 else bytes(c.guest_ip)
        remote_ip = bytes(c.remote_ip)[12:] if v4 else bytes(c.remote_ip)
        flow = FlowAddrs(
            bytes(c.guest_mac), guest_ip, int(c.guest_port), remote_ip, int(c.remote_port)
        )
        key = (guest_ip, flow.guest_port, remote_ip, flow.remote_port)
        old = self.conns.get(key)
        assert self.fastpath is not None
        if (
            c.forwarded
            and old is not None
            and old.state not in (TcpState.TIME_WAIT, TcpState.CLOSED)
        ):
            self.stats.drop("tcp_forward_tuple_busy")
            self.fastpath.drop_unseen(c)
            return None
        conn = TcpConnection.opened_in_c(
            flow,
            self.writer,
            self.mtu,
            float(c.created),
            int(c.iss),
            self.guest,
            self.pending_budget,
            forwarded=bool(c.forwarded),
        )
        conn.attach_host(self.connector.adopt_tcp(conn, int(c.fd)))
        if c.syn_sent:  # the guest has not answered C's SYN: its MAC is asked again
            self.fastpath.listener_mac(-1, None)
        self.fastpath.take_on(conn, c)
        if old is not None:  # in TIME_WAIT, or a guest that opened a live 4-tuple again
            self._remove(key, old)
        if conn.state in HALF_OPEN:
            self._half_open_room(adopting=True)
            self.half_open[key] = conn
        self.conns[key] = conn
        self.after(conn)
        self._counts_changed()
        return conn

    def _counts_changed(self) -> None:
        """C counts the flows it opens against the limits, with Python's."""
        if self.fastpath is not None:
            self.fastpath.set_counts(len(self.conns), len(self.half_open))

    def _decided_late(
        self,
        key: FlowKey,
        conn: TcpConnection,
        target: list[tuple[str, int]] | Refusal,
        now: float,
    ) -> None:
        """A destination decided after the SYN: connect, or refuse the guest."""
        if self.conns.get(key) is not conn or conn.state is not TcpState.CONNECTING:
            return  # the guest gave up, or the flow gave way meanwhile
        if isinstance(target, Refusal):
            self.stats.count("tcp_refused_" + target.value)
            conn.refuse(target)
        else:
            conn.attach_host(self.connector.connect_tcp(conn, target, now))
        self.after(conn)

    def open_to_guest(
        self, flow: FlowAddrs, make_host: Callable[[TcpConnection], HostStream], now: float
    ) -> TcpConnection | None:
        """A forwarded connection: the host side is accepted, SYN the guest. None when
        the table is full or the 4-tuple is taken (the caller closes the host side)."""
        key = (flow.guest_ip, flow.guest_port, flow.remote_ip, flow.remote_port)
        if self.fastpath is not None:  # a flow C opened on it is seen first
            self.fastpath.adopt_tuple(*key)
        old = self.conns.get(key)
        if old is not None:
            if old.state not in (TcpState.TIME_WAIT, TcpState.CLOSED):
                self.stats.drop("tcp_forward_tuple_busy")
                return None
            self._remove(key, old)
        if not self._room():
            self.stats.drop("tcp_flow_limit")
            return None
        conn = TcpConnection(
            flow, self.writer, None, b"", self.mtu, now, self.guest, self.pending_budget
        )
        conn.attach_host(make_host(conn))
        self.conns[key] = conn
        self._counts_changed()
        self.stats.count("tcp_forwards_opened")
        conn.open_to_guest(now)
        self.timers.touch(conn)
        return conn

    def _half_open_room(self, adopting: bool = False) -> None:
        """Under the half-open limit, the oldest handshake gives way to the newest. The
        flows C opened count as half-open: at the limit they are taken on first, so
        that they can give way too (not when one of them is being taken on)."""
        fast = self.fastpath
        if (
            not adopting
            and fast is not None
            and len(self.half_open) + fast.unadopted() >= self.max_half_open
        ):
            fast.adopt_all()
        while len(self.half_open) >= self.max_half_open:
            old_key, old = next(iter(self.half_open.items()))
            if self.fastpath is not None:
                self.fastpath.sync(old)  # C may have taken the ACK that establishes it
            if old.state not in HALF_OPEN:
                del self.half_open[old_key]
                continue
            self.stats.drop("tcp_half_open_evicted")
            old.abort("half-open limit: the oldest handshake gives way")
            self._remove(old_key, old)

    def _room(self) -> bool:
        """Whether a new flow fits, making room from TIME_WAIT flows if need be (the
        flows C opened and Python has not seen count too, and those lingering in
        TIME_WAIT in C, which give way after Python's)."""
        fast = self.fastpath
        in_c = fast.unadopted() + fast.time_wait() if fast is not None else 0
        while len(self.conns) + in_c >= self.max_flows and self.time_wait:
            key, conn = next(iter(self.time_wait.items()))
            self._remove(key, conn)
        while len(self.conns) + in_c >= self.max_flows and fast and fast.evict_time_wait():
            in_c -= 1
        return len(self.conns) + in_c < self.max_flows

    def _reset_stray(self, flow: FlowAddrs, seg: tcp.TcpHeader, payload_len: int) -> None:
        """RFC 9293 3.10.7.1: a segment for no connection gets a RST."""
        if seg.flags & tcp.ACK:
            self.writer.send(flow, seg.ack, 0, tcp.RST, 0, None, 0, 0)
        else:
            seg_len = (
                payload_len + (1 if seg.flags & tcp.SYN else 0) + (1 if seg.flags & tcp.FIN else 0)
            )
            self.writer.send(flow, 0, seg.seq + seg_len, tcp.RST | tcp.ACK, 0, None, 0, 0)

    # -------------------------------------------------- events from the host side
    def host_connected(self, conn: TcpConnection, ok: bool, err: int, now: float) -> None:
        if ok:
            conn.on_host_connected(now)
        else:
            conn.on_host_connect_failed(err, now)
        self.after(conn)

    def after(self, conn: TcpConnection) -> None:
        """Bookkeeping after any event on conn: timers and reaping."""
        f = conn.flow
        key = (f.guest_ip, f.guest_port, f.remote_ip, f.remote_port)
        if conn.state is TcpState.CLOSED:
            if self.conns.get(key) is conn:
                self._remove(key, conn)
            return
        if key in self.half_open and conn.state not in HALF_OPEN:
            del self.half_open[key]
            self._counts_changed()
        if conn.state is TcpState.TIME_WAIT and key not in self.time_wait:
            self.time_wait[key] = conn
        if self.fastpath is not None and conn.fast is None and self.conns.get(key) is conn:
            self.fastpath.hold(conn)
        self.timers.touch(conn)

    def flush(self, now: float) -> None:
        """End of a batch of guest frames: owed ACKs go out."""
        dirty = self.dirty
        self.dirty = {}
        for conn in dirty.values():
            conn.flush(now)
            self.after(conn)

    def timer_fired(self, conn: TcpConnection) -> None:
        self.after(conn)

    def _remove(self, key: FlowKey, conn: TcpConnection) -> None:
        if self.fastpath is not None:
            self.fastpath.forget(conn)
        del self.conns[key]
        self.dirty.pop(key, None)
        self.time_wait.pop(key, None)
        self.timers.forget(conn)
        self.half_open.pop(key, None)
        self._counts_changed()
        if conn.host is not None:
            conn.host.close(reset=True)
            conn.host = None
        self.stats.count("tcp_flows_closed")

    def close_all(self) -> None:
        if self.fastpath is not None:
            self.fastpath.adopt_all()  # C's flows close as Python's do
        for key, conn in list(self.conns.items()):
            self._remove(key, conn)
