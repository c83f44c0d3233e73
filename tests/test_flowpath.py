"""The C flow path (csrc/flow.c) on its own: a SOCK_SEQPACKET pair stands in for the
TAP (one read, one frame, as on a TAP), a loopback TCP connection for the host side.

One flow is held; in-order segments must reach the host socket byte for byte and be
acknowledged; hypothesis then mutates those segments (any byte, any length) and adds
garbage: C must hand every frame it does not take back to Python unchanged, never
fail, and never pass a byte out of order. The other way, host data must reach the
guest in order (MSS frames on a plain link) and leave the host socket once acked."""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netstack import _fast
from netstack.link.base import FRAME_BUFFER_SIZE
from netstack.wire import tcp
from tests.helpers import fake_tap

pytestmark = pytest.mark.skipif(not _fast.FAST, reason="C fast path not built")

GW_MAC = bytes.fromhex("52550a000202")
DNS_MAC = bytes.fromhex("52550a000203")
GUEST_MAC = bytes.fromhex("020000000001")
GUEST_IP = socket.inet_aton("10.0.2.100")
GW_IP = socket.inet_aton("10.0.2.2")
MAPPED = bytes(10) + b"\xff\xff"
GUEST_PORT, REMOTE_PORT = 40000, 8080
SEQ_FIELD = range(10 + 14 + 20 + 4, 10 + 14 + 20 + 8)


def ip_csum(h: bytes) -> int:
    return _fast.checksum(h)


def segment(seq: int, ack: int, payload: bytes, flags: int = 0x18, window: int = 1000) -> bytes:
    """A frame from the guest, virtio-net header first (no offload flags)."""
    t = struct.pack("!HHIIBBHHH", GUEST_PORT, REMOTE_PORT, seq, ack, 5 << 4, flags, window, 0, 0)
    total = 20 + len(t) + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000, 64, 6, 0, GUEST_IP, GW_IP)
    ip = ip[:10] + struct.pack("!H", ip_csum(ip)) + ip[12:]
    return bytes(10) + GW_MAC + GUEST_MAC + b"\x08\x00" + ip + t + payload


@dataclass(repr=False)
class Path:
    lib: Any
    ffi: Any
    ctx: Any
    flow: Any
    guest: socket.socket  # our end of the fake TAP
    host_peer: socket.socket  # the host application's end of the host connection
    rx_buf: bytearray
    seq: int
    ack: int
    vnet: bool  # False: frames cross the fake TAP without their virtio-net header


@pytest.fixture(params=[1, 0], ids=["vnet", "plain"])
def path(request: pytest.FixtureRequest) -> Iterator[Path]:
    from netstack._fastc import ffi, lib

    tap_ours, tap_guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tap_ours.setblocking(False)
    listener = socket.create_server(("127.0.0.1", 0))
    host = socket.create_connection(listener.getsockname())
    host.setblocking(False)
    host.setsockopt(socket.SOL_SOCKET, 42, 0)  # SO_PEEK_OFF on, as HostTcpStream does
    host_peer, _ = listener.accept()
    listener.close()
    rx_buf = bytearray(FRAME_BUFFER_SIZE)
    rx_ref = ffi.from_buffer(rx_buf)
    vnet = int(request.param)
    ctx = lib.ns_ctx_new(tap_ours.fileno(), vnet, rx_ref, len(rx_buf), 16, 4096)
    ctx.gateway_mac = GW_MAC
    ctx.dns_mac = DNS_MAC
    ctx.delack_delay = 0  # ACK every batch: the test reads them
    flow = lib.ns_flow_open(
        ctx, host.fileno(), MAPPED + GUEST_IP, GUEST_PORT, MAPPED + GW_IP, REMOTE_PORT, 0
    )
    assert flow != ffi.NULL
    flow.guest_mac = GUEST_MAC
    flow.snd_una = flow.snd_nxt = 5000
    flow.rcv_nxt = flow.rcv_acked = 1000
    flow.rcv_adv = 1000 + (1 << 20)  # the window Python advertised before handing it over
    flow.guest_window = 1 << 20
    flow.seg_size = flow.our_mss = 1460
    flow.rto = 0.2
    flow.space_known = 1 << 20
    p = Path(lib, ffi, ctx, flow, tap_guest, host_peer, rx_buf, 1000, 5000, bool(vnet))
    p._keep = (rx_ref, tap_ours, host)  # type: ignore[attr-defined]
    try:
        yield p
    finally:
        lib.ns_flow_close(ctx, flow)
        lib.ns_ctx_free(ctx)
        for s in (tap_ours, tap_guest, host, host_peer):
            s.close()


def as_read(p: Path, frame: bytes) -> bytes:
    return fake_tap.as_read(p.vnet, frame)


def wire(p: Path, frame: bytes) -> bytes:
    return fake_tap.wire(p.vnet, frame)


def run(p: Path, frames: list[bytes]) -> list[bytes]:
    """Feed frames; the frames C handed back (checked: unchanged, in order)."""
    return fake_tap.feed(p.lib, p.ctx, p.guest, p.rx_buf, p.vnet, frames)


def host_bytes(p: Path, expected: int) -> bytes:
    """What the host application received: `expected` bytes (waited for), plus anything
    more that is already there."""
    out = b""
    p.host_peer.settimeout(2)
    try:
        while len(out) < expected:
            chunk = p.host_peer.recv(1 << 20)
            if not chunk:
                break
            out += chunk
    except TimeoutError:
        pass
    p.host_peer.setblocking(False)
    try:
        out += p.host_peer.recv(1 << 20)
    except BlockingIOError:
        pass
    return out


def acks_to_guest(p: Path) -> list[int]:
    p.guest.setblocking(False)
    acks = []
    while True:
        try:
            frame = p.guest.recv(65536)
        except BlockingIOError:
            return acks
        seg = tcp.parse(frame[(10 if p.vnet else 0) + 14 + 20 :])
        acks.append(seg.ack)


def test_in_order_segments_reach_the_host_and_are_acknowledged(path: Path) -> None:
    data = os.urandom(6000)
    frames = [
        segment(path.seq + i, path.ack, data[i : i + 1000]) for i in range(0, len(data), 1000)
    ]
    assert run(path, frames) == []
    assert host_bytes(path, len(data)) == data
    assert acks_to_guest(path)[-1] == path.seq + len(data)
    assert path.flow.rcv_nxt == path.seq + len(data)


def test_an_ipv6_frame_with_the_flows_addresses_v4_mapped_is_not_the_ipv4_flow(
    path: Path,
) -> None:
    """C keys IPv4 flows by ::ffff:a.b.c.d: an IPv6 frame carrying those addresses must
    not pass for the IPv4 flow's segment (Python drops it as the martian it is)."""
    router_mac = bytes.fromhex("52550a000202")
    path.ctx.router_mac = router_mac
    t = struct.pack(
        "!HHIIBBHHH", GUEST_PORT, REMOTE_PORT, path.seq, path.ack, 5 << 4, 0x18, 1000, 0, 0
    )
    payload = b"six"
    ip6 = struct.pack("!IHBB", 6 << 28, len(t) + len(payload), 6, 64)
    ip6 += MAPPED + GUEST_IP + MAPPED + GW_IP
    frame = bytes(10) + router_mac + GUEST_MAC + b"\x86\xdd" + ip6 + t + payload
    assert run(path, [frame]) == [as_read(path, frame)]
    path.host_peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        path.host_peer.recv(100)
    assert path.flow.rcv_nxt == path.seq


def test_bytes_past_the_advertised_window_go_back_to_python(path: Path) -> None:
    path.flow.rcv_adv = path.seq + 1500
    first = segment(path.seq, path.ack, b"a" * 1000)
    over = segment(path.seq + 1000, path.ack, b"b" * 1000)  # 500 bytes past the edge
    assert run(path, [first, over]) == [over]  # handed back whole, unchanged
    assert host_bytes(path, 1000) == b"a" * 1000
    assert path.flow.rcv_nxt == path.seq + 1000


def test_what_c_does_not_take_goes_back_unchanged(path: Path) -> None:
    odd = [
        segment(path.seq - 10, path.ack, b"x" * 10),  # old data
        segment(path.seq + 5, path.ack, b"y"),  # a gap
        segment(path.seq, path.ack + 10, b""),  # ACK of what was never sent
        segment(path.seq, path.ack, b"z", flags=0x19),  # FIN with data
        segment(path.seq, path.ack, b"", flags=0x04),  # RST
    ]
    for frame in odd:
        assert run(path, [frame]) == [frame]  # all of it, virtio-net header first
    assert host_bytes(path, 0) == b""
    assert path.flow.rcv_nxt == path.seq


def test_the_handshake_ack_establishes_and_counts_no_byte(path: Path) -> None:
    path.flow.handshake = 1
    path.flow.snd_una = path.ack - 1  # our SYN-ACK's sequence number is outstanding
    wrong = segment(path.seq, path.ack - 1, b"")  # not the ACK of our SYN-ACK
    assert run(path, [wrong]) == [wrong]
    ack = segment(path.seq, path.ack, b"hello")
    assert run(path, [ack]) == []
    assert path.flow.handshake == 0
    assert path.flow.snd_una == path.ack
    assert path.flow.acked_in_queue == 0
    assert host_bytes(path, 5) == b"hello"


@settings(
    max_examples=int(os.environ.get("NETSTACK_FUZZ_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(
        st.tuples(
            st.binary(min_size=50, max_size=50),  # the good payload
            st.binary(min_size=50, max_size=50),  # the damaged copy's payload
            st.one_of(
                st.tuples(st.just("cut"), st.integers(0, 120)),
                st.tuples(st.just("flip"), st.integers(0, 119), st.integers(1, 255)),
                st.tuples(st.just("junk"), st.binary(max_size=200)),
            ),
        ),
        max_size=12,
    )
)
def test_mutated_and_garbage_frames_never_break_the_flow(path: Path, edits: list[Any]) -> None:
    """Each round sends a good in-order segment and a damaged copy of another; whatever
    the damage, the host sees exactly the good bytes, in order, once each, and what C
    hands back is unchanged (run checks that)."""
    # the fixture serves every example: start where the last one (maybe a failure
    # hypothesis is shrinking) left the flow
    path.seq = int(path.flow.rcv_nxt)
    host_bytes(path, 0)
    sent = b""
    for good_payload, bad_payload, edit in edits:
        good = segment(path.seq + len(sent), path.ack, good_payload)
        # its sequence number kept: else it may be a valid next segment, rightly taken
        bad = fake_tap.damage(segment(path.seq + len(sent), path.ack, bad_payload), edit, SEQ_FIELD)
        # the good one first: a damaged copy arriving after it is old data at best
        run(path, [good, bad])
        sent += good_payload
    assert host_bytes(path, len(sent)) == sent
    assert path.flow.rcv_nxt == (path.seq + len(sent)) & 0xFFFFFFFF


def frames_to_guest(p: Path) -> list[tuple[tcp.TcpHeader, bytes]]:
    p.guest.setblocking(False)
    out = []
    while True:
        try:
            frame = p.guest.recv(1 << 17)
        except BlockingIOError:
            return out
        l4 = frame[(10 if p.vnet else 0) + 14 + 20 :]
        seg = tcp.parse(l4)
        out.append((seg, l4[seg.header_len :]))


def test_host_data_reaches_the_guest_in_order_and_leaves_the_socket_once_acked(
    path: Path,
) -> None:
    host: socket.socket = path._keep[2]  # type: ignore[attr-defined]
    ep = select.epoll()
    ep.register(
        host.fileno(), select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
    )
    data = os.urandom(200_000)
    path.host_peer.sendall(data)  # the loop below polls until it has arrived
    got = b""
    deadline = time.monotonic() + 10
    while len(got) < len(data) and time.monotonic() < deadline:
        n = int(path.lib.ns_host_poll(path.ctx, ep.fileno(), time.monotonic()))
        assert n >= 0
        for seg, payload in frames_to_guest(path):
            assert seg.seq == (path.ack + len(got)) & 0xFFFFFFFF  # in order, no gap
            assert path.vnet or len(payload) <= 1460  # plain frames: one MSS each
            got += payload
        # the guest acknowledges what it got: C drops it from the host socket
        run(path, [segment(path.seq, path.ack + len(got), b"", flags=0x10, window=65535)])
    ep.close()
    assert got == data
    assert path.flow.snd_una == path.flow.snd_nxt == (path.ack + len(data)) & 0xFFFFFFFF
    unread = struct.unpack("i", fcntl.ioctl(host.fileno(), termios.FIONREAD, b"\0" * 4))[0]
    assert unread == 0  # acknowledged bytes left the host socket at once


def host_events(p: Path) -> Any:
    """An epoll on the flow's host socket, as the runtime registers it."""
    host: socket.socket = p._keep[2]  # type: ignore[attr-defined]
    ep = select.epoll()
    ep.register(
        host.fileno(), select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
    )
    return ep


def poll_host(p: Path, ep: Any, until: Any) -> None:
    deadline = time.monotonic() + 5
    while not until() and time.monotonic() < deadline:
        assert int(p.lib.ns_host_poll(p.ctx, ep.fileno(), time.monotonic())) >= 0
        time.sleep(0.001)


def ejected(p: Path) -> list[tuple[int, int]]:
    """The flows C listed for Python, as (slot, why)."""
    ctx = p.ctx
    return [(int(ctx.ejects[i]), int(p.ctx.flows[ctx.ejects[i]].eject)) for i in range(ctx.nejects)]


def test_a_short_connection_closes_in_c_and_python_is_told_once(path: Path) -> None:
    """Request, answer, the guest's FIN, the host's EOF, the guest's last ACK: all in C;
    Python hears of the flow once, when both ways are closed (EJECT_DONE)."""
    ep = host_events(path)
    f = path.flow
    assert run(path, [segment(path.seq, path.ack, b"GET")]) == []
    assert host_bytes(path, 3) == b"GET"
    path.host_peer.sendall(b"200 OK")
    poll_host(path, ep, lambda: f.snd_nxt == path.ack + 6)
    answer = [pl for _, pl in frames_to_guest(path) if pl]  # (after the ACK of GET)
    assert answer == [b"200 OK"]
    # the guest's FIN, bare, acknowledging the answer: the host reads EOF; the FIN's
    # ACK is delayed, as any ACK, for our FIN to carry
    path.ctx.delack_delay = 0.2
    fin = segment(path.seq + 3, path.ack + 6, b"", flags=0x11)
    assert run(path, [fin]) == []
    assert frames_to_guest(path) == []
    assert host_bytes(path, 1) == b""  # EOF
    assert (f.fin_from_guest, f.host_write_shut, f.rcv_nxt) == (1, 1, path.seq + 4)
    assert f.ack_needed == 1
    assert ejected(path) == []
    # the host closes within the delay: our FIN, after the (already acknowledged)
    # answer, acknowledges the guest's FIN: one frame, not two
    path.host_peer.close()
    poll_host(path, ep, lambda: f.fin_to_guest == 1)
    (our_fin,) = frames_to_guest(path)
    assert our_fin[0].flags == tcp.FIN | tcp.ACK and our_fin[0].seq == path.ack + 6
    assert our_fin[0].ack == path.seq + 4 and f.ack_needed == 0
    assert (f.eof_from_host, f.snd_nxt, f.fin_acked) == (1, path.ack + 7, 0)
    assert f.fin_to_guest_first == 0  # the guest closed first: no TIME_WAIT for us
    assert f.rto_deadline > 0  # our FIN is retransmitted (by Python) if it is lost
    assert ejected(path) == []
    # the guest's ACK of our FIN: done
    assert run(path, [segment(path.seq + 4, path.ack + 7, b"", flags=0x10)]) == []
    assert f.fin_acked == 1 and f.snd_una == path.ack + 7
    assert ejected(path) == [(int(f.slot), 4)]
    ep.close()


def test_writable_updates_the_window_only_of_a_guest_short_of_it(path: Path) -> None:
    """Twin of TcpConnection.on_host_writable: no update while the guest has two full
    segments of window left (as after a handshake), one when it has less."""
    host: socket.socket = path._keep[2]  # type: ignore[attr-defined]
    ep = host_events(path)
    f = path.flow
    f.our_wscale = 7
    f.window_advertised = 0xFFFF  # a SYN-ACK's window, unscaled
    f.rcv_adv = path.seq + 0xFFFF
    assert int(path.lib.ns_host_poll(path.ctx, ep.fileno(), time.monotonic())) >= 0
    assert frames_to_guest(path) == []
    f.rcv_adv = path.seq + 2 * 1460 - 1  # the guest used the rest
    ep.modify(host.fileno(), select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET)
    assert int(path.lib.ns_host_poll(path.ctx, ep.fileno(), time.monotonic())) >= 0
    (update,) = frames_to_guest(path)
    assert update[0].flags == tcp.ACK and update[0].ack == path.seq
    assert update[0].window << 7 > 0xFFFF
    ep.close()


def test_the_guest_s_fin_is_acknowledged_after_the_delay_when_the_host_stays_open(
    path: Path,
) -> None:
    """A host that answers the guest's FIN with nothing: the ACK still comes, once the
    delayed-ACK deadline passes (the timer is in the host-socket epoll, as the runtime
    registers it)."""
    ep = host_events(path)
    ep.register(path.ctx.delack_fd, select.EPOLLIN)
    f = path.flow
    path.ctx.delack_delay = 0.05
    fin = segment(path.seq, path.ack, b"", flags=0x11)
    started = time.monotonic()
    assert run(path, [fin]) == []
    assert frames_to_guest(path) == []
    assert host_bytes(path, 1) == b""  # the host read EOF and keeps its side open
    poll_host(path, ep, lambda: f.ack_needed == 0)
    assert time.monotonic() - started >= 0.05
    (ack,) = frames_to_guest(path)
    assert (ack[0].flags, ack[0].ack, ack[0].seq) == (tcp.ACK, path.seq + 1, path.ack)
    assert (f.fin_from_guest, f.fin_to_guest) == (1, 0)
    assert ejected(path) == []
    ep.close()


def test_the_host_closing_first_then_the_guest_closes_in_c(path: Path) -> None:
    ep = host_events(path)
    f = path.flow
    path.host_peer.sendall(b"bye")
    path.host_peer.shutdown(socket.SHUT_WR)
    poll_host(path, ep, lambda: f.fin_to_guest == 1)
    got = frames_to_guest(path)
    assert b"".join(bytes(p) for _, p in got) == b"bye"
    assert got[-1][0].flags & tcp.FIN and f.snd_nxt == path.ack + 4
    assert f.fin_to_guest_first == 1  # we close actively: TIME_WAIT follows
    # the guest acknowledges data and FIN, then sends its own FIN
    assert run(path, [segment(path.seq, path.ack + 4, b"", flags=0x10)]) == []
    assert f.fin_acked == 1 and f.snd_una == path.ack + 4 and ejected(path) == []
    host: socket.socket = path._keep[2]  # type: ignore[attr-defined]
    unread = struct.unpack("i", fcntl.ioctl(host.fileno(), termios.FIONREAD, b"\0" * 4))[0]
    assert unread == 0  # the 3 acknowledged bytes left the socket
    assert run(path, [segment(path.seq, path.ack + 4, b"", flags=0x11)]) == []
    assert ejected(path) == [(int(f.slot), 4)]
    path.lib.ns_flow_flush(path.ctx, f, time.monotonic())  # as the release does
    (ack,) = frames_to_guest(path)
    assert ack[0].ack == path.seq + 1
    assert host_bytes(path, 1) == b""  # the host got our shutdown
    ep.close()


def test_after_the_guest_s_fin_data_or_another_fin_go_to_python(path: Path) -> None:
    assert run(path, [segment(path.seq, path.ack, b"", flags=0x11)]) == []
    later = [
        segment(path.seq + 1, path.ack, b"late"),
        segment(path.seq + 1, path.ack, b"", flags=0x11),
    ]
    for frame in later:
        assert run(path, [frame]) == [frame]
    assert path.flow.rcv_nxt == path.seq + 1


def test_the_flow_table_hash_is_keyed_with_a_secret_per_context() -> None:
    """The same 4-tuples hash differently in two contexts (two processes): a guest
    cannot choose ports that chain into one bucket everywhere."""
    from netstack._fastc import ffi, lib

    rx = bytearray(FRAME_BUFFER_SIZE)
    ref = ffi.from_buffer(rx)
    a = lib.ns_ctx_new(-1, 0, ref, len(rx), 16, 64)
    b = lib.ns_ctx_new(-1, 0, ref, len(rx), 16, 64)
    try:
        assert bytes(ffi.buffer(a.hash_key)) != bytes(ffi.buffer(b.hash_key))
        tuples = [(MAPPED + GUEST_IP, 1024 + i, MAPPED + GW_IP, 80) for i in range(64)]
        in_a = [lib.ns_flow_hash(a, *t) for t in tuples]
        in_b = [lib.ns_flow_hash(b, *t) for t in tuples]
        assert in_a == [lib.ns_flow_hash(a, *t) for t in tuples]  # stable within one
        assert sum(x != y for x, y in zip(in_a, in_b, strict=True)) > 60
    finally:
        lib.ns_ctx_free(a)
        lib.ns_ctx_free(b)


class _QuietStack:
    """What the runtime's TAP reader needs of a stack: frames for Python are counted."""

    def __init__(self) -> None:
        self.frames = 0
        self.tcp = self
        self.timers = self

    def receive(self, buf: bytearray, n: int, now: float) -> None:
        self.frames += 1

    def end_of_batch(self, now: float) -> None: ...

    def after(self, conn: object) -> None: ...

    def next_deadline(self) -> float | None:
        return None


def test_a_long_python_batch_still_flushes_what_c_gathered_and_owes() -> None:
    """The TAP reader stops after FRAMES_PER_WAKEUP frames for Python; segments C took
    meanwhile must reach the host and be acknowledged before it returns, since an
    empty TAP does not wake it again."""
    from netstack.host import runtime
    from netstack.tcp.fastpath import FastPath

    tap_ours, tap_guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tap_ours.setblocking(False)
    listener = socket.create_server(("127.0.0.1", 0))
    host = socket.create_connection(listener.getsockname())
    host.setblocking(False)
    host.setsockopt(socket.SOL_SOCKET, 42, 0)
    host_peer, _ = listener.accept()
    listener.close()
    rx_buf = bytearray(FRAME_BUFFER_SIZE)
    fast = FastPath(tap_ours.fileno(), True, rx_buf, GW_MAC, DNS_MAC, 16)
    try:
        fast.ctx.delack_delay = 0
        flow = fast.lib.ns_flow_open(
            fast.ctx, host.fileno(), MAPPED + GUEST_IP, GUEST_PORT, MAPPED + GW_IP,
            REMOTE_PORT, 0,
        )  # fmt: skip
        flow.guest_mac = GUEST_MAC
        flow.snd_una = flow.snd_nxt = 5000
        flow.rcv_nxt = flow.rcv_acked = 1000
        flow.rcv_adv = 1000 + (1 << 20)
        flow.guest_window = 1 << 20
        flow.seg_size = flow.our_mss = 1460
        flow.rto = 0.2
        flow.space_known = 1 << 20
        arp = bytes(10) + b"\xff" * 6 + GUEST_MAC + b"\x08\x06" + bytes(28)  # for Python
        frames = [arp] * (runtime.FRAMES_PER_WAKEUP - 2)
        frames += [segment(1000, 5000, b"a" * 100), segment(1100, 5000, b"b" * 100)]
        frames += [arp, arp]  # the 256th frame for Python ends the batch, one stays queued
        for f in frames:
            tap_guest.send(f)
        rt = runtime.Runtime.__new__(runtime.Runtime)
        rt.fastpath = fast
        rt.stack = _QuietStack()  # type: ignore[assignment]
        rt.rx_buf = rx_buf
        rt._timer_at = None
        rt._on_link_readable_fast()
        assert rt.stack.frames == runtime.FRAMES_PER_WAKEUP  # type: ignore[attr-defined]
        host_peer.settimeout(1)
        got = b""
        while len(got) < 200:
            try:
                chunk = host_peer.recv(65536)
            except TimeoutError:
                break
            got += chunk
        assert got == b"a" * 100 + b"b" * 100
        tap_guest.setblocking(False)
        acks = []
        while True:
            try:
                frame = tap_guest.recv(65536)
            except BlockingIOError:
                break
            acks.append(tcp.parse(frame[10 + 14 + 20 :]).ack)
        assert acks and acks[-1] == 1200
        fast.lib.ns_flow_close(fast.ctx, flow)
    finally:
        fast.close()
        for s in (tap_ours, tap_guest, host, host_peer):
            s.close()
