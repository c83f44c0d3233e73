"""A hypothesis state machine over one established connection: the guest sends good
bytes in any order, size, overlap and repetition, mixed with segments the stack must
refuse (no ACK flag, outside the window, SYN, RST at a wrong number, damaged headers,
other ports); the host socket takes as much as it likes; time passes. Whatever
happens, the host receives a prefix of the good bytes, and what we acknowledged to
the guest is exactly what the host has or holds for it."""

from __future__ import annotations

import os
import struct

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from netstack.tcp import connection as tcpconn
from netstack.tcp.interfaces import TcpState
from tests.fakes import GUEST_MAC, GW_MAC, FakeStream, Rig
from tests.tcp.test_tcp_traces import GUEST, GW, ISN, SPORT, established

GOOD = bytes((i * 31 + i // 251) & 0xFF for i in range(40_000))


def segment(flags: str, seq: int, ack: int, data: bytes = b"", sport: int = SPORT) -> bytes:
    pkt = (
        Ether(src=GUEST_MAC, dst=GW_MAC)
        / IP(src=GUEST, dst=GW)
        / TCP(
            sport=sport,
            dport=80,
            seq=seq & 0xFFFFFFFF,
            ack=ack & 0xFFFFFFFF,
            flags=flags,
            window=2000,
            options=[("Timestamp", (5001, 1))],
        )
        / data
    )
    return bytes(10) + bytes(pkt)


class EstablishedConnection(RuleBasedStateMachine):
    @initialize()
    def open(self) -> None:
        self.rig = Rig()
        self.stream: FakeStream
        self.stream, self.iss = established(self.rig)
        self.conn = self.rig.host.connects[0][0]
        assert self.conn.state is TcpState.ESTABLISHED
        self.batch: list[bytes] = []
        self.fin_sent = False

    # ------------------------------------------------------------ guest frames
    def _deliver(self, frame: bytes, end_batch: bool) -> None:
        self.batch.append(frame)
        if end_batch:
            self.end_batch()

    @rule()
    def end_batch(self) -> None:
        rig = self.rig
        for frame in self.batch:
            buf = bytearray(frame)
            rig.stack.receive(buf, len(buf), rig.now)
        self.batch.clear()
        rig.stack.end_of_batch(rig.now)
        rig.link.take()

    def _near(self, delta: int) -> int:
        """An offset into GOOD near the next byte the guest owes (most action is there)."""
        return min(max(0, (self.conn.rcv_nxt - ISN - 1) + delta), len(GOOD))

    @rule(
        delta=st.integers(-3000, 3000),
        length=st.integers(0, 3000),
        fin=st.booleans(),
        end_batch=st.booleans(),
    )
    def good_bytes(self, delta: int, length: int, fin: bool, end_batch: bool) -> None:
        """Good bytes at their own sequence numbers: new, old, overlapping, ahead."""
        start = self._near(delta)
        data = GOOD[start : start + length]
        fin = fin and start + len(data) == len(GOOD)
        self._deliver(
            segment("FA" if fin else "PA", ISN + 1 + start, self.iss + 1, data), end_batch
        )

    @rule(
        delta=st.integers(-100, 100),
        junk=st.binary(min_size=1, max_size=200),
        flags=st.sampled_from(["P", "", "S", "SA", "SPA", "F", "R", "RA", "U", "FS"]),
    )
    def refused_flags(self, delta: int, junk: bytes, flags: str) -> None:
        """Wrong bytes on a segment without ACK, with SYN, or with RST: never data."""
        start = self._near(delta)
        if "R" in flags and start == self.conn.rcv_nxt - ISN - 1:
            start += 1  # a RST at exactly rcv_nxt is a legitimate close, not this rule
        self._deliver(segment(flags, ISN + 1 + start, self.iss + 1, junk), True)

    @rule(
        past=st.integers(tcpconn.WINDOW_MAX + (64 << 10) + 1, 1 << 31),
        junk=st.binary(min_size=1, max_size=200),
    )
    def outside_window(self, past: int, junk: bytes) -> None:
        self._deliver(segment("PA", self.conn.rcv_nxt + past, self.iss + 1, junk), True)

    @rule(junk=st.binary(min_size=1, max_size=200), sport=st.integers(1, 65535))
    def other_port(self, junk: bytes, sport: int) -> None:
        if sport != SPORT:
            self._deliver(segment("PA", self.conn.rcv_nxt, self.iss + 1, junk, sport), True)

    @rule(
        junk=st.binary(min_size=1, max_size=200),
        at=st.integers(0, 80),
        byte=st.integers(0, 255),
        cut=st.integers(0, 120),
    )
    def damaged_header(self, junk: bytes, at: int, byte: int, cut: int) -> None:
        """Wrong bytes for the next sequence number, but the frame's IP/TCP header is
        damaged (truncated, bad data offset, bad IP length): dropped as malformed."""
        frame = bytearray(segment("PA", self.conn.rcv_nxt, self.iss + 1, junk))
        l3 = 10 + 14
        kind = at % 3
        if kind == 0:
            frame = frame[: l3 + 20 + min(cut, 19)]  # cut inside the TCP header
        elif kind == 1:
            frame[l3 + 20 + 12] = (byte % 5) << 4  # data offset below 5 words
        else:
            struct.pack_into("!H", frame, l3 + 2, 10 + byte % 10)  # IP total length < 20
        self._deliver(bytes(frame), True)

    # --------------------------------------------------------------- the host
    @rule(limit=st.one_of(st.none(), st.integers(0, 5000)))
    def host_takes(self, limit: int | None) -> None:
        self.stream.accept_limit = limit
        self.conn.on_host_writable(self.rig.now)
        self.rig.stack.tcp.after(self.conn)
        self.rig.link.take()

    @rule(seconds=st.sampled_from([0.001, 0.2, 1.0, 30.0]))
    def time_passes(self, seconds: float) -> None:
        self.rig.advance(seconds)
        self.rig.link.take()

    # ------------------------------------------------------------ invariants
    @invariant()
    def host_gets_a_prefix_of_the_good_bytes(self) -> None:
        written = bytes(self.stream.written)
        assert written == GOOD[: len(written)]
        if self.stream.shut_write:
            assert written == GOOD  # the guest's FIN: everything arrived, in order

    @invariant()
    def what_we_acknowledged_is_what_the_host_has(self) -> None:
        conn = self.conn
        if conn.state is not TcpState.ESTABLISHED:
            return
        taken = (
            bytes(self.stream.written) + bytes(conn.to_host.pending) + bytes(conn.to_host.gathered)
        )
        acked = (conn.rcv_nxt - (ISN + 1)) & 0xFFFFFFFF
        if conn.fin_from_guest:
            acked -= 1
        assert taken == GOOD[:acked]

    @invariant()
    def no_internal_error(self) -> None:
        assert self.rig.stack.stats.drops["internal_error"] == 0


EstablishedConnection.TestCase.settings = settings(
    max_examples=int(os.environ.get("NETSTACK_FUZZ_EXAMPLES", "100")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_established_connection = EstablishedConnection.TestCase
