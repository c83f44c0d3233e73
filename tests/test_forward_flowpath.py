"""Port forwards' connections accepted and opened to the guest in C (csrc/flow_forward.c),
on their own: a SOCK_SEQPACKET pair stands in for the TAP (a plain link), a listening
socket on 127.0.0.1 for the forward's listener, the test's own epoll for the loop's.

C must accept a client once it knows the guest's MAC, SYN the guest with the fields
Python's handshake.send_syn writes, take a plain SYN-ACK as handshake.on_synack does
(ACK, then what the client wrote meanwhile), carry and close a short connection without
Python; and leave to Python, with the flow listed for adoption, every other segment of
a flow whose SYN is out; leave the listener to Python while the MAC is unknown or the
table full; hand Python an accepted socket it cannot hold; never break on any segment
to a flow whose SYN is out."""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from netstack import _fast
from netstack.link.base import FRAME_BUFFER_SIZE
from netstack.tcp.connection import TcpConnection
from netstack.tcp.fastpath import PYTHON_WORK, FastPath
from netstack.tcp.interfaces import TcpState
from netstack.tcp.output import FlowAddrs
from netstack.tcp.params import CONNECT_TIMEOUT
from tests.helpers import fake_tap
from tests.test_syn_flowpath import (
    FULL_OPTIONS,
    GUEST_IP,
    GUEST_MAC,
    GW_IP,
    GW_MAC,
    MAPPED,
    MTU,
    OUR_MSS,
    c_context,
    checksums_valid,
    mac_str,
    syn,
)

pytestmark = pytest.mark.skipif(not _fast.FAST, reason="C fast path not built")

GUEST_SERVICE_PORT = 8080
MAX_FLOWS = 8


@dataclass(repr=False)
class Rig:
    fast: FastPath
    guest: socket.socket  # the guest's end of the fake TAP
    tap: socket.socket  # C's end
    ep: Any  # select.epoll: the loop's epoll
    listener: socket.socket  # the forward's
    rx_buf: bytearray
    adopted: list[Any] = field(default_factory=list)  # flows Python was asked to take on
    left: list[tuple[int, int]] = field(default_factory=list)  # (listener fd, client fd)
    clients: list[socket.socket] = field(default_factory=list)

    @property
    def ctx(self) -> Any:
        return self.fast.ctx

    def connect(self) -> socket.socket:
        c = socket.create_connection(self.listener.getsockname(), timeout=2)
        self.clients.append(c)
        return c

    def poll(self) -> list[tuple[int, int]]:
        """One host poll (the listener's event among them); the events left to Python."""
        events, _work = self.fast.host_poll(self.ep.fileno(), time.monotonic())
        if self.ctx.nfwd_py or self.ctx.nadopts:
            self.fast.after_call(time.monotonic())
        return events

    def poll_until(self, until: Any, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            self.poll()
            time.sleep(0.001)

    def out(self) -> list[Any]:
        got: list[Any] = []
        while True:
            try:
                raw = self.guest.recv(1 << 17)
            except BlockingIOError:
                return got
            got.append(Ether(raw))

    def out_wait(self, count: int = 1, timeout: float = 3.0) -> list[Any]:
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            self.poll()
            got += self.out()
            time.sleep(0.001)
        return got

    def rx_one(self, frame: bytes) -> int:
        self.guest.send(fake_tap.wire(False, frame))
        return self.fast.rx(time.monotonic())

    def feed(self, frames: list[bytes]) -> list[bytes]:
        return fake_tap.feed(self.fast.lib, self.ctx, self.guest, self.rx_buf, False, frames)

    def close(self) -> None:
        lib = self.fast.lib
        ctx = self.ctx
        for c in self.adopted:  # Python's now: C no longer closes their fds
            fd = int(c.fd)
            if fd >= 0:
                lib.ns_flow_close(ctx, c)
                os.close(fd)
        for _listener_fd, fd in self.left:
            os.close(fd)
        self.fast.close()
        for s in self.clients:
            s.close()
        self.ep.close()
        for s in (self.listener, self.guest, self.tap):
            s.close()


def make_rig(mac: bool = True, max_flows: int = MAX_FLOWS, by_fd_cap: int = 65536) -> Rig:
    tap, guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tap.setblocking(False)
    guest.setblocking(False)
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    listener.setblocking(False)
    ep = select.epoll()
    ep.register(listener.fileno(), select.EPOLLIN)
    rx_buf = bytearray(FRAME_BUFFER_SIZE)
    fast = c_context(tap, rx_buf, max_flows, by_fd_cap)
    rig = Rig(fast, guest, tap, ep, listener, rx_buf)
    fast.ctx.delack_delay = 0

    def adopt(c: Any) -> Any:
        assert c.unadopted == 0
        rig.adopted.append(c)
        return None

    fast.open_forwards(
        ep.fileno(),
        (socket.inet_aton("10.0.2.0"), socket.inet_aton("255.255.255.0"), socket.inet_aton(GW_IP)),
        socket.inet_pton(socket.AF_INET6, "fd00::2"),
        MTU,
        max_flows,
        max_flows,
        adopt,
    )

    def take_left(cfd: int, now: float) -> None:
        rig.left.append((listener.fileno(), cfd))

    assert fast.listen(listener.fileno(), socket.inet_aton(GUEST_IP), GUEST_SERVICE_PORT, take_left)
    if mac:
        fast.listener_mac(listener.fileno(), GUEST_MAC)
    return rig


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = make_rig()
    try:
        yield r
    finally:
        r.close()


def flow_of(r: Rig, port: int) -> Any:
    """C's flow for the client on port (the gateway and that port, to the guest's
    service)."""
    from netstack._fastc import ffi

    for i in range(r.ctx.max_flows):
        f = r.ctx.flows[i]
        if (
            f.fd >= 0
            and f.remote_port == port
            and bytes(ffi.buffer(f.remote_ip)) == MAPPED + socket.inet_aton(GW_IP)
        ):
            return r.ctx.flows + i  # a pointer, as C's calls take it
    return None


def guest_segment(
    port: int,
    seq: int,
    ack: int,
    flags: str,
    options: bytes = b"",
    payload: bytes = b"",
) -> bytes:
    """The guest's segment on the flow of the client on port (its service port to the
    gateway)."""
    return syn(
        port,
        sport=GUEST_SERVICE_PORT,
        seq=seq,
        ack=ack,
        flags=flags,
        options=options,
        payload=payload,
    )


def opened(r: Rig) -> tuple[socket.socket, int, Any]:
    """A client whose connection C accepted, its port, and the SYN C sent the guest."""
    client = r.connect()
    (syn_out,) = r.out_wait(1)
    return client, client.getsockname()[1], syn_out


# -------------------------------------------------------------------- the SYN
def test_a_client_is_accepted_in_c_and_the_guest_gets_pythons_syn(rig: Rig) -> None:
    t0 = time.monotonic()
    client, port, pkt = opened(rig)
    t1 = time.monotonic()
    assert rig.ctx.forwards_in_c == 1 and rig.ctx.nunadopted == 1
    assert pkt.src == mac_str(GW_MAC) and pkt.dst == mac_str(GUEST_MAC)
    ip = pkt[IP]
    # a client on the host's loopback appears as the gateway
    assert (ip.src, ip.dst, ip.proto, ip.ihl) == (GW_IP, GUEST_IP, 6, 5)
    assert ip.len == len(bytes(ip))
    t = pkt[TCP]
    assert t.flags == "S" and t.ack == 0
    assert (t.sport, t.dport) == (client.getsockname()[1], GUEST_SERVICE_PORT)
    # handshake.send_syn's options: MSS, timestamp (echo 0), window scale 7
    assert [o[0] for o in t.options] == ["MSS", "NOP", "NOP", "Timestamp", "NOP", "WScale"]
    assert t.options[0][1] == OUR_MSS and t.options[5][1] == 7
    tsval, tsecr = t.options[3][1]
    assert tsecr == 0 and int(t0 * 1000) - 1 <= tsval <= int(t1 * 1000) + 1
    assert 0 < t.window <= 0xFFFF
    assert checksums_valid(pkt)
    f = flow_of(rig, port)
    assert f is not None and f.syn_sent == 1 and f.forwarded == 1 and f.unadopted == 1
    assert f.iss == t.seq and f.snd_nxt == (t.seq + 1) & 0xFFFFFFFF
    assert f.window_advertised == t.window
    assert rig.left == [] and rig.adopted == []


def test_the_syn_ack_is_taken_in_c_and_the_clients_early_bytes_follow(rig: Rig) -> None:
    client, port, syn_out = opened(rig)
    client.sendall(b"early")  # before the guest answers
    rig.poll()
    assert rig.out() == []  # nothing goes before the handshake
    iss = syn_out[TCP].seq
    assert rig.rx_one(guest_segment(port, 5000, iss + 1, "SA", FULL_OPTIONS)) in (0, PYTHON_WORK)
    ack, data = rig.out()
    assert ack[TCP].flags == "A" and ack[TCP].seq == iss + 1 and ack[TCP].ack == 5001
    assert dict(ack[TCP].options)["Timestamp"][1] == 12345  # the guest's TSval echoed
    assert ack[TCP].window == (ack[TCP].window << 7) >> 7  # scaled now (by 7)
    assert data[TCP].flags == "PA" and bytes(data[TCP].payload) == b"early"
    assert checksums_valid(ack) and checksums_valid(data)
    f = flow_of(rig, port)
    assert (f.syn_sent, f.guest_wscale, f.our_wscale, f.ts_enabled) == (0, 5, 7, 1)
    assert f.seg_size == 1000 - 12 and f.rcv_nxt == 5001 and f.snd_una == iss + 1
    # the guest answers and closes first: the client reads it all, closes, and the
    # connection ends in C, Python never told
    rig.feed(
        [
            guest_segment(port, 5001, iss + 6, "PA", b"\x01\x01\x08\x0a" + bytes(8), b"reply"),
            guest_segment(port, 5006, iss + 6, "FA", b"\x01\x01\x08\x0a" + bytes(8)),
        ]
    )
    client.settimeout(2)
    got = b""
    while chunk := client.recv(100):
        got += chunk
    assert got == b"reply"
    client.close()
    out = rig.out_wait(1)
    fins = [p for p in out if "F" in p[TCP].flags]
    assert len(fins) == 1 and fins[0][TCP].seq == iss + 6
    rig.feed([guest_segment(port, 5007, iss + 7, "A", b"\x01\x01\x08\x0a" + bytes(8))])
    rig.poll()
    assert rig.ctx.nunadopted == 0 and rig.ctx.closed_in_c == 1 and rig.adopted == []
    assert flow_of(rig, port) is None


@pytest.mark.parametrize(
    "flags,ack_off,payload",
    [
        ("RA", 1, b""),  # nothing listens in the guest
        ("SA", 2, b""),  # the wrong ACK: Python resets it
        ("SA", 1, b"data on the SYN-ACK"),
        ("SAF", 1, b""),
        ("SAU", 1, b""),
        ("A", 1, b""),  # no SYN
    ],
)
def test_other_answers_to_our_syn_are_pythons(
    rig: Rig, flags: str, ack_off: int, payload: bytes
) -> None:
    client, port, syn_out = opened(rig)
    frame = guest_segment(port, 5000, syn_out[TCP].seq + ack_off, flags, payload=payload)
    assert rig.feed([frame]) == [frame]
    assert rig.ctx.nadopts == 1  # its flow is taken on first, in SYN_SENT
    rig.fast.adopt_listed()
    (c,) = rig.adopted
    assert c.syn_sent == 1 and c.forwarded == 1
    assert rig.out() == []


def test_a_syn_ack_from_another_mac_is_pythons(rig: Rig) -> None:
    client, port, syn_out = opened(rig)
    frame = syn(
        port,
        sport=GUEST_SERVICE_PORT,
        seq=5000,
        ack=syn_out[TCP].seq + 1,
        flags="SA",
        src_mac=bytes.fromhex("020000000099"),
    )
    assert rig.feed([frame]) == [frame]
    assert flow_of(rig, port).syn_sent == 1


def test_an_unanswered_syn_is_pythons_after_adopt_after(rig: Rig) -> None:
    opened(rig)
    rig.ctx.adopt_after = 0  # due now
    rig.fast.lib.ns_adopt_all(rig.ctx)
    rig.fast.adopt_listed()
    (c,) = rig.adopted
    assert c.syn_sent == 1 and c.rto_deadline > 0


def test_a_flow_taken_on_before_the_syn_ack_keeps_its_connect_timeout(rig: Rig) -> None:
    """Python's connection for it is SYN_SENT, opened by the host, with the connect
    timeout (not the idle one) from when C opened it; the SYN-ACK C takes afterwards
    makes it ESTABLISHED with the options the guest chose."""
    _client, port, syn_out = opened(rig)
    c = flow_of(rig, port)
    rig.fast.lib.ns_adopted(rig.ctx, c)
    rig.adopted.append(c)
    flow = FlowAddrs(
        GUEST_MAC, socket.inet_aton(GUEST_IP), GUEST_SERVICE_PORT, socket.inet_aton(GW_IP), port
    )
    guest: Any = None  # neither is used before a segment goes out in Python
    writer: Any = None
    conn = TcpConnection.opened_in_c(
        flow, writer, MTU, float(c.created), int(c.iss), guest, forwarded=True
    )
    rig.fast.take_on(conn, c)
    assert conn.state is TcpState.SYN_SENT and conn.opened_by_host
    assert conn.state_deadline == pytest.approx(float(c.created) + CONNECT_TIMEOUT)
    assert conn.deadline == pytest.approx(float(c.rto_deadline))  # C's SYN timer
    iss = syn_out[TCP].seq
    assert rig.rx_one(guest_segment(port, 5000, iss + 1, "SA", FULL_OPTIONS)) in (0, PYTHON_WORK)
    rig.fast.sync(conn)
    assert conn.state is TcpState.ESTABLISHED
    assert (conn.seg_size, conn.guest_wscale, conn.our_wscale) == (1000 - 12, 5, 7)
    assert conn.rcv_nxt == 5001 and conn.snd_una == (iss + 1) & 0xFFFFFFFF


def test_the_client_closing_before_the_guest_answers_is_pythons(rig: Rig) -> None:
    client, _port, _syn = opened(rig)
    client.close()
    rig.poll_until(lambda: rig.adopted)
    (c,) = rig.adopted
    assert c.syn_sent == 1


# -------------------------------------------------------------- what C leaves
def test_with_the_mac_unknown_python_accepts() -> None:
    r = make_rig(mac=False)
    try:
        r.connect()
        time.sleep(0.05)
        events = r.poll()
        assert [fd for fd, _ev in events] == [r.listener.fileno()]
        assert r.ctx.forwards_in_c == 0 and r.out() == []
        conn, _ = r.listener.accept()  # still in the backlog, for Python
        conn.close()
    finally:
        r.close()


def test_a_full_table_leaves_the_listener_to_python() -> None:
    r = make_rig(max_flows=2)
    try:
        r.fast.set_counts(2, 0)  # Python holds the limit's worth of flows
        r.connect()
        time.sleep(0.05)
        assert [fd for fd, _ev in r.poll()] == [r.listener.fileno()]
        assert r.ctx.forwards_in_c == 0
    finally:
        r.close()


def test_a_socket_beyond_the_fd_table_is_handed_to_python() -> None:
    r = make_rig(by_fd_cap=1)  # every fd is beyond it
    try:
        client = r.connect()
        r.poll_until(lambda: r.left)
        ((listener_fd, fd),) = r.left
        assert listener_fd == r.listener.fileno()
        peer = socket.socket(fileno=os.dup(fd))
        assert peer.getpeername() == client.getsockname()
        peer.close()
        assert r.ctx.forwards_in_c == 0 and r.out() == []
    finally:
        r.close()


def test_a_listener_removed_is_left_alone(rig: Rig) -> None:
    rig.fast.unlisten(rig.listener.fileno())
    rig.connect()
    time.sleep(0.05)
    assert [fd for fd, _ev in rig.poll()] == [rig.listener.fileno()]
    assert rig.ctx.forwards_in_c == 0


# ------------------------------------------------------------------ hostile
SEGMENT_FLAGS = st.sampled_from(["S", "SA", "A", "R", "RA", "F", "FA", "PA", "SAF", "SAR", ""])


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    flags=SEGMENT_FLAGS,
    seq=st.integers(0, 0xFFFFFFFF),
    ack_off=st.sampled_from([0, 1, 2, -1, 1 << 31]),
    options=st.sampled_from([b"", FULL_OPTIONS, b"\x02\x04\x00", b"\x03\x03\x0e\x00", b"\xff" * 4]),
    payload=st.binary(max_size=40),
)
def test_any_segment_to_a_flow_whose_syn_is_out_is_taken_or_left_unchanged(
    flags: str, seq: int, ack_off: int, options: bytes, payload: bytes
) -> None:
    if len(options) % 4:
        options += b"\x00" * (4 - len(options) % 4)
    r = make_rig()
    try:
        client, port, syn_out = opened(r)
        frame = guest_segment(
            port, seq, (syn_out[TCP].seq + ack_off) & 0xFFFFFFFF, flags, options, payload
        )
        back = r.feed([frame])
        f = flow_of(r, port)
        taken = back == []
        if taken:  # only a plain SYN-ACK of our SYN, and it establishes the flow
            assert flags == "SA" and ack_off == 1 and not payload
            assert f is not None and f.syn_sent == 0
            assert r.out()[0][TCP].flags == "A"
        else:
            assert f is not None and f.syn_sent == 1
    finally:
        r.close()
