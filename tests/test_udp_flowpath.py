"""The C UDP path (csrc/udp.c) on its own: a SOCK_SEQPACKET pair stands in for the TAP,
loopback UDP sockets for the flow's host socket and the host peers.

A held flow's datagrams to its cached destination must reach the peer byte for byte
and in order (equal-size runs leave as one UDP_SEGMENT send, a guest GSO frame as its
datagrams); the peer's replies must reach the guest from the guest-visible source,
checksummed. Hypothesis then mutates frames and adds garbage: every frame C does not
take goes back to Python unchanged, and the peer gets exactly the payloads of the
frames C took, in order. Replies C cannot send (an unknown source, larger than the
MTU) are listed for Python in order, with those behind them."""

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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netstack import _fast
from netstack.link.base import FRAME_BUFFER_SIZE
from netstack.tcp.fastpath import PYTHON_WORK
from netstack.udp.fastpath import sockaddr
from netstack.wire import ipv4, udp
from tests.helpers import fake_tap

pytestmark = pytest.mark.skipif(not _fast.FAST, reason="C fast path not built")

GW_MAC = bytes.fromhex("52550a000202")
DNS_MAC = bytes.fromhex("52550a000203")
GUEST_MAC = bytes.fromhex("020000000001")
GUEST_IP = socket.inet_aton("10.0.2.100")
GW_IP = socket.inet_aton("10.0.2.2")
MAPPED = bytes(10) + b"\xff\xff"
GUEST_PORT = 40000
UDP_AT = 10 + 14 + 20  # where the UDP header starts in a frame from the guest
UDP_SEGMENT = 103  # linux/udp.h
UDP_GRO = 104


def datagram(
    payload: bytes,
    dport: int,
    sport: int = GUEST_PORT,
    vnet_hdr: bytes = bytes(10),
) -> bytes:
    """An IPv4/UDP frame from the guest to the gateway, checksums complete."""
    length = 8 + len(payload)
    seg = bytearray(length)
    udp.emit(udp.UdpHeader(sport, dport, length), GUEST_IP, GW_IP, payload, seg)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 1, 0x4000, 64, 17, 0, GUEST_IP, GW_IP)
    ip = ip[:10] + struct.pack("!H", _fast.checksum(ip)) + ip[12:]
    return vnet_hdr + GW_MAC + GUEST_MAC + b"\x08\x00" + ip + bytes(seg)


@dataclass(repr=False)
class Path:
    lib: Any
    ffi: Any
    ctx: Any
    guest: socket.socket  # our end of the fake TAP
    rx_buf: bytearray
    vnet: bool
    flows: list[tuple[Any, socket.socket, socket.socket]] = field(default_factory=list)
    keep: list[Any] = field(default_factory=list)

    def hold(self, guest_port: int = GUEST_PORT) -> tuple[Any, socket.socket, socket.socket]:
        """A held flow: its host socket and the peer (the gateway's port on the host)."""
        host = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        host.bind(("127.0.0.1", 0))
        host.setblocking(False)
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        f = self.lib.ns_udp_open(self.ctx, host.fileno(), MAPPED + GUEST_IP, guest_port, 0)
        assert f != self.ffi.NULL
        f.guest_mac = GUEST_MAC
        f.dst_ip = MAPPED + GW_IP
        f.dst_port = peer.getsockname()[1]
        addr = sockaddr(socket.AF_INET, ("127.0.0.1", peer.getsockname()[1]))
        assert addr is not None
        f.host_addr = addr
        f.host_addr_len = len(addr)
        self.flows.append((f, host, peer))
        return f, host, peer


@pytest.fixture(params=[1, 0], ids=["vnet", "plain"])
def path(request: pytest.FixtureRequest) -> Iterator[Path]:
    from netstack._fastc import ffi, lib

    tap_ours, tap_guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tap_ours.setblocking(False)
    tap_ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    rx_buf = bytearray(FRAME_BUFFER_SIZE)
    rx_ref = ffi.from_buffer(rx_buf)
    vnet = int(request.param)
    ctx = lib.ns_ctx_new(tap_ours.fileno(), vnet, rx_ref, len(rx_buf), 16, 4096)
    ctx.gateway_mac = GW_MAC
    ctx.dns_mac = DNS_MAC
    assert lib.ns_udp_new(ctx, 16, 4096) == 0
    ctx.udp.gateway_ip = GW_IP
    ctx.udp.mtu = 1500
    p = Path(lib, ffi, ctx, tap_guest, rx_buf, bool(vnet), keep=[rx_ref, tap_ours])
    try:
        yield p
    finally:
        for f, host, peer in p.flows:
            lib.ns_udp_close(ctx, f)
            host.close()
            peer.close()
        lib.ns_ctx_free(ctx)
        tap_ours.close()
        tap_guest.close()


def wire(p: Path, frame: bytes) -> bytes:
    return fake_tap.wire(p.vnet, frame)


def run(p: Path, frames: list[bytes]) -> list[bytes]:
    """Feed frames; the frames C handed back (checked: unchanged, in order)."""
    return fake_tap.feed(p.lib, p.ctx, p.guest, p.rx_buf, p.vnet, frames)


def received(peer: socket.socket, at_least: int = 0) -> list[bytes]:
    """Datagrams waiting at peer (waiting up to a second for at_least of them)."""
    out: list[bytes] = []
    peer.settimeout(1)
    try:
        while len(out) < at_least:
            out.append(peer.recv(65535))
    except TimeoutError:
        pass
    peer.setblocking(False)
    try:
        while True:
            out.append(peer.recv(65535))
    except BlockingIOError:
        pass
    return out


def poll_host(p: Path, sock: socket.socket) -> int:
    ep = select.epoll()
    try:
        ep.register(sock.fileno(), select.EPOLLIN)
        return int(p.lib.ns_host_poll(p.ctx, ep.fileno(), time.monotonic()))
    finally:
        ep.close()


def frames_to_guest(p: Path) -> list[tuple[bytes, int, bytes]]:
    """(source IP, source port, payload) of each datagram C wrote to the guest, GSO
    frames split; headers and checksums checked on the way."""
    p.guest.setblocking(False)
    out = []
    while True:
        try:
            frame = p.guest.recv(1 << 17)
        except BlockingIOError:
            return out
        vh = frame[:10] if p.vnet else bytes(10)
        eth = frame[10:] if p.vnet else frame
        assert eth[:6] == GUEST_MAC and eth[6:12] == GW_MAC and eth[12:14] == b"\x08\x00"
        ip = eth[14:34]
        assert _fast.checksum(ip) == 0 and ip[9] == 17
        src, dst = ip[12:16], ip[16:20]
        assert dst == GUEST_IP
        seg = eth[34:]
        assert len(seg) == struct.unpack("!H", ip[2:4])[0] - 20
        sport, dport, length, _ = struct.unpack("!HHHH", seg[:8])
        assert dport == GUEST_PORT and length == len(seg)
        pseudo = ipv4.pseudo_header_sum(src, dst, 17, length)
        if p.vnet:
            assert vh[0] == 1  # NEEDS_CSUM: the partial sum, finished as the kernel would
            assert struct.unpack("<HH", vh[6:10]) == (34, 6)
            done = bytearray(seg)
            done[6:8] = struct.pack("!H", _fast.checksum(done))
            assert _fast.checksum(done, pseudo) == 0
        else:
            assert _fast.checksum(seg, pseudo) == 0
        payload = seg[8:]
        gso = struct.unpack("<H", vh[4:6])[0] if vh[1] == 5 else 0
        if gso:
            out += [(src, sport, payload[i : i + gso]) for i in range(0, len(payload), gso)]
        else:
            out.append((src, sport, payload))


# ------------------------------------------------------------------ guest -> host


def test_datagrams_reach_the_host_in_order_byte_for_byte(path: Path) -> None:
    f, _, peer = path.hold()
    port = peer.getsockname()[1]
    # large ones go at once, the small ones gathered before them first
    sizes = [1400] * 40 + [700, 1400, 1400, 0, 1, 1472] + [1000] * 5 + [9000, 50, 20000, 50]
    payloads = [os.urandom(n) for n in sizes]
    assert run(path, [datagram(pl, port) for pl in payloads]) == []
    assert received(peer, len(payloads)) == payloads
    assert f.datagrams_to_host == len(payloads)
    assert path.ctx.udp.gso_sends > 0  # the equal-size runs left as UDP_SEGMENT sends


def test_mixed_flows_in_one_batch_keep_their_order(path: Path) -> None:
    flows = [path.hold(GUEST_PORT + i) for i in range(3)]
    frames, want = [], {i: [] for i in range(3)}  # type: dict[int, list[bytes]]
    for k in range(60):
        i = (k * 7) % 3
        pl = os.urandom(200 + (k % 2) * 100)
        want[i].append(pl)
        frames.append(datagram(pl, flows[i][2].getsockname()[1], sport=GUEST_PORT + i))
    assert run(path, frames) == []
    for i, (_, _, peer) in enumerate(flows):
        assert received(peer, len(want[i])) == want[i]


def test_what_is_not_for_the_cached_destination_goes_back_unchanged(path: Path) -> None:
    _, _, peer = path.hold()
    port = peer.getsockname()[1]
    other_port = datagram(b"x", port + 1)
    from_other_guest_port = datagram(b"y", port, sport=GUEST_PORT + 1)
    fragment = bytearray(datagram(b"z" * 100, port))
    fragment[10 + 14 + 6] |= 0x20  # more fragments
    fragment[10 + 14 + 10 : 10 + 14 + 12] = b"\0\0"
    fragment[10 + 14 + 10 : 10 + 14 + 12] = struct.pack(
        "!H", _fast.checksum(bytes(fragment[24:44]))
    )
    bad_checksum = bytearray(datagram(b"w" * 10, port))
    bad_checksum[-1] ^= 0xFF
    odd = [other_port, from_other_guest_port, bytes(fragment)]
    if not path.vnet:  # a vnet frame may say its checksum is not to be trusted
        odd.append(bytes(bad_checksum))
    for frame in odd:
        assert run(path, [frame]) == [frame if path.vnet else bytes(10) + frame[10:]]
    assert received(peer) == []


def test_a_guest_gso_frame_leaves_as_its_datagrams(path: Path) -> None:
    if not path.vnet:
        pytest.skip("GSO frames come with virtio-net headers only")
    _, _, peer = path.hold()
    payload = os.urandom(1000 * 30 + 123)
    # NEEDS_CSUM, GSO_UDP_L4, hdr_len, gso_size 1000, csum_start 34, csum_offset 6
    vh = struct.pack("<BBHHHH", 1, 5, 42, 1000, 34, 6)
    assert run(path, [datagram(payload, peer.getsockname()[1], vnet_hdr=vh)]) == []
    chunks = [payload[i : i + 1000] for i in range(0, len(payload), 1000)]
    assert received(peer, len(chunks)) == chunks
    assert path.ctx.udp.gso_frames_from_guest == 1
    forged = datagram(payload[:1000], peer.getsockname()[1], vnet_hdr=vh[:4] + b"\x01\0" + vh[6:])
    assert run(path, [forged]) == [forged]  # 1,000 one-byte datagrams: no kernel makes that


@settings(
    max_examples=int(os.environ.get("NETSTACK_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(
        st.tuples(
            st.binary(min_size=0, max_size=80),  # the good payload
            st.binary(min_size=0, max_size=80),  # the damaged copy's payload
            st.one_of(
                st.tuples(st.just("cut"), st.integers(0, 140)),
                st.tuples(st.just("flip"), st.integers(0, 139), st.integers(1, 255)),
                st.tuples(st.just("junk"), st.binary(max_size=200)),
            ),
        ),
        max_size=12,
    )
)
def test_mutated_and_garbage_frames_are_taken_whole_or_handed_back(
    path: Path, edits: list[Any]
) -> None:
    """Whatever the damage, each frame is either handed back unchanged or its payload
    reaches the peer; the peer sees those payloads, in order, once each."""
    if not path.flows:
        path.hold()
    _, _, peer = path.flows[0]
    port = peer.getsockname()[1]
    received(peer)
    frames = []
    for good_payload, bad_payload, edit in edits:
        frames.append(datagram(good_payload, port))
        frames.append(fake_tap.damage(datagram(bad_payload, port), edit))
    taken = []
    for as_read in fake_tap.taken(path.vnet, frames, run(path, frames)):
        length = struct.unpack("!H", as_read[UDP_AT + 4 : UDP_AT + 6])[0]
        payload = as_read[UDP_AT + 8 : UDP_AT + length]
        gso = struct.unpack("<H", as_read[4:6])[0] if as_read[1] == 5 else 0
        if gso and len(payload) > gso:  # a GSO frame: its datagrams
            taken += [payload[i : i + gso] for i in range(0, len(payload), gso)]
        else:
            taken.append(payload)
    assert received(peer, len(taken)) == taken


# ------------------------------------------------------------------ host -> guest


def test_replies_reach_the_guest_from_the_gateway(path: Path) -> None:
    _, host, peer = path.hold()
    sizes = [1400] * 20 + [600, 1400, 9, 0]
    payloads = [os.urandom(n) for n in sizes]
    for pl in payloads:
        peer.sendto(pl, host.getsockname())
    n = poll_host(path, host)
    assert n == 0  # nothing for Python
    got = frames_to_guest(path)
    port = peer.getsockname()[1]
    assert got == [(GW_IP, port, pl) for pl in payloads]  # 127.0.0.1 looks like 10.0.2.2
    if path.vnet:
        assert path.ctx.udp.gso_frames_to_guest > 0


def test_replies_c_cannot_send_reach_python_in_order(path: Path) -> None:
    _, host, peer = path.hold()
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.2", 0))  # no guest-visible address: Python drops it
    try:
        peer.sendto(b"first", host.getsockname())
        stranger.sendto(b"stranger", host.getsockname())
        peer.sendto(b"after", host.getsockname())
        peer.sendto(b"x" * 3000, host.getsockname())  # past the MTU: Python fragments
        time.sleep(0.05)
        n = poll_host(path, host)
        assert n == PYTHON_WORK
        assert frames_to_guest(path) == [(GW_IP, peer.getsockname()[1], b"first")]
        u = path.ctx.udp
        listed = [
            (
                bytes(path.ffi.buffer(u.py[i].addr))[:4],
                int(u.py[i].port),
                bytes(path.ffi.buffer(u.py_buf + u.py[i].off, u.py[i].len)),
            )
            for i in range(u.npy)
        ]
        assert listed == [
            (socket.inet_aton("127.0.0.2"), stranger.getsockname()[1], b"stranger"),
            (socket.inet_aton("127.0.0.1"), peer.getsockname()[1], b"after"),
            (socket.inet_aton("127.0.0.1"), peer.getsockname()[1], b"x" * 3000),
        ]
        path.lib.ns_udp_python_done(path.ctx)
        peer.sendto(b"next read", host.getsockname())
        assert poll_host(path, host) == 0  # a new read starts in C again
        assert frames_to_guest(path) == [(GW_IP, peer.getsockname()[1], b"next read")]
    finally:
        stranger.close()


def send_segments(peer: socket.socket, to: Any, payload: bytes, seg: int) -> list[bytes]:
    """One UDP_SEGMENT write of payload; the datagrams it makes."""
    peer.sendmsg([payload], [(socket.SOL_UDP, UDP_SEGMENT, seg.to_bytes(2, "little"))], 0, to)
    return [payload[i : i + seg] for i in range(0, len(payload), seg)]


def test_a_coalesced_read_reaches_the_guest_as_its_datagrams(path: Path) -> None:
    """With UDP_GRO on the host socket a peer's GSO write is one read; C splits it at
    the size the control message gives, among whole datagrams, past its views' batch
    (3 x 128 segments), and what it cannot send (over the MTU) goes to Python in order."""
    _, host, peer = path.hold()
    host.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
    to = host.getsockname()
    want = send_segments(peer, to, os.urandom(1400 * 45 + 77), 1400)
    want.append(os.urandom(300))
    peer.sendto(want[-1], to)
    for _ in range(3):
        want += send_segments(peer, to, os.urandom(50 * 128), 50)
    want += send_segments(peer, to, os.urandom(1200 * 3), 1200)
    time.sleep(0.05)
    assert poll_host(path, host) == 0
    port = peer.getsockname()[1]
    assert frames_to_guest(path) == [(GW_IP, port, pl) for pl in want]
    u = path.ctx.udp
    assert u.gro_reads == 5 and u.datagrams_to_guest == len(want)
    if path.vnet:
        assert u.gso_frames_to_guest >= 6
    big = send_segments(peer, to, os.urandom(3000 * 2 + 10), 3000)  # past the MTU
    time.sleep(0.05)
    assert poll_host(path, host) == PYTHON_WORK
    listed = [bytes(path.ffi.buffer(u.py_buf + u.py[i].off, u.py[i].len)) for i in range(u.npy)]
    assert listed == big
    path.lib.ns_udp_python_done(path.ctx)


def test_a_bulk_read_asks_for_coalesced_reads_a_few_datagrams_do_not(path: Path) -> None:
    _, host, peer = path.hold()
    to = host.getsockname()
    for _ in range(15):  # GRO_AFTER - 1
        peer.sendto(b"q" * 100, to)
    time.sleep(0.05)
    assert poll_host(path, host) == 0
    assert host.getsockopt(socket.SOL_UDP, UDP_GRO) == 0
    for _ in range(16):
        peer.sendto(b"b" * 1000, to)
    time.sleep(0.05)
    assert poll_host(path, host) == 0
    assert host.getsockopt(socket.SOL_UDP, UDP_GRO) == 1
    want = send_segments(peer, to, os.urandom(1000 * 20), 1000)
    time.sleep(0.05)
    assert poll_host(path, host) == 0
    assert path.ctx.udp.gro_reads == 1
    assert frames_to_guest(path)[-20:] == [(GW_IP, peer.getsockname()[1], pl) for pl in want]


def test_a_closed_flow_leaves_no_entry_for_python(path: Path) -> None:
    f, host, peer = path.hold()
    path.ctx.udp.host_loopback = 0  # 127.0.0.1 then has no guest-visible address
    peer.sendto(b"late", host.getsockname())
    time.sleep(0.05)
    assert poll_host(path, host) == PYTHON_WORK
    path.lib.ns_udp_close(path.ctx, f)
    path.flows.clear()
    assert path.ctx.udp.py[0].slot == -1
    path.lib.ns_udp_python_done(path.ctx)
    host.close()
    peer.close()


@settings(
    max_examples=int(os.environ.get("NETSTACK_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.tuples(
        st.integers(0, 255) | st.sampled_from([0, 1, 2, 3]),  # flags
        st.integers(0, 255) | st.sampled_from([0, 1, 3, 4, 5, 0x85]),  # gso_type
        st.integers(0, 0xFFFF),  # hdr_len
        st.integers(0, 0xFFFF) | st.integers(0, 400),  # gso_size
        st.integers(0, 0xFFFF) | st.just(34),  # csum_start
        st.integers(0, 0xFFFF) | st.just(6),  # csum_offset
    ).map(lambda t: struct.pack("<BBHHHH", *t)),
    st.binary(min_size=1, max_size=300),
)
def test_any_virtio_net_header_on_a_good_datagram(path: Path, vh: bytes, payload: bytes) -> None:
    """Whatever the header says (GSO of any size, checksum flags): the frame is handed
    back unchanged, or its payload reaches the peer, split where it asks for GSO."""
    if not path.vnet:
        pytest.skip("plain frames carry no virtio-net header")
    if not path.flows:
        path.hold()
    _, _, peer = path.flows[0]
    received(peer)
    frame = datagram(payload, peer.getsockname()[1], vnet_hdr=vh)
    if run(path, [frame]):
        assert received(peer) == []
        return
    gso = struct.unpack("<H", vh[4:6])[0] if vh[1] == 5 else 0
    want = [payload[i : i + gso] for i in range(0, len(payload), gso)] if gso else [payload]
    assert received(peer, len(want)) == want


# ------------------------------------------------- a port forward's routes (ns_udp_route_open)
@dataclass(repr=False)
class Route:
    c: Any
    listener: socket.socket  # the forward's: the route's datagrams leave from it
    client: socket.socket  # the forward's client on the host


def open_route(p: Path, client_port: int | None = None, guest_port: int = 7000) -> Route:
    """A route of a forward on 127.0.0.1 to the guest's guest_port: its client (on
    loopback, so the guest sees it as the gateway with the client's port)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", client_port or 0))
    port = client.getsockname()[1]
    c = p.lib.ns_udp_route_open(
        p.ctx, listener.fileno(), MAPPED + GUEST_IP, guest_port, MAPPED + GW_IP, port, 0
    )
    assert c != p.ffi.NULL
    c.guest_mac = GUEST_MAC
    addr = sockaddr(socket.AF_INET, ("127.0.0.1", port))
    assert addr is not None
    c.host_addr = addr
    c.host_addr_len = len(addr)
    p.keep += [listener, client]
    return Route(c, listener, client)


def test_a_routes_datagrams_reach_the_client_from_the_listener(path: Path) -> None:
    r = open_route(path)
    port = r.client.getsockname()[1]
    payloads = [os.urandom(n) for n in [1400] * 30 + [10, 0, 3000, 20000]]
    frames = [datagram(pl, port, sport=7000) for pl in payloads]
    assert run(path, frames) == []
    r.client.settimeout(1)
    got = []
    for _ in payloads:
        data, src = r.client.recvfrom(65535)
        assert src == r.listener.getsockname()  # the reply comes from the forward's port
        got.append(data)
    assert got == payloads
    assert r.c.datagrams_to_host == len(payloads) and path.ctx.udp.nroutes == 1
    # another client's port, or another guest port: Python's (its route lookup)
    for frame in (datagram(b"x", port + 1, sport=7000), datagram(b"y", port, sport=7001)):
        assert run(path, [frame]) == [frame if path.vnet else bytes(10) + frame[10:]]
    # the client's datagrams to the listener are Python's: the listener is not C's
    r.client.sendto(b"to the guest", r.listener.getsockname())
    time.sleep(0.01)
    assert poll_host(path, r.listener) == 1
    assert path.ctx.ev_fd[0] == r.listener.fileno()
    # a route closed: its datagrams are Python's again
    path.lib.ns_udp_close(path.ctx, r.c)
    assert path.ctx.udp.nroutes == 0
    frame = datagram(b"after", port, sport=7000)
    assert run(path, [frame]) == [frame if path.vnet else bytes(10) + frame[10:]]


def test_routes_and_a_held_flow_of_the_same_guest_port(path: Path) -> None:
    """A held flow's cached destination is its own; a datagram to a route's client
    from the same guest port takes the route."""
    f, _, peer = path.hold(guest_port=7000)
    r = open_route(path)
    to_peer, to_client = os.urandom(100), os.urandom(120)
    frames = [
        datagram(to_peer, peer.getsockname()[1], sport=7000),
        datagram(to_client, r.client.getsockname()[1], sport=7000),
    ]
    assert run(path, frames) == []
    assert received(peer, 1) == [to_peer]
    assert received(r.client, 1) == [to_client]
    assert f.datagrams_to_host == 1 and r.c.datagrams_to_host == 1
    path.lib.ns_udp_close(path.ctx, r.c)


def test_a_route_from_another_mac_is_pythons(path: Path) -> None:
    r = open_route(path)
    frame = bytearray(datagram(b"x", r.client.getsockname()[1], sport=7000))
    frame[10 + 6 : 10 + 12] = bytes.fromhex("020000000099")
    assert run(path, [bytes(frame)]) == [bytes(frame) if path.vnet else bytes(10) + frame[10:]]
    path.lib.ns_udp_close(path.ctx, r.c)


def test_a_forwards_listener_read_in_c_sends_each_routed_client_to_the_guest(
    path: Path,
) -> None:
    """The listener's datagrams from a client with a route reach the guest from the
    gateway and the client's port (a loopback client), equal-size runs as GSO frames
    with virtio-net headers; a client without a route, and all behind it in that read,
    are left to Python in order (their slot the listener's)."""
    r = open_route(path, guest_port=GUEST_PORT)
    lst = path.lib.ns_udp_listener_open(
        path.ctx, r.listener.fileno(), MAPPED + GUEST_IP, GUEST_PORT, 0
    )
    assert lst != path.ffi.NULL and lst.listener == 1
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))
    path.keep.append(stranger)
    to = r.listener.getsockname()
    routed = [os.urandom(1200) for _ in range(20)] + [os.urandom(300)]
    for pl in routed:
        r.client.sendto(pl, to)
    stranger.sendto(b"no route yet", to)
    r.client.sendto(b"behind it", to)
    time.sleep(0.02)
    assert poll_host(path, r.listener) == PYTHON_WORK  # served in C; some left to Python
    port = r.client.getsockname()[1]
    assert frames_to_guest(path) == [(GW_IP, port, pl) for pl in routed]
    u = path.ctx.udp
    left = [
        (bytes(path.ffi.buffer(u.py_buf + u.py[i].off, u.py[i].len)), int(u.py[i].port))
        for i in range(u.npy)
    ]
    assert left == [(b"no route yet", stranger.getsockname()[1]), (b"behind it", port)]
    assert all(u.py[i].slot == lst.slot for i in range(u.npy))
    assert r.c.datagrams_to_guest == len(routed) and lst.datagrams_to_guest == len(routed)
    if path.vnet:
        assert u.gso_frames_to_guest >= 1  # the 1200-byte run as GSO frames
    path.lib.ns_udp_python_done(path.ctx)
    path.lib.ns_udp_close(path.ctx, lst)
    path.lib.ns_udp_close(path.ctx, r.c)
    # closed: the listener's events are Python's again
    r.client.sendto(b"after", to)
    time.sleep(0.01)
    assert poll_host(path, r.listener) == 1
