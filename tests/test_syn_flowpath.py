"""Guest SYNs opened in C (csrc/flow_syn.c), on their own: a SOCK_SEQPACKET pair stands
in for the TAP (a plain link: no virtio-net header on the wire), a listening socket on
127.0.0.1 for the host side, the test's own epoll for the loop's.

C must answer a plain SYN to the gateway with a host-loopback connect and a SYN-ACK
whose every field is Python's twin; leave every other frame to Python unchanged; close
a short connection the guest closes first without Python, and keep one the host closes
first in TIME_WAIT without Python (csrc/flow_time_wait.c); list a flow for adoption when
Python must see it (a frame C leaves, an eject, adopt_after passing); and never break
on a mutated SYN."""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from netstack import _fast
from netstack.link.base import FRAME_BUFFER_SIZE
from netstack.tcp.fastpath import PYTHON_WORK, FastPath
from tests.helpers import fake_tap

pytestmark = pytest.mark.skipif(not _fast.FAST, reason="C fast path not built")

GW_MAC = bytes.fromhex("52550a000202")
DNS_MAC = bytes.fromhex("52550a000203")
GUEST_MAC = bytes.fromhex("020000000001")
GUEST_IP, GW_IP, DNS_IP = "10.0.2.100", "10.0.2.2", "10.0.2.3"
MAPPED = bytes(10) + b"\xff\xff"
GUEST6, HOST6, DNS6 = "fd00::100", "fd00::2", "fd00::3"
ROUTER_MAC = bytes.fromhex("52560000") + bytes.fromhex("0002")  # virtual_mac(fd00::2)
DNS6_MAC = bytes.fromhex("52560000") + bytes.fromhex("0003")
GUEST_PORT = 40000
MTU = 1500
OUR_MSS = MTU - 40
MAX_FLOWS = 8
# options of the full SYN: MSS 1000, WScale 5, SAckOK, Timestamp(12345, 0)
FULL_OPTIONS = (
    b"\x02\x04" + struct.pack("!H", 1000) + b"\x01\x03\x03\x05" + b"\x04\x02" + b"\x08\x0a"
    + struct.pack("!II", 12345, 0)
)  # fmt: skip
ETH_IP_LEN = 14 + 20
DPORT_FIELD = range(ETH_IP_LEN + 2, ETH_IP_LEN + 4)  # on the wire (no vnet header)


def mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def syn(
    dport: int,
    *,
    options: bytes = b"",
    sport: int = GUEST_PORT,
    seq: int = 1000,
    ack: int = 0,
    flags: str = "S",
    payload: bytes = b"",
    src: str = GUEST_IP,
    dst: str = GW_IP,
    src_mac: bytes = GUEST_MAC,
    window: int = 64240,
    v6: bool = False,
) -> bytes:
    """A guest frame as Python reads it (a zeroed virtio-net header first). The options
    are raw bytes (a multiple of 4), so a malformed list can be sent too. v6: over IPv6,
    to the router's MAC."""
    assert len(options) % 4 == 0
    pkt = (
        Ether(src=mac_str(src_mac), dst=mac_str(ROUTER_MAC if v6 else GW_MAC))
        / (IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst, flags="DF"))
        / TCP(
            sport=sport,
            dport=dport,
            seq=seq,
            ack=ack,
            flags=flags,
            window=window,
            dataofs=5 + len(options) // 4,
        )
        / Raw(options + payload)
    )
    return bytes(10) + bytes(pkt)


def syn6(
    dport: int,
    *,
    options: bytes = b"",
    src: str = GUEST6,
    dst: str = HOST6,
    src_mac: bytes = GUEST_MAC,
    seq: int = 1000,
) -> bytes:
    """An IPv6 SYN as Python reads it, to the router's MAC."""
    return syn(
        dport, options=options, src=src, dst=dst, src_mac=src_mac, seq=seq, window=64800, v6=True
    )


def segment(
    dport: int, seq: int, ack: int, flags: str = "A", payload: bytes = b"", sport: int = GUEST_PORT
) -> bytes:
    """A segment of the guest's after the handshake (no options)."""
    return syn(dport, sport=sport, seq=seq, ack=ack, flags=flags, payload=payload)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def checksums_valid(pkt: Any) -> bool:
    """The IP and TCP checksums are what scapy computes for the same bytes."""
    again = pkt.copy()
    del again[IP].chksum
    del again[TCP].chksum
    rebuilt = Ether(bytes(again))
    return bool(rebuilt[IP].chksum == pkt[IP].chksum and rebuilt[TCP].chksum == pkt[TCP].chksum)


@dataclass(repr=False)
class Rig:
    fast: FastPath
    guest: socket.socket  # the guest's end of the fake TAP
    tap: socket.socket  # C's end
    ep: Any  # select.epoll: the loop's epoll (syn_epfd)
    listener: socket.socket
    port: int
    rx_buf: bytearray
    adopted: list[tuple[int, int]] = field(default_factory=list)  # (slot, fd) per callback
    accepted: list[socket.socket] = field(default_factory=list)

    @property
    def ctx(self) -> Any:
        return self.fast.ctx

    def feed(self, frames: list[bytes]) -> list[bytes]:
        """Feed frames (as read); the frames C handed back (checked unchanged)."""
        return fake_tap.feed(self.fast.lib, self.ctx, self.guest, self.rx_buf, False, frames)

    def rx_one(self, frame: bytes) -> int:
        """One frame in; ns_rx's result."""
        self.guest.send(fake_tap.wire(False, frame))
        return self.fast.rx(time.monotonic())

    def out(self) -> list[Any]:
        """Frames C wrote to the TAP, parsed."""
        got: list[Any] = []
        while True:
            try:
                raw = self.guest.recv(1 << 17)
            except BlockingIOError:
                return got
            got.append(Ether(raw))

    def accept(self, timeout: float = 2.0) -> socket.socket:
        self.listener.settimeout(timeout)
        conn, _ = self.listener.accept()
        self.listener.setblocking(False)
        conn.settimeout(2)
        self.accepted.append(conn)
        return conn

    def nothing_to_accept(self) -> bool:
        self.listener.setblocking(False)
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return True
        self.accepted.append(conn)
        return False

    def poll_host(self, until: Any, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            self.fast.host_poll(self.ep.fileno(), time.monotonic())
            time.sleep(0.001)

    def close(self) -> None:
        lib = self.fast.lib
        ctx = self.ctx
        if ctx is not None:
            # flows Python took on: their fds are no longer C's to close
            for slot, fd in self.adopted:
                if ctx.flows[slot].fd == fd:
                    lib.ns_flow_close(ctx, ctx.flows + slot)
                os.close(fd)
        self.fast.close()  # closes the fds of flows never adopted
        for s in self.accepted:
            s.close()
        self.ep.close()
        for s in (self.listener, self.guest, self.tap):
            s.close()


def c_context(
    tap: socket.socket, rx_buf: bytearray, max_flows: int, by_fd_cap: int = 65536
) -> FastPath:
    """A C context on the fake TAP (a plain link) with the virtual network's MACs."""
    return FastPath(
        tap.fileno(),
        False,
        rx_buf,
        GW_MAC,
        DNS_MAC,
        max_flows,
        router_mac=ROUTER_MAC,
        dns6_mac=DNS6_MAC,
        by_fd_cap=by_fd_cap,
    )


def make_rig(syn_on: bool = True, max_flows: int = MAX_FLOWS, v6: bool = True) -> Rig:
    tap, guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tap.setblocking(False)
    guest.setblocking(False)
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    ep = select.epoll()
    rx_buf = bytearray(FRAME_BUFFER_SIZE)
    fast = c_context(tap, rx_buf, max_flows)
    rig = Rig(fast, guest, tap, ep, listener, listener.getsockname()[1], rx_buf)
    fast.ctx.delack_delay = 0  # every ACK at the batch's end: the test reads them

    def adopt(c: Any) -> Any:
        assert c.unadopted == 0  # ns_adopted ran first
        rig.adopted.append((int(c.slot), int(c.fd)))
        return None

    if syn_on:
        v4 = (
            socket.inet_aton("10.0.2.0"),
            socket.inet_aton("255.255.255.0"),
            socket.inet_aton(GW_IP),
            socket.inet_aton(DNS_IP),
        )
        prefix6 = socket.inet_pton(socket.AF_INET6, "fd00::")[:8]
        host6 = socket.inet_pton(socket.AF_INET6, HOST6)
        dns6 = socket.inet_pton(socket.AF_INET6, DNS6)
        fast.open_syns(
            ep.fileno(),
            v4=v4,
            v6=(prefix6, host6, dns6) if v6 else None,
            mtu=MTU,
            max_flows=max_flows,
            max_half_open=max_flows,
            adopt=adopt,
        )
    return rig


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = make_rig()
    try:
        yield r
    finally:
        r.close()


def held(r: Rig, sport: int = GUEST_PORT) -> Any:
    """The slot C holds for the guest's port sport (its 4-tuple; None: none open)."""
    from netstack._fastc import ffi

    gip = MAPPED + socket.inet_aton(GUEST_IP)
    rip = MAPPED + socket.inet_aton(GW_IP)
    ctx = r.ctx
    for i in range(ctx.max_flows):
        f = ctx.flows[i]
        if (
            f.fd >= 0
            and f.guest_port == sport
            and f.remote_port == r.port
            and bytes(ffi.buffer(f.guest_ip)) == gip
            and bytes(ffi.buffer(f.remote_ip)) == rip
        ):
            return f
    return None


def check_synack(pkt: Any, syn_seq: int, dport: int, sport: int = GUEST_PORT) -> None:
    """The fields of a SYN-ACK that do not depend on the SYN's options."""
    assert pkt.src == mac_str(GW_MAC) and pkt.dst == mac_str(GUEST_MAC)
    assert pkt.type == 0x0800
    ip = pkt[IP]
    assert (ip.src, ip.dst, ip.proto, ip.ihl, ip.version) == (GW_IP, GUEST_IP, 6, 5, 4)
    assert ip.len == len(bytes(ip))  # no trailing bytes, no short frame
    t = pkt[TCP]
    assert t.flags == "SA"
    assert (t.sport, t.dport) == (dport, sport)
    assert t.ack == (syn_seq + 1) & 0xFFFFFFFF
    assert len(t.payload) == 0 or bytes(t.payload) == b""
    assert checksums_valid(pkt)


# ------------------------------------------------------------------ 1, 2: the SYN-ACK
def test_a_syn_with_every_option_is_answered_in_c(rig: Rig) -> None:
    base = fd_count()
    frame = syn(rig.port, options=FULL_OPTIONS, seq=0xFFFFFFF0)
    t0 = time.monotonic()
    n = rig.rx_one(frame)
    t1 = time.monotonic()
    assert n in (0, PYTHON_WORK)  # taken, not handed back
    (synack,) = rig.out()
    check_synack(synack, 0xFFFFFFF0, rig.port)
    t = synack[TCP]
    assert t.dataofs * 4 == 20 + 20
    opts = t.options
    assert [o[0] for o in opts] == ["MSS", "NOP", "NOP", "Timestamp", "NOP", "WScale"]
    assert opts[0][1] == OUR_MSS and opts[5][1] == 7
    tsval, tsecr = opts[3][1]
    assert tsecr == 12345
    assert int(t0 * 1000) - 1 <= tsval <= int(t1 * 1000) + 1  # C's clock, ms
    conn = rig.accept()
    assert conn.getpeername()[0] == "127.0.0.1"
    assert rig.ctx.nunadopted == 1 and rig.fast.unadopted() == 1
    assert rig.ctx.syns_in_c == 1 and rig.ctx.nadopts == 0
    assert fd_count() == base + 2  # C's host socket and the accepted one
    f = held(rig)
    assert f is not None
    assert f.seg_size == 1000 - 12
    assert (f.guest_wscale, f.our_wscale, f.ts_enabled, f.handshake) == (5, 7, 1, 1)
    assert f.unadopted == 1 and f.adopt_listed == 0
    assert f.iss == t.seq and f.snd_una == t.seq and f.snd_nxt == (t.seq + 1) & 0xFFFFFFFF
    assert f.rcv_nxt == 0xFFFFFFF1 and f.ts_recent == 12345
    assert f.our_mss == OUR_MSS and f.guest_window == 64240
    assert f.window_advertised == t.window
    assert bytes(rig.fast.ffi.buffer(f.guest_mac)) == GUEST_MAC
    assert f.created > 0 and rig.ctx.adopt_at == pytest.approx(f.created + 0.1, abs=1e-6)


def test_a_syn_without_options_gets_the_mss_alone(rig: Rig) -> None:
    n = rig.rx_one(syn(rig.port, seq=7))
    assert n in (0, PYTHON_WORK)
    (synack,) = rig.out()
    check_synack(synack, 7, rig.port)
    t = synack[TCP]
    assert t.options == [("MSS", OUR_MSS)] and t.dataofs == 6
    # the window: the socket's send space plus the slack, never above 16 bits (unscaled)
    assert 0 < t.window <= 0xFFFF
    f = held(rig)
    assert f is not None
    space = _fast.sock_send_space(f.fd)
    assert t.window == min(space + int(rig.ctx.pending_slack), 0xFFFF)
    assert f.rcv_adv == (8 + t.window) & 0xFFFFFFFF
    assert f.seg_size == 536  # DEFAULT_MSS
    assert (f.guest_wscale, f.our_wscale, f.ts_enabled) == (0, 0, 0)
    rig.accept()


# ------------------------------------------------------------ 3: what stays Python's
def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


PYTHONS: dict[str, Any] = {
    "to_dns_ip": lambda p: syn(p, dst=DNS_IP),
    "to_foreign_ip": lambda p: syn(p, dst="192.0.2.1"),
    "from_outside_network": lambda p: syn(p, src="10.0.3.5"),
    "from_gateway_ip": lambda p: syn(p, src=GW_IP),
    "from_dns_ip": lambda p: syn(p, src=DNS_IP),
    "with_payload": lambda p: syn(p, payload=b"data"),
    "syn_ack": lambda p: syn(p, flags="SA", ack=5),
    "syn_fin": lambda p: syn(p, flags="SF"),
    "syn_rst": lambda p: syn(p, flags="SR"),
    "truncated_option": lambda p: syn(p, options=b"\x02\x09\x05\xb4"),
    "option_length_one": lambda p: syn(p, options=b"\x01\x01\x08\x01"),
    "option_at_the_end": lambda p: syn(p, options=b"\x01\x01\x01\x03"),
    "multicast_source_mac": lambda p: syn(p, src_mac=bytes.fromhex("010000000001")),
    "gateway_source_mac": lambda p: syn(p, src_mac=GW_MAC),
    "dns_source_mac": lambda p: syn(p, src_mac=DNS_MAC),
    "zero_source_mac": lambda p: syn(p, src_mac=bytes(6)),
    "router_source_mac": lambda p: syn(p, src_mac=ROUTER_MAC),
    "v6_to_dns6": lambda p: syn6(p, dst=DNS6),
    "v6_to_foreign": lambda p: syn6(p, dst="2001:db8::1"),
    "v6_from_outside_prefix": lambda p: syn6(p, src="fd01::100"),
    "v6_from_router_address": lambda p: syn6(p, src=HOST6),
    "v6_from_dns6": lambda p: syn6(p, src=DNS6),
    "v6_link_local_source": lambda p: syn6(p, src="fe80::1"),
    "v6_dns6_source_mac": lambda p: syn6(p, src_mac=DNS6_MAC),
}


@pytest.mark.parametrize("make", list(PYTHONS.values()), ids=list(PYTHONS))
def test_other_syns_go_to_python_unchanged(rig: Rig, make: Any) -> None:
    base = fd_count()
    frame = make(rig.port)
    assert rig.feed([frame]) == [frame]
    assert rig.out() == []
    assert rig.nothing_to_accept()
    assert rig.ctx.nunadopted == 0 and rig.ctx.syns_in_c == 0 and rig.ctx.nadopts == 0
    assert fd_count() == base


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_syn_to_a_closed_port_is_refused_in_c_without_a_leak(rig: Rig, v6: bool) -> None:
    """Twin of TcpConnection.refuse(RESET) after a refused connect: RST|ACK, seq 0, the
    SYN acknowledged, no window, no options; counted opened and closed."""
    base = fd_count()
    port = closed_port()
    frame = syn6(port, seq=500) if v6 else syn(port, seq=500)
    assert rig.rx_one(frame) in (0, PYTHON_WORK)  # answered, not handed back
    (rst,) = rig.out()
    assert rst.src == mac_str(GW_MAC) and rst.dst == mac_str(GUEST_MAC)
    if v6:
        assert (rst[IPv6].src, rst[IPv6].dst) == (HOST6, GUEST6)
    else:
        assert (rst[IP].src, rst[IP].dst) == (GW_IP, GUEST_IP)
        assert checksums_valid(rst)
    t = rst[TCP]
    assert (t.sport, t.dport, t.flags, t.seq, t.ack, t.window) == (
        port,
        GUEST_PORT,
        "RA",
        0,
        501,
        0,
    )
    assert t.options == [] and len(t.payload) == 0
    assert rig.ctx.nunadopted == 0 and rig.ctx.nadopts == 0
    assert (rig.ctx.syns_in_c, rig.ctx.closed_in_c) == (1, 1)
    assert rig.ctx.nfree == MAX_FLOWS
    assert fd_count() == base  # the refused socket was closed


def test_ecn_bits_on_the_syn_are_still_taken(rig: Rig) -> None:
    """The control check: the Python cases above differ from a SYN C takes only in
    what they name (ECE and CWR aside, which a plain SYN may carry)."""
    assert rig.rx_one(syn(rig.port, flags="SEC")) in (0, PYTHON_WORK)
    assert len(rig.out()) == 1 and rig.ctx.syns_in_c == 1
    rig.accept()


def test_with_syns_off_every_syn_is_pythons() -> None:
    r = make_rig(syn_on=False)
    try:
        assert r.ctx.syn_on == 0
        base = fd_count()
        frame = syn(r.port, options=FULL_OPTIONS)
        assert r.feed([frame]) == [frame]
        assert r.out() == [] and r.nothing_to_accept()
        assert r.ctx.syns_in_c == 0 and r.ctx.nunadopted == 0
        assert fd_count() == base
    finally:
        r.close()


# ------------------------------------------------------- 4, 5: whole connections in C
def handshake(r: Rig, seq: int = 1000) -> tuple[int, socket.socket]:
    """SYN, SYN-ACK, the guest's ACK: our ISS and the host's end."""
    assert r.rx_one(syn(r.port, options=b"\x02\x04\x05\xb4", seq=seq)) in (0, PYTHON_WORK)
    (synack,) = r.out()
    iss = int(synack[TCP].seq)
    conn = r.accept()
    assert r.rx_one(segment(r.port, seq + 1, iss + 1)) in (0, PYTHON_WORK)
    assert r.out() == []  # a bare ACK owes nothing
    f = held(r)
    assert f is not None and f.handshake == 0 and f.snd_una == (iss + 1) & 0xFFFFFFFF
    return iss, conn


def test_a_short_connection_the_guest_closes_first_ends_in_c(rig: Rig) -> None:
    base = fd_count()
    seq = 1000
    iss, conn = handshake(rig, seq)
    assert fd_count() == base + 2
    # data: to the host, acknowledged
    assert rig.rx_one(segment(rig.port, seq + 1, iss + 1, "PA", b"hello")) in (0, PYTHON_WORK)
    assert conn.recv(100) == b"hello"
    (ack,) = rig.out()
    assert ack[TCP].flags == "A" and ack[TCP].ack == seq + 6 and ack[TCP].seq == iss + 1
    # the guest's FIN: the host reads EOF, the FIN is acknowledged
    assert rig.rx_one(segment(rig.port, seq + 6, iss + 1, "FA")) in (0, PYTHON_WORK)
    assert conn.recv(100) == b""
    (ack,) = rig.out()
    assert ack[TCP].flags == "A" and ack[TCP].ack == seq + 7
    # the host answers and closes: data, then our FIN
    conn.sendall(b"bye")
    conn.close()
    rig.accepted.remove(conn)
    f = held(rig)
    rig.poll_host(lambda: f.fin_to_guest == 1)
    frames = rig.out()
    data = [p for p in frames if bytes(p[TCP].payload)]
    assert [bytes(p[TCP].payload) for p in data] == [b"bye"]
    assert data[0][TCP].seq == iss + 1 and data[0][TCP].ack == seq + 7
    assert frames[-1][TCP].flags == "FA" and frames[-1][TCP].seq == iss + 4
    assert all(checksums_valid(p) for p in frames)
    assert f.fin_to_guest_first == 0
    # the guest acknowledges data and FIN: closed here, Python never told
    n = rig.rx_one(segment(rig.port, seq + 7, iss + 5))
    assert n == 0, "nothing for Python: no eject, no adoption"
    assert rig.ctx.closed_in_c == 1
    assert rig.ctx.nunadopted == 0 and rig.ctx.nadopts == 0 and rig.ctx.nejects == 0
    assert rig.ctx.nfree == MAX_FLOWS
    assert held(rig) is None
    assert rig.adopted == []
    assert fd_count() == base  # C's host socket closed (the accepted one by the test)
    # a late segment of the 4-tuple is a stray: Python's, and no flow to adopt
    late = segment(rig.port, seq + 7, iss + 5)
    assert rig.feed([late]) == [late]
    assert rig.ctx.nadopts == 0
    rig.fast.after_call(time.monotonic())
    assert rig.adopted == []


def lingering(r: Rig, sport: int = GUEST_PORT) -> Any:
    """The flow in TIME_WAIT in C for the guest's port sport (None: none)."""
    ctx = r.ctx
    for i in range(ctx.max_flows):
        f = ctx.flows[i]
        if f.time_wait and f.guest_port == sport and f.remote_port == r.port:
            return f
    return None


def host_closes_first(r: Rig, seq: int, sport: int = GUEST_PORT) -> tuple[int, socket.socket]:
    """A connection from the guest's port sport that the host answers and closes first;
    the guest acknowledges all and sends its FIN: our ISS and the host's end."""
    assert r.rx_one(syn(r.port, sport=sport, seq=seq)) in (0, PYTHON_WORK)
    (synack,) = r.out()
    iss = int(synack[TCP].seq)
    conn = r.accept()
    assert r.rx_one(segment(r.port, seq + 1, iss + 1, sport=sport)) in (0, PYTHON_WORK)
    conn.sendall(b"answer")
    conn.shutdown(socket.SHUT_WR)
    f = held(r, sport)
    r.poll_host(lambda: f.fin_to_guest == 1)
    frames = r.out()
    assert b"".join(bytes(p[TCP].payload) for p in frames) == b"answer"
    assert frames[-1][TCP].flags & 0x01 and frames[-1][TCP].seq == iss + 7
    assert f.fin_to_guest_first == 1
    assert r.rx_one(segment(r.port, seq + 1, iss + 8, sport=sport)) in (0, PYTHON_WORK)
    assert r.rx_one(segment(r.port, seq + 1, iss + 8, "FA", sport=sport)) == 0
    return iss, conn


def test_the_host_closing_first_lingers_in_time_wait_in_c(rig: Rig) -> None:
    base = fd_count()
    seq = 5000
    iss, conn = host_closes_first(rig, seq)
    # our ACK of the guest's FIN, with the window of the socket still open then
    (ack,) = rig.out()
    assert ack[TCP].flags == 0x10 and ack[TCP].seq == iss + 8 and ack[TCP].ack == seq + 2
    assert ack[TCP].window > 0
    assert conn.recv(10) == b""  # the guest's FIN reached the host
    assert fd_count() == base + 1  # C's host socket closed (the accepted one is the test's)
    f = lingering(rig)
    assert f is not None and f.fd == -1 and held(rig) is None
    ctx = rig.ctx
    assert ctx.ntime_wait == 1 and ctx.nunadopted == 0 and ctx.closed_in_c == 0
    assert ctx.nadopts == 0 and ctx.nejects == 0 and rig.adopted == []
    rig.fast.adopt_all()  # the API's listing: nothing for Python to take on
    assert rig.adopted == [] and rig.fast.time_wait() == 1
    # a retransmitted FIN: ACKed again, window 0 (no socket behind it), as Python's
    assert rig.rx_one(segment(rig.port, seq + 1, iss + 8, "FA")) == 0
    (again,) = rig.out()
    assert again[TCP].flags == 0x10 and again[TCP].window == 0
    assert (again[TCP].seq, again[TCP].ack) == (iss + 8, seq + 2)
    # data and bare ACKs are dropped; a SYN with ACK gets a challenge ACK
    assert rig.rx_one(segment(rig.port, seq + 2, iss + 8, "PA", b"late")) == 0
    assert rig.rx_one(segment(rig.port, seq + 2, iss + 8)) == 0
    assert rig.out() == []
    assert rig.rx_one(segment(rig.port, seq + 9, iss + 8, "SA")) == 0
    (challenge,) = rig.out()
    assert challenge[TCP].flags == 0x10 and challenge[TCP].ack == seq + 2
    # an RST outside the window is ignored
    assert rig.rx_one(segment(rig.port, seq + 100, 0, "R")) == 0
    assert ctx.ntime_wait == 1
    # its time is up: closed (counted as Python counts a TIME_WAIT connection removed)
    rig.fast.lib.ns_tw_expire(ctx, time.monotonic())
    assert ctx.ntime_wait == 1  # not yet
    rig.fast.lib.ns_tw_expire(ctx, time.monotonic() + 2.1)
    assert ctx.ntime_wait == 0 and ctx.closed_in_c == 1 and ctx.nfree == MAX_FLOWS
    assert lingering(rig) is None and rig.out() == []
    # a late segment of the 4-tuple is Python's now (a stray), nothing to adopt
    late = segment(rig.port, seq + 2, iss + 8, "FA")
    assert rig.feed([late]) == [late]
    assert rig.ctx.nadopts == 0 and rig.adopted == []


def test_a_segment_right_behind_the_closing_fin_finds_the_flow_in_time_wait(rig: Rig) -> None:
    """The guest's FIN and a retransmission of it in one read: the first closes the
    flow (its TIME_WAIT would start at the batch's end), the second finds it in
    TIME_WAIT already, not Python with no connection (which would reset the guest)."""
    seq = 6000
    assert rig.rx_one(syn(rig.port, seq=seq)) in (0, PYTHON_WORK)
    (synack,) = rig.out()
    iss = int(synack[TCP].seq)
    conn = rig.accept()
    assert rig.rx_one(segment(rig.port, seq + 1, iss + 1)) in (0, PYTHON_WORK)
    conn.shutdown(socket.SHUT_WR)
    f = held(rig)
    rig.poll_host(lambda: f.fin_to_guest == 1)
    (fin,) = rig.out()
    assert fin[TCP].flags & 0x01 and fin[TCP].seq == iss + 1
    fin_from_guest = segment(rig.port, seq + 1, iss + 2, "FA")
    assert rig.feed([fin_from_guest, fin_from_guest]) == []
    first, second = rig.out()
    assert (first[TCP].ack, second[TCP].ack) == (seq + 2, seq + 2)
    assert first[TCP].window > 0 and second[TCP].window == 0
    assert rig.ctx.ntime_wait == 1 and rig.ctx.ndirty == 0 and rig.ctx.nejects == 0
    assert rig.ctx.nunadopted == 0 and rig.ctx.nadopts == 0


def test_a_reset_in_the_window_ends_time_wait(rig: Rig) -> None:
    seq = 7000
    host_closes_first(rig, seq)
    rig.out()
    assert rig.rx_one(segment(rig.port, seq + 2, 0, "R")) == 0
    assert rig.out() == []
    assert rig.ctx.ntime_wait == 0 and rig.ctx.closed_in_c == 1
    assert rig.ctx.nfree == MAX_FLOWS and lingering(rig) is None


def test_a_new_syn_on_the_4_tuple_ends_time_wait_and_opens_a_new_flow(rig: Rig) -> None:
    seq = 9000
    host_closes_first(rig, seq)
    rig.out()
    assert rig.rx_one(syn(rig.port, seq=seq + 100000)) in (0, PYTHON_WORK)
    (synack,) = rig.out()
    assert synack[TCP].flags == 0x12 and synack[TCP].ack == seq + 100001
    assert rig.ctx.ntime_wait == 0 and rig.ctx.closed_in_c == 1
    assert rig.ctx.syns_in_c == 2 and held(rig) is not None
    rig.accept()


def test_time_wait_in_c_gives_way_when_the_table_is_full(rig: Rig) -> None:
    for i in range(MAX_FLOWS):
        host_closes_first(rig, 1000 * i, sport=GUEST_PORT + i)
        rig.out()
    ctx = rig.ctx
    assert ctx.ntime_wait == MAX_FLOWS and ctx.nfree == 0
    # a new SYN: the oldest lingering flow gives way to it
    assert rig.rx_one(syn(rig.port, sport=GUEST_PORT + 100)) in (0, PYTHON_WORK)
    (synack,) = rig.out()
    assert synack[TCP].flags == 0x12
    assert ctx.ntime_wait == MAX_FLOWS - 1 and ctx.closed_in_c == 1
    assert lingering(rig, GUEST_PORT) is None and lingering(rig, GUEST_PORT + 1) is not None
    rig.accept()
    # Python's table makes room the same way (TcpTable._room)
    assert rig.fast.evict_time_wait()
    assert lingering(rig, GUEST_PORT + 1) is None and ctx.ntime_wait == MAX_FLOWS - 2
    while rig.fast.evict_time_wait():
        pass
    assert ctx.ntime_wait == 0 and ctx.closed_in_c == MAX_FLOWS


# --------------------------------------------------------------- 6: a retransmission
def test_a_retransmitted_syn_goes_to_python_and_lists_its_flow(rig: Rig) -> None:
    frame = syn(rig.port, options=FULL_OPTIONS, seq=42)
    assert rig.rx_one(frame) in (0, PYTHON_WORK)
    assert len(rig.out()) == 1
    rig.accept()
    base = fd_count()
    f = held(rig)
    assert rig.feed([frame]) == [frame]
    assert rig.out() == []  # Python answers it (from the adopted connection)
    assert rig.nothing_to_accept() and fd_count() == base
    assert rig.ctx.syns_in_c == 1
    assert rig.ctx.nadopts == 1 and int(rig.ctx.adopts[0]) == int(f.slot)
    assert f.adopt_listed == 1
    assert rig.fast.rx(time.monotonic()) == PYTHON_WORK  # after_call has work
    rig.fast.after_call(time.monotonic())
    assert rig.adopted == [(int(f.slot), int(f.fd))]
    assert rig.ctx.nunadopted == 0 and rig.ctx.nadopts == 0


# ------------------------------------------------------------------------ 7: limits
@pytest.mark.parametrize("which", ["half_open", "flows"])
def test_the_limits_count_cs_flows(rig: Rig, which: str) -> None:
    """Python's count at the limit: not even one SYN in C; one below it: one."""
    if which == "flows":
        rig.ctx.syn_flow_limit = limit = 4
    else:
        limit = int(rig.ctx.syn_half_open_limit)

    def python_has(n: int) -> None:
        if which == "flows":
            rig.fast.set_counts(n, 0)
        else:
            rig.fast.set_counts(0, n)

    python_has(limit)
    first = syn(rig.port, sport=41000)
    assert rig.feed([first]) == [first]
    python_has(limit - 1)
    assert rig.rx_one(syn(rig.port, sport=41001)) in (0, PYTHON_WORK)
    assert rig.ctx.nunadopted == 1 and len(rig.out()) == 1
    rig.accept()
    second = syn(rig.port, sport=41002)
    assert rig.feed([second]) == [second]
    assert rig.out() == [] and rig.nothing_to_accept()
    assert rig.ctx.syns_in_c == 1


def test_a_full_table_leaves_the_syn_to_python() -> None:
    r = make_rig(max_flows=1)
    try:
        r.ctx.syn_flow_limit = r.ctx.syn_half_open_limit = 100
        assert r.rx_one(syn(r.port, sport=41001)) in (0, PYTHON_WORK)
        r.accept()
        base = fd_count()
        second = syn(r.port, sport=41002)
        assert r.feed([second]) == [second]
        assert r.ctx.syns_in_c == 1 and fd_count() == base
    finally:
        r.close()


# ----------------------------------------------------------------- 8: timed adoption
def test_the_loop_lists_a_flow_after_adopt_after(rig: Rig) -> None:
    rig.fast.use_loop()
    rig.ctx.adopt_after = 0.02
    rig.ep.register(rig.tap.fileno(), select.EPOLLIN)  # the loop reads the TAP itself
    rig.guest.send(fake_tap.wire(False, syn(rig.port)))
    t0 = time.monotonic()
    n = rig.fast.loop(rig.ep.fileno(), t0 + 0.5)
    elapsed = time.monotonic() - t0
    assert n >= PYTHON_WORK and n - PYTHON_WORK == 0
    assert rig.ctx.syns_in_c == 1 and len(rig.out()) == 1
    assert 0.015 <= elapsed < 0.09
    f = held(rig)
    assert rig.ctx.nadopts == 1 and int(rig.ctx.adopts[0]) == int(f.slot)
    assert rig.ctx.adopt_at == 0
    rig.fast.adopt_listed()
    assert rig.adopted == [(int(f.slot), int(f.fd))]
    assert rig.ctx.nunadopted == 0 and rig.ctx.nadopts == 0
    rig.accept()
    # nothing more to adopt: the loop waits to its deadline
    t0 = time.monotonic()
    assert rig.fast.loop(rig.ep.fileno(), t0 + 0.03) == 0
    assert rig.adopted == [(int(f.slot), int(f.fd))]


def test_before_adopt_after_the_loop_does_not_list_the_flow(rig: Rig) -> None:
    rig.fast.use_loop()
    rig.ctx.adopt_after = 0.5
    rig.ep.register(rig.tap.fileno(), select.EPOLLIN)
    rig.guest.send(fake_tap.wire(False, syn(rig.port)))
    assert rig.fast.loop(rig.ep.fileno(), time.monotonic() + 0.05) == 0
    assert rig.ctx.syns_in_c == 1 and rig.ctx.nadopts == 0 and rig.ctx.nunadopted == 1
    rig.accept()


# ---------------------------------------------------------------- 9: mutated SYNs
Edit = tuple[str, int, int] | tuple[str, bytes]


@settings(
    max_examples=int(os.environ.get("NETSTACK_FUZZ_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("flip"), st.integers(0, 200), st.integers(1, 255)),
            st.tuples(st.just("cut"), st.integers(0, 200), st.just(0)),
            st.tuples(st.just("extend"), st.binary(min_size=1, max_size=40)),
        ),
        min_size=1,
        max_size=3,
    ),
    st.sampled_from([b"", FULL_OPTIONS, b"\x02\x04\x05\xb4", b"\x03\x03\x0e\x00"]),
)
def test_mutated_syns_never_break_c(edits: list[Any], options: bytes) -> None:
    r = make_rig()
    try:
        wire = bytearray(fake_tap.wire(False, syn(r.port, options=options, seq=0x12345678)))
        for edit in edits:
            if edit[0] == "flip":
                at = edit[1] % max(len(wire), 1)
                if wire and at not in DPORT_FIELD:  # else C connects to another port
                    wire[at] ^= edit[2]
            elif edit[0] == "cut":
                wire = wire[: edit[1]]
            else:
                wire += edit[1]
        frame = bytes(10) + bytes(wire)
        handed_back = r.feed([frame])
        out = r.out()
        event("to Python" if handed_back else "taken in C")
        if handed_back:
            assert out == [] and r.ctx.syns_in_c == 0 and r.ctx.nunadopted == 0
            return
        # taken: one SYN-ACK, valid, acknowledging the mutated SYN
        assert r.ctx.syns_in_c == 1 and r.ctx.nunadopted == 1
        assert len(out) == 1
        seq = struct.unpack_from("!I", wire, ETH_IP_LEN + 4)[0]
        sport = struct.unpack_from("!H", wire, ETH_IP_LEN)[0]
        src_mac = bytes(wire[6:12])
        pkt = out[0]
        assert pkt.dst == mac_str(src_mac) and pkt.src == mac_str(GW_MAC)
        t = pkt[TCP]
        assert t.flags == "SA" and t.ack == (seq + 1) & 0xFFFFFFFF
        assert (t.sport, t.dport) == (r.port, sport)
        assert t.options[0] == ("MSS", OUR_MSS)
        assert pkt[IP].src == GW_IP
        assert checksums_valid(pkt)
        r.accept()
    finally:
        r.close()


@settings(
    max_examples=int(os.environ.get("NETSTACK_FUZZ_EXAMPLES", "400")) // 2,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["F", "FA", "A", "PA", "R", "RA", "S", "SA", "U", "", "FPAU"]),
            st.integers(-3, 3),  # off rcv_nxt
            st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(8), b"\x08\x02\x00\x00"]),
            st.binary(max_size=20),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_segments_in_time_wait_never_break_c(segments: list[Any]) -> None:
    """Whatever the guest sends on a 4-tuple lingering in C (malformed options
    included), C keeps its books: the flow lingers or is closed and counted, once."""
    r = make_rig()
    try:
        seq = 3000
        iss, _ = host_closes_first(r, seq)
        r.out()
        for flags, off, options, payload in segments:
            frame = syn(
                r.port, seq=(seq + 2 + off) & 0xFFFFFFFF, ack=iss + 8, flags=flags,
                options=options, payload=payload,
            )  # fmt: skip
            handed_back = r.feed([frame])
            out = r.out()
            if handed_back:
                assert out == []
            ctx = r.ctx
            assert ctx.ntime_wait in (0, 1) and ctx.nfree >= MAX_FLOWS - 1
            assert ctx.closed_in_c + ctx.ntime_wait + ctx.nunadopted >= 1
            for pkt in out:
                assert checksums_valid(pkt)
            if ctx.nunadopted:  # a plain SYN opened the 4-tuple again
                r.accept()
                break
        r.fast.lib.ns_tw_expire(r.ctx, time.monotonic() + 3)
        assert r.ctx.ntime_wait == 0
    finally:
        r.close()


# ------------------------------------------------------------------------- IPv6
@pytest.fixture
def listener6() -> Iterator[socket.socket]:
    s = socket.create_server(("::1", 0), family=socket.AF_INET6, backlog=8)
    try:
        yield s
    finally:
        s.close()


def test_an_ipv6_syn_is_answered_in_c(rig: Rig, listener6: socket.socket) -> None:
    port6 = int(listener6.getsockname()[1])
    n = rig.rx_one(syn6(port6, options=FULL_OPTIONS, seq=77))
    assert n in (0, PYTHON_WORK)
    (synack,) = rig.out()
    assert synack.src == mac_str(GW_MAC) and synack.dst == mac_str(GUEST_MAC)
    ip = synack[IPv6]
    assert (ip.src, ip.dst, ip.nh, ip.hlim) == (HOST6, GUEST6, 6, 64)
    assert ip.plen == len(bytes(ip.payload))
    t = synack[TCP]
    assert t.flags == "SA" and (t.sport, t.dport) == (port6, GUEST_PORT) and t.ack == 78
    assert [o[0] for o in t.options] == ["MSS", "NOP", "NOP", "Timestamp", "NOP", "WScale"]
    assert t.options[0][1] == MTU - 60 and t.options[5][1] == 7
    assert t.options[3][1][1] == 12345
    again = synack.copy()
    del again[TCP].chksum
    assert Ether(bytes(again))[TCP].chksum == t.chksum
    conn, peer = listener6.accept()
    conn.close()
    assert peer[0] == "::1"
    f = next(rig.ctx.flows[i] for i in range(rig.ctx.max_flows) if rig.ctx.flows[i].unadopted)
    assert (f.v6, f.our_mss, f.seg_size, f.iss) == (1, MTU - 60, 1000 - 12, t.seq)
    assert rig.ctx.syns_in_c == 1


def test_with_ipv6_off_an_ipv6_syn_is_pythons(listener6: socket.socket) -> None:
    r = make_rig(v6=False)
    try:
        frame = syn6(int(listener6.getsockname()[1]))
        assert r.feed([frame]) == [frame]
        assert r.out() == [] and r.ctx.syns_in_c == 0
        # IPv4 is still C's
        assert r.rx_one(syn(r.port)) in (0, PYTHON_WORK)
        assert len(r.out()) == 1
        r.accept()
    finally:
        r.close()
