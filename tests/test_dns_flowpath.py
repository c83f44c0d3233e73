"""The C DNS path (csrc/dns.c) on its own: a SOCK_SEQPACKET pair stands in for the TAP,
a loopback UDP socket the test owns for the nameserver, another for the upstream
socket Python would give C.

A standard query from a known guest to 10.0.2.3:53 must reach the nameserver byte for
byte, and its answer the guest as a correct UDP/IPv4 frame from 10.0.2.3:53. Replies
from elsewhere, with an unknown ID, another question, or not a response are dropped
and counted, and the query waits on; a question with its letters' case changed is
accepted. What C does not take (an ID of its own in flight, an unknown guest, a query
out of the ordinary) goes back to Python unchanged; expiry hands queries back with
their bytes. Hypothesis then mutates frames and adds garbage: every frame is either
taken as a valid query (the nameserver gets exactly those, in order) or handed back
unchanged."""

from __future__ import annotations

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
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from netstack import _fast
from netstack.link.base import FRAME_BUFFER_SIZE
from netstack.tcp.fastpath import PYTHON_WORK
from netstack.udp.fastpath import sockaddr
from netstack.wire import dns, udp
from tests.helpers import fake_tap

pytestmark = pytest.mark.skipif(not _fast.FAST, reason="C fast path not built")

GW_MAC = bytes.fromhex("52550a000202")
DNS_MAC = bytes.fromhex("52550a000203")
ROUTER_MAC = bytes.fromhex("52550a0002fe")
DNS6_MAC = bytes.fromhex("525500000003")
GUEST_MAC = bytes.fromhex("020000000001")
GUEST_IP = socket.inet_aton("10.0.2.100")
DNS_IP = socket.inet_aton("10.0.2.3")
GUEST6_IP = socket.inet_pton(socket.AF_INET6, "fd00::100")
DNS6_IP = socket.inet_pton(socket.AF_INET6, "fd00::3")
MAPPED = bytes(10) + b"\xff\xff"
GUEST_PORT = 40000
DNS_AT = 10 + 14 + 20 + 8  # where the DNS message starts in an IPv4 frame from the guest


def query(ident: int, name: bytes = b"\x07example\x03com\x00", qtype: int = 1) -> bytes:
    """A standard query (RD set) for name."""
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", qtype, 1)


def reply_to(q: bytes, answer: bytes = bytes(4), flags: int = 0x8180) -> bytes:
    """A response repeating q's question with one A record (a pointer to the name)."""
    rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, len(answer)) + answer
    return q[:2] + struct.pack("!HHHHH", flags, 1, 1, 0, 0) + q[12:] + rr


def frame(
    payload: bytes,
    sport: int = GUEST_PORT,
    dport: int = 53,
    src: bytes = GUEST_IP,
    mac: bytes = GUEST_MAC,
    vnet_hdr: bytes = bytes(10),
) -> bytes:
    """An IPv4/UDP frame from the guest to the DNS address, checksums complete."""
    length = 8 + len(payload)
    seg = bytearray(length)
    udp.emit(udp.UdpHeader(sport, dport, length), src, DNS_IP, payload, seg)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 1, 0x4000, 64, 17, 0, src, DNS_IP)
    ip = ip[:10] + struct.pack("!H", _fast.checksum(ip)) + ip[12:]
    return vnet_hdr + DNS_MAC + mac + b"\x08\x00" + ip + bytes(seg)


def frame6(payload: bytes, sport: int = GUEST_PORT) -> bytes:
    """An IPv6/UDP frame from the guest to the IPv6 DNS address."""
    length = 8 + len(payload)
    seg = bytearray(length)
    hdr = udp.UdpHeader(sport, 53, length)
    udp.emit(hdr, GUEST6_IP, DNS6_IP, payload, seg)
    ip = struct.pack("!IHBB16s16s", 6 << 28, length, 17, 64, GUEST6_IP, DNS6_IP)
    return bytes(10) + DNS6_MAC + GUEST_MAC + b"\x86\xdd" + ip + bytes(seg)


@dataclass(repr=False)
class Path:
    lib: Any
    ffi: Any
    ctx: Any
    guest: socket.socket  # our end of the fake TAP
    rx_buf: bytearray
    vnet: bool
    upstream: socket.socket  # the socket Python gives C
    server: socket.socket  # the nameserver
    keep: list[Any] = field(default_factory=list)

    @property
    def d(self) -> Any:
        return self.ctx.dns

    def point_at(self, server: socket.socket) -> None:
        addr = sockaddr(socket.AF_INET, server.getsockname())
        assert addr is not None
        assert self.lib.ns_dns_set_upstream(self.ctx, self.upstream.fileno(), addr, len(addr)) == 0


def udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


@pytest.fixture(params=[1, 0], ids=["vnet", "plain"])
def path(request: pytest.FixtureRequest) -> Iterator[Path]:
    from netstack._fastc import ffi, lib

    tap_ours, tap_guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tap_ours.setblocking(False)
    tap_ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    tap_guest.setblocking(False)
    rx_buf = bytearray(FRAME_BUFFER_SIZE)
    rx_ref = ffi.from_buffer(rx_buf)
    vnet = int(request.param)
    ctx = lib.ns_ctx_new(tap_ours.fileno(), vnet, rx_ref, len(rx_buf), 16, 4096)
    ctx.gateway_mac = GW_MAC
    ctx.dns_mac = DNS_MAC
    ctx.router_mac = ROUTER_MAC
    ctx.dns6_mac = DNS6_MAC
    assert lib.ns_dns_new(ctx, DNS_IP, DNS6_IP, 1500) == 0
    assert lib.ns_dns_guest(ctx, GUEST_MAC, MAPPED + GUEST_IP) == 0
    assert lib.ns_dns_guest(ctx, GUEST_MAC, GUEST6_IP) == 0
    upstream, server = udp_socket(), udp_socket()
    p = Path(lib, ffi, ctx, tap_guest, rx_buf, bool(vnet), upstream, server, [rx_ref, tap_ours])
    p.point_at(server)
    try:
        yield p
    finally:
        lib.ns_ctx_free(ctx)
        for s in (tap_ours, tap_guest, upstream, server):
            s.close()


def wire(p: Path, f: bytes) -> bytes:
    return fake_tap.wire(p.vnet, f)


def run(p: Path, frames: list[bytes]) -> list[bytes]:
    """Feed frames; the frames C handed back (checked: unchanged, in order)."""
    return fake_tap.feed(p.lib, p.ctx, p.guest, p.rx_buf, p.vnet, frames, 1024)


def at_server(p: Path, at_least: int = 0, up_sock: socket.socket | None = None) -> list[bytes]:
    """Datagrams at the nameserver, from the upstream socket (or up_sock) only."""
    out: list[bytes] = []
    up = (up_sock or p.upstream).getsockname()
    deadline = time.monotonic() + 1
    while True:
        try:
            data, addr = p.server.recvfrom(65535)
        except BlockingIOError:
            if len(out) >= at_least or time.monotonic() > deadline:
                return out
            time.sleep(0.001)
            continue
        assert addr == up
        out.append(data)


def poll_host(p: Path, *more: socket.socket) -> int:
    time.sleep(0.01)  # loopback delivery is synchronous; a margin all the same
    ep = select.epoll()
    try:
        for s in (p.upstream, *more):
            ep.register(s.fileno(), select.EPOLLIN)
        return int(p.lib.ns_host_poll(p.ctx, ep.fileno(), time.monotonic()))
    finally:
        ep.close()


def answer_from_server(p: Path, data: bytes, sender: socket.socket | None = None) -> int:
    (sender or p.server).sendto(data, p.upstream.getsockname())
    return poll_host(p)


def guest_frames(p: Path) -> list[bytes]:
    out: list[bytes] = []
    while True:
        try:
            f = p.guest.recv(1 << 17)
        except BlockingIOError:
            return out
        if p.vnet:
            assert f[:10] == bytes(10)  # checksum complete, no GSO
            f = f[10:]
        out.append(f)


def check_answer(f: bytes, payload: bytes, v6: bool = False) -> None:
    """f is a correct UDP frame from the DNS address port 53 to the guest, carrying
    payload; scapy rebuilds its checksums to compare."""
    pkt = Ether(f)
    assert pkt.dst == "02:00:00:00:00:01"
    l3: Any
    if v6:
        assert pkt.src == "52:55:0a:00:02:fe"  # the router's, as GuestOutput.send_udp
        l3 = pkt[IPv6]
        assert (l3.src, l3.dst, l3.nh, l3.plen) == ("fd00::3", "fd00::100", 17, 8 + len(payload))
        assert len(f) == 14 + 40 + 8 + len(payload)
    else:
        assert pkt.src == "52:55:0a:00:02:02"  # the gateway's, as GuestOutput.send_udp
        l3 = pkt[IP]
        assert (l3.src, l3.dst, l3.proto, l3.ihl, l3.len) == (
            "10.0.2.3",
            "10.0.2.100",
            17,
            5,
            len(f) - 14,
        )
        assert l3.len == 28 + len(payload)
    u = pkt[UDP]
    assert (u.sport, u.dport, u.len) == (53, GUEST_PORT, 8 + len(payload))
    assert bytes(u.payload) == payload
    fresh = pkt.copy()
    if not v6:
        del fresh[IP].chksum
    del fresh[UDP].chksum
    rebuilt = Ether(bytes(fresh))
    if not v6:
        assert rebuilt[IP].chksum == l3.chksum
    assert u.chksum not in (0, None) and rebuilt[UDP].chksum == u.chksum


Entry = tuple[bytes, bytes, int, bytes, bytes, bytes, int]


def expired(p: Path, older_than: float) -> list[Entry]:
    """ns_dns_expire's list: (mac, guest ip, port, dns ip, query, reply, tried) each."""
    n = p.lib.ns_dns_expire(p.ctx, older_than)
    d, ffi = p.d, p.ffi
    out = []
    for i in range(n):
        e = d.py[i]
        q = e.query
        out.append(
            (
                bytes(ffi.buffer(q.guest_mac)),
                bytes(ffi.buffer(q.guest_ip)),
                int(q.guest_port),
                bytes(ffi.buffer(q.dns_ip)),
                bytes(ffi.buffer(q.query, q.len)),
                bytes(ffi.buffer(d.py_buf + e.reply_off, e.reply_len)),
                int(e.tried),
            )
        )
    p.lib.ns_dns_python_done(p.ctx)
    return out


# ------------------------------------------------------------------ the common case


def test_a_query_is_forwarded_and_its_answer_reaches_the_guest(path: Path) -> None:
    q = query(0x1234)
    assert run(path, [frame(q)]) == []
    assert at_server(path, 1) == [q]
    assert path.d.inflight == 1 and path.d.queries == 1
    r = reply_to(q, socket.inet_aton("192.0.2.1"))
    answer_from_server(path, r)
    [f] = guest_frames(path)
    check_answer(f, r)
    assert (path.d.inflight, path.d.answers) == (0, 1)
    # the ID is free again
    assert run(path, [frame(q)]) == []
    assert at_server(path, 1) == [q]


def test_the_first_query_asks_python_to_arm_its_timer(path: Path) -> None:
    path.guest.send(wire(path, frame(query(1))))
    assert int(path.lib.ns_rx(path.ctx, time.monotonic(), 256)) == PYTHON_WORK
    assert path.d.arm == 1
    path.lib.ns_dns_python_done(path.ctx)
    path.guest.send(wire(path, frame(query(2))))
    assert int(path.lib.ns_rx(path.ctx, time.monotonic(), 256)) == 0  # armed already


def test_an_ipv6_query_is_answered_from_the_ipv6_dns_address(path: Path) -> None:
    q = query(0x66)
    assert run(path, [frame6(q)]) == []
    assert at_server(path, 1) == [q]
    r = reply_to(q)
    answer_from_server(path, r)
    [f] = guest_frames(path)
    check_answer(f, r, v6=True)


def test_a_checksum_partial_query_is_taken(path: Path) -> None:
    if not path.vnet:
        pytest.skip("virtio-net headers only")
    q = query(0x77)
    f = bytearray(frame(q, vnet_hdr=b"\x01" + bytes(9)))
    f[10 + 14 + 20 + 6 : 10 + 14 + 20 + 8] = b"\x12\x34"  # a partial sum, not a checksum
    assert run(path, [bytes(f)]) == []
    assert at_server(path, 1) == [q]


# ------------------------------------------------------------------ bad replies


def test_replies_not_for_the_query_are_dropped_and_counted(path: Path) -> None:
    q = query(0x4242, b"\x01a\x04test\x00")
    assert run(path, [frame(q)]) == []
    assert at_server(path, 1) == [q]
    other = udp_socket()
    try:
        answer_from_server(path, reply_to(q), sender=other)  # another port
    finally:
        other.close()
    assert path.d.reply_foreign == 1
    answer_from_server(path, reply_to(query(0x4243, b"\x01a\x04test\x00")))  # another ID
    answer_from_server(path, reply_to(query(0x4242, b"\x01b\x04test\x00")))  # another name
    answer_from_server(path, reply_to(query(0x4242, b"\x01a\x04test\x00", qtype=28)))
    answer_from_server(path, reply_to(q, flags=0x0100))  # not a response
    # a type whose bytes are letters: compared exactly, only the name's case may change
    q65 = query(0x4244, b"\x01a\x04test\x00", qtype=0x41)
    assert run(path, [frame(q65, sport=GUEST_PORT + 1)]) == []
    answer_from_server(path, reply_to(query(0x4244, b"\x01a\x04test\x00", qtype=0x61)))
    two = bytearray(reply_to(q))
    two[4:6] = b"\x00\x02"
    answer_from_server(path, bytes(two))  # two questions
    answer_from_server(path, q[:13])  # short
    assert path.d.reply_mismatch == 7
    assert guest_frames(path) == []
    assert path.d.inflight == 2 and path.d.answers == 0
    # the case of the name's letters may change (0x20 bit encoding); the answer counts
    r = reply_to(query(0x4242, b"\x01A\x04TeSt\x00"))
    answer_from_server(path, r)
    [f] = guest_frames(path)
    check_answer(f, r)
    assert path.d.inflight == 1


def test_a_reply_larger_than_the_mtu_goes_to_python_with_its_query(path: Path) -> None:
    path.d.mtu = 120
    q = query(0x99)
    assert run(path, [frame(q)]) == []
    r = reply_to(q, bytes(200))
    assert answer_from_server(path, r) >= PYTHON_WORK
    assert guest_frames(path) == []
    [entry] = expired(path, 0)  # nothing expires; the list is read
    assert entry == (GUEST_MAC, MAPPED + GUEST_IP, GUEST_PORT, DNS_IP + bytes(12), q, r, 1)
    assert path.d.inflight == 0


# ------------------------------------------------------------------ left to Python


def test_what_c_does_not_take_goes_back_unchanged(path: Path) -> None:
    q = query(0x10)
    taken = frame(q)
    compressed = query(0x11, b"\x01a\xc0\x0c")
    long_name = query(
        0x12,
        b"\x3f"
        + b"a" * 63
        + b"\x3f"
        + b"b" * 63
        + b"\x3f"
        + b"c" * 63
        + b"\x3f"
        + b"d" * 63
        + b"\x00",
    )
    not_for_c = [
        frame(q, sport=GUEST_PORT + 1),  # the same ID in flight (another port too)
        frame(query(0x13), mac=bytes.fromhex("020000000002")),  # an unknown guest
        frame(query(0x14), src=socket.inet_aton("10.0.2.101")),
        frame(query(0x15), dport=54),
        frame(reply_to(query(0x16))),  # a response
        frame(query(0x17)[:2] + b"\x28\x00" + query(0x17)[4:]),  # opcode 5 (update)
        frame(query(0x18)[:4] + b"\x00\x02" + query(0x18)[6:]),  # two questions
        frame(query(0x19)[:6] + b"\x00\x01" + query(0x19)[8:]),  # an answer record
        frame(query(0x1A)[:10] + b"\x00\x02" + query(0x1A)[12:]),  # two additional
        frame(compressed),
        frame(long_name),
        frame(query(0x1B) + bytes(600)),  # over 512 bytes
        frame(query(0x1C)[:-2]),  # the question cut short
    ]
    bad_sum = bytearray(frame(query(0x1D)))
    bad_sum[-1] ^= 0xFF
    not_for_c.append(bytes(bad_sum))
    back = run(path, [taken, *not_for_c])
    assert len(back) == len(not_for_c)
    assert at_server(path, 1) == [q]


def test_nothing_is_taken_without_an_upstream(path: Path) -> None:
    path.lib.ns_dns_set_upstream(path.ctx, -1, path.ffi.NULL, 0)
    assert len(run(path, [frame(query(1))])) == 1


# ------------------------------------------------------------------ expiry and switching


def test_expiry_hands_queries_back_with_their_bytes(path: Path) -> None:
    q1, q2 = query(0x21), query(0x22, b"\x03www\x07example\x03org\x00", qtype=28)
    assert run(path, [frame(q1), frame(q2, sport=5353)]) == []
    assert expired(path, 0) == []
    assert path.d.inflight == 2
    back = sorted(expired(path, time.monotonic() + 1), key=lambda e: e[4])
    assert back == [
        (GUEST_MAC, MAPPED + GUEST_IP, GUEST_PORT, DNS_IP + bytes(12), q1, b"", 1),
        (GUEST_MAC, MAPPED + GUEST_IP, 5353, DNS_IP + bytes(12), q2, b"", 1),
    ]
    assert path.d.inflight == 0
    # a late answer is dropped; the IDs are free again
    answer_from_server(path, reply_to(q1))
    assert guest_frames(path) == [] and path.d.reply_mismatch == 1
    assert run(path, [frame(q1)]) == []


def test_a_new_upstream_hands_the_queries_in_flight_back(path: Path) -> None:
    q = query(0x31)
    assert run(path, [frame(q)]) == []
    assert at_server(path, 1) == [q]
    other = udp_socket()
    try:
        path.point_at(other)
        assert path.d.inflight == 0
        [entry] = expired(path, 0)
        assert entry[4:] == (q, b"", 0)  # not a timeout: the forwarder's first choice
        answer_from_server(path, reply_to(q))  # the old nameserver: foreign now
        assert path.d.reply_foreign == 1
        assert run(path, [frame(q)]) == []
        other.settimeout(1)
        assert other.recv(600) == q
    finally:
        other.close()


def test_a_query_the_socket_refuses_goes_to_python_untried(path: Path) -> None:
    addr = sockaddr(socket.AF_INET, ("127.0.0.1", 0))  # port 0: sendmmsg fails (EINVAL)
    assert addr is not None
    path.lib.ns_dns_set_upstream(path.ctx, path.upstream.fileno(), addr, len(addr))
    q1, q2 = query(0x41), query(0x42)
    assert run(path, [frame(q1), frame(q2)]) == []
    assert (path.d.send_errors, path.d.inflight) == (2, 0)
    back = expired(path, 0)
    assert [(e[4], e[6]) for e in back] == [(q1, 0), (q2, 0)]
    assert run(path, [frame(q1)]) == []  # its ID is free


def test_a_batch_of_queries_leaves_in_one_sendmmsg_in_order(path: Path) -> None:
    qs = [query(0x500 + i) for i in range(20)]
    assert run(path, [frame(q, sport=2000 + i) for i, q in enumerate(qs)]) == []
    assert at_server(path, 20) == qs


def test_after_100_queries_c_asks_for_a_fresh_socket_and_drains_the_old(path: Path) -> None:
    """As the forwarder's Upstream retires its socket after UPSTREAM_QUERIES: a new
    source port; replies are taken only on the socket their query went out on."""
    for i in range(99):
        assert run(path, [frame(query(i))]) == []
        path.lib.ns_dns_python_done(path.ctx)  # (the timer's request)
        path.server.sendto(reply_to(query(i)), path.upstream.getsockname())
        assert poll_host(path) == 0
    assert path.d.answers == 99 and len(guest_frames(path)) == 99
    late = query(0x600)
    path.guest.send(wire(path, frame(late)))
    assert int(path.lib.ns_rx(path.ctx, time.monotonic(), 8)) == PYTHON_WORK  # a socket
    assert at_server(path, 100)[-1] == late
    fresh, newer = udp_socket(), udp_socket()
    try:
        assert path.lib.ns_dns_rotate(path.ctx, fresh.fileno()) == -1  # nothing to close
        assert int(path.lib.ns_rx(path.ctx, time.monotonic(), 8)) == 0  # asked no more
        q = query(0x601)
        assert run(path, [frame(q)]) == []
        assert at_server(path, 1, up_sock=fresh) == [q]
        # a reply on the wrong socket is a mismatch; on the right one, each is taken
        path.server.sendto(reply_to(q), path.upstream.getsockname())
        path.server.sendto(reply_to(late), fresh.getsockname())
        poll_host(path, fresh)
        assert path.d.reply_mismatch == 2 and guest_frames(path) == []
        path.server.sendto(reply_to(late), path.upstream.getsockname())
        path.server.sendto(reply_to(q), fresh.getsockname())
        poll_host(path, fresh)
        assert sorted(bytes(Ether(f)[UDP].payload) for f in guest_frames(path)) == sorted(
            [reply_to(late), reply_to(q)]
        )
        # the next rotation gives the first socket back to close
        assert path.lib.ns_dns_rotate(path.ctx, newer.fileno()) == path.upstream.fileno()
        assert path.d.inflight == 0
    finally:
        fresh.close()
        newer.close()


def test_the_in_flight_cap_leaves_the_rest_to_python(path: Path) -> None:
    frames = [frame(query(i), sport=1000 + i) for i in range(260)]
    back = run(path, frames)
    assert len(back) == 4 and path.d.inflight == 256
    got = at_server(path, 256)
    assert sorted(got) == sorted(query(i) for i in range(256))
    # all answered at once: read in rounds, each to its guest port
    for q in got:
        path.server.sendto(reply_to(q), path.upstream.getsockname())
    for _ in range(10):
        if not path.d.inflight:
            break
        poll_host(path)
    frames = guest_frames(path)
    assert len(frames) == 256 and path.d.answers == 256
    ports = sorted(Ether(f)[UDP].dport for f in frames)
    assert ports == list(range(1000, 1256))
    for f in frames:
        u = Ether(f)[UDP]
        assert bytes(u.payload) == reply_to(query(u.dport - 1000))


# ------------------------------------------------------------------ hostile input


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    edits=st.lists(
        st.tuples(
            st.binary(min_size=0, max_size=40),
            st.one_of(
                st.tuples(st.just("cut"), st.integers(0, 200)),
                st.tuples(st.just("flip"), st.integers(0, 300), st.integers(1, 255)),
                st.tuples(st.just("junk"), st.binary(max_size=200)),
            ),
        ),
        max_size=10,
    )
)
def test_mutated_and_garbage_frames_are_taken_as_queries_or_handed_back(
    path: Path, edits: list[Any]
) -> None:
    """Whatever the damage, each frame is either handed back unchanged or is a valid
    query whose message reaches the nameserver; those, in order, once each."""
    expired(path, float("inf"))
    at_server(path)
    frames = []
    for i, (label, edit) in enumerate(edits):
        name = bytes([len(label)]) + label + b"\x00" if label else b"\x00"
        frames.append(frame(query(2 * i, name)))
        frames.append(fake_tap.damage(frame(query(2 * i + 1, name)), edit))
    taken = []
    for as_read in fake_tap.taken(path.vnet, frames, run(path, frames)):
        length = struct.unpack("!H", as_read[DNS_AT - 4 : DNS_AT - 2])[0]
        msg = as_read[DNS_AT : DNS_AT - 8 + length]
        hdr = dns.parse(msg)  # a valid standard query, or C must not have taken it
        assert not hdr.is_response and (hdr.flags >> 11) & 0xF == 0
        assert dns.question_key(msg)
        taken.append(msg)
    assert at_server(path, len(taken)) == taken


# ------------------------------------------------------------------ with the forwarder


class GlueHost:
    """The runtime as dns/fastpath.py sees it: the fake host's nameservers, and the
    sockets registered with the host epoll."""

    def __init__(self, servers: list[str]) -> None:
        self.servers = servers
        self.registered: list[int] = []

    def nameservers(self) -> list[str]:
        return self.servers

    def bind_outbound(self, sock: socket.socket, family: int) -> None:
        pass

    def register(self, fd: int, events: int, handler: Any) -> None:
        self.registered.append(fd)

    def unregister(self, fd: int) -> None:
        self.registered.remove(fd)


@dataclass(repr=False)
class Glue:
    rig: Any
    fast: Any
    host: GlueHost
    tap: socket.socket  # the guest's end of the fake TAP
    lib: Any
    ctx: Any

    def c_query(self, q: bytes) -> int:
        """q from the guest, through ns_rx: its result."""
        self.tap.send(frame(q))
        return int(self.lib.ns_rx(self.ctx, self.rig.now, 64))

    def sent_by_python(self) -> list[tuple[bytes, tuple[str, int]]]:
        return [(d, a) for _, s in self.rig.host.udp for d, a in s.sent]


@pytest.fixture
def glue() -> Iterator[Glue]:
    from types import SimpleNamespace

    from netstack._fastc import ffi, lib
    from scapy.packet import Raw

    from netstack.dns.fastpath import DnsFastPath
    from tests.fakes import Rig

    rig = Rig()
    rig.host.servers = ["127.0.0.1", "127.0.0.2"]
    tap_ours, tap_guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tap_ours.setblocking(False)
    rx_buf = bytearray(FRAME_BUFFER_SIZE)
    rx_ref = ffi.from_buffer(rx_buf)
    ctx = lib.ns_ctx_new(tap_ours.fileno(), 1, rx_ref, len(rx_buf), 16, 4096)
    ctx.gateway_mac = GW_MAC
    ctx.dns_mac = DNS_MAC
    host = GlueHost(rig.host.servers)
    path: Any = SimpleNamespace(ffi=ffi, lib=lib, ctx=ctx)  # what it reads of a FastPath
    fast = DnsFastPath(path, rig.stack.dns, host, DNS_IP, None, 1500)
    rig.stack.stats.add_source(fast.counters, fast.drops)
    # the guest's first query goes through the forwarder, which makes C ready for it
    q = query(1)
    rig.send(IP(src="10.0.2.100", dst="10.0.2.3") / UDP(sport=GUEST_PORT, dport=53) / Raw(q))
    owner, sock = rig.host.udp[0]
    assert sock.sent == [(q, ("127.0.0.1", 53))]
    owner.on_datagram(reply_to(q), ("127.0.0.1", 53), rig.now)
    assert len(rig.frames()) == 1
    try:
        yield Glue(rig, fast, host, tap_guest, lib, ctx)
    finally:
        rig.stack.close()
        lib.ns_ctx_free(ctx)
        tap_ours.close()
        tap_guest.close()
        del rx_ref


def test_the_forwarder_points_c_at_its_preferred_nameserver(glue: Glue) -> None:
    fast = glue.fast
    assert fast.server == "127.0.0.1"
    assert fast.sock is not None and glue.host.registered == [fast.sock.fileno()]
    assert fast.sock.family == socket.AF_INET
    # the guest's next query is C's: it asks for the timer once
    assert fast.deadline == glue.rig.now + 5.0  # the idle check of a fresh socket
    assert glue.c_query(query(2)) == PYTHON_WORK
    fast.after_call(glue.rig.now)
    assert fast.deadline == glue.rig.now + 0.25
    assert glue.c_query(query(3)) == 0
    assert glue.rig.stack.stats.snapshot()["events"]["dns_queries"] == 3
    assert glue.sent_by_python() == [(query(1), ("127.0.0.1", 53))]


def test_a_query_c_sent_goes_to_the_next_nameserver_after_the_timeout(glue: Glue) -> None:
    fast, rig = glue.fast, glue.rig
    q = query(2)
    glue.c_query(q)
    fast.after_call(rig.now)
    rig.advance(0.3)  # the timer looks: not yet
    assert glue.sent_by_python() == [(query(1), ("127.0.0.1", 53))]
    assert fast.deadline is not None
    rig.advance(1.3)
    assert glue.sent_by_python()[1:] == [(q, ("127.0.0.2", 53))]
    stats = rig.stack.stats.snapshot()["events"]
    assert stats["dns_server_timeouts"] == 1 and stats["dns_queries"] == 2
    assert glue.ctx.dns.inflight == 0 and len(rig.stack.dns.queries) == 1
    # its answer from there reaches the guest through the forwarder
    owner = next(o for o, s in rig.host.udp if s.sent and s.sent[-1] == (q, ("127.0.0.2", 53)))
    owner.on_datagram(reply_to(q), ("127.0.0.2", 53), rig.now)
    [f] = rig.frames()
    assert f[UDP].dport == GUEST_PORT and bytes(f[UDP].payload) == reply_to(q)
    # the second nameserver answered: it is C's now
    assert fast.server == "127.0.0.2"
    rig.advance(0.3)
    assert glue.ctx.dns.timer_armed == 0  # nothing in flight: C asks with its next query
    assert fast.sock is not None and fast.deadline is not None  # the idle check


def test_c_s_socket_closes_after_upstream_idle_and_the_next_query_opens_one(
    glue: Glue,
) -> None:
    # as the forwarder's Upstream sockets: a socket nothing waits on closes after
    # UPSTREAM_IDLE, so an idle stack holds no upstream socket
    from netstack.dns.forwarder import UPSTREAM_IDLE

    fast, rig = glue.fast, glue.rig
    glue.c_query(query(2))
    fast.after_call(rig.now)
    rig.advance(UPSTREAM_IDLE - 1)  # the query expired to Python (no nameserver answers)
    assert fast.sock is not None and glue.ctx.dns.inflight == 0
    glue.c_query(query(3))  # a query keeps it open
    fast.after_call(rig.now)
    rig.advance(UPSTREAM_IDLE - 1)
    assert fast.sock is not None
    rig.advance(UPSTREAM_IDLE + 1)
    assert fast.sock is None and fast.server is None and glue.host.registered == []
    assert glue.c_query(query(4)) > 0  # no upstream: the frame is Python's
    from scapy.packet import Raw

    q = query(5)
    rig.send(IP(src="10.0.2.100", dst="10.0.2.3") / UDP(sport=GUEST_PORT, dport=53) / Raw(q))
    assert fast.server == "127.0.0.1" and glue.host.registered == [fast.sock.fileno()]


def test_a_new_preferred_nameserver_takes_the_queries_in_flight(glue: Glue) -> None:
    fast, rig = glue.fast, glue.rig
    old = fast.sock
    q = query(5)
    glue.c_query(q)
    rig.stack.dns.preferred = 1
    fast.check(rig.now)
    assert fast.server == "127.0.0.2" and old.fileno() == -1  # closed
    assert glue.host.registered == [fast.sock.fileno()]
    assert glue.ctx.dns.inflight == 0
    assert glue.sent_by_python()[1:] == [(q, ("127.0.0.2", 53))]  # not a timeout
    assert "dns_server_timeouts" not in rig.stack.stats.snapshot()["events"]
    # the list changes (resolv.conf): C follows
    glue.host.servers[:] = ["::1"]
    fast.check(rig.now)
    assert fast.server == "::1" and fast.sock.family == socket.AF_INET6
    glue.host.servers.clear()
    fast.check(rig.now)
    assert fast.server is None and fast.sock is None and glue.host.registered == []
    assert glue.c_query(query(6)) > 0  # no upstream: Python's


def test_c_gets_a_fresh_socket_every_100_queries(glue: Glue) -> None:
    fast, rig = glue.fast, glue.rig
    first = fast.sock
    for i in range(100):
        glue.c_query(query(0x700 + i))
    fast.after_call(rig.now)
    assert fast.rotations == 1 and fast.old_sock is first and fast.sock is not first
    assert sorted(glue.host.registered) == sorted([first.fileno(), fast.sock.fileno()])
    assert glue.ctx.dns.fd == fast.sock.fileno() and glue.ctx.dns.old_fd == first.fileno()
    fast.after_call(rig.now)
    assert fast.rotations == 1
    # the next 100 go out on the second; the first is closed once its queries expired
    second = fast.sock
    for i in range(100):
        glue.c_query(query(0x800 + i))
    fast.after_call(rig.now)
    assert fast.rotations == 1 and first.fileno() >= 0  # the first one still waits
    rig.advance(2.0)  # its queries time out: the forwarder has them
    assert glue.ctx.dns.old_inflight == 0
    glue.c_query(query(0x900))
    fast.after_call(rig.now)
    assert fast.rotations == 2 and first.fileno() == -1 and fast.old_sock is second
    assert sorted(glue.host.registered) == sorted([second.fileno(), fast.sock.fileno()])
    # a new nameserver: both sockets close
    rig.stack.dns.preferred = 1
    fast.check(rig.now)
    assert second.fileno() == -1 and glue.host.registered == [fast.sock.fileno()]
    assert glue.ctx.dns.old_fd == -1
