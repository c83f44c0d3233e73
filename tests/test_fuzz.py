"""Fuzzing: every wire parser and the dispatcher as a whole, with hypothesis, plus the
replay of a corpus of interesting frames (tests/corpus/frames.txt). The rule: a parser
returns or raises WireError; the dispatcher never lets anything out and never counts
an internal error; C helpers refuse lengths that do not fit."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netstack import _fast
from netstack.stack.config import NetworkConfig
from netstack.wire import (
    WireError,
    arp,
    dhcpv4,
    dhcpv6,
    dns,
    ethernet,
    icmpv4,
    icmpv6,
    ipv4,
    ipv6,
    tcp,
    udp,
    vnet,
)
from tests.fakes import Rig

PARSERS = [
    dhcpv6.parse,
    ipv6.parse,
    icmpv6.parse,
    icmpv6.parse_options,
    ethernet.parse,
    arp.parse,
    ipv4.parse,
    icmpv4.parse,
    udp.parse,
    tcp.parse,
    dhcpv4.parse,
    dns.parse,
    dns.question_name,
    vnet.parse,
    tcp.parse_options,
]
FUZZ = settings(
    max_examples=int(os.environ.get("NETSTACK_FUZZ_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("parse", PARSERS, ids=lambda f: f"{f.__module__}.{f.__name__}")
@FUZZ
@given(data=st.binary(max_size=400))
def test_parsers_return_or_raise_wire_error(parse: object, data: bytes) -> None:
    try:
        parse(data)  # type: ignore[operator]
        parse(memoryview(data))  # type: ignore[operator]
    except WireError:
        pass


GW_MAC = bytes.fromhex("52550a000202")
GUEST_MAC = bytes.fromhex("020000000001")


def _csum(b: bytes) -> int:
    return _fast.py_checksum(b)


@st.composite
def ipv4_frames(draw: st.DrawFn) -> bytes:
    """Frames that get past Ethernet and (mostly) the IP checksum, so the fuzzer
    spends its time in the upper layers."""
    proto = draw(st.sampled_from([1, 6, 17, draw(st.integers(0, 255))]))
    payload = draw(st.binary(max_size=120))
    if proto == 6 and draw(st.booleans()):
        # mostly well-formed (a SYN opens a flow the rest can reach), sometimes anything
        flags = draw(st.sampled_from([0x02, 0x10, 0x18, 0x11, 0x04, draw(st.integers(0, 255))]))
        off = draw(st.sampled_from([5, draw(st.integers(0, 15))]))
        opts = draw(st.binary(max_size=40))
        payload = (
            struct.pack(
                "!HHIIBBHHH",
                draw(st.sampled_from([SYN_PORT, draw(st.integers(0, 65535))])),
                draw(st.sampled_from([80, 53, 7000])),
                draw(st.sampled_from([2, draw(st.integers(0, 2**32 - 1))])),  # 2: SYN_FRAME's next
                draw(st.integers(0, 2**32 - 1)),
                off << 4,
                flags,
                draw(st.integers(0, 65535)),
                0,
                0,
            )
            + opts
            + payload
        )
    src = draw(
        st.sampled_from(
            [
                b"\x0a\x00\x02\x64",
                b"\x0a\x00\x02\x0f",
                b"\0\0\0\0",
                draw(st.binary(min_size=4, max_size=4)),
            ]
        )
    )
    dst = draw(
        st.sampled_from(
            [
                b"\x0a\x00\x02\x02",
                b"\x0a\x00\x02\x03",
                b"\xff\xff\xff\xff",
                b"\x7f\x00\x00\x01",
                draw(st.binary(min_size=4, max_size=4)),
            ]
        )
    )
    total = draw(st.sampled_from([20 + len(payload), draw(st.integers(0, 65535))]))
    frag = draw(st.sampled_from([0x4000, 0, 0x2000, draw(st.integers(0, 65535))]))
    h = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, draw(st.integers(0, 65535)), frag, 64, proto, 0, src, dst
    )
    h = h[:10] + struct.pack("!H", _csum(h)) + h[12:]
    return GW_MAC + GUEST_MAC + b"\x08\x00" + h + payload


SYN_PORT = 40000


def _syn_frame(flags: int = 0x02, seq: int = 1, ack: int = 0) -> bytes:
    """The guest's SYN 10.0.2.100:40000 -> 10.0.2.2:80 (or another segment of it)."""
    seg = struct.pack("!HHIIBBHHH", SYN_PORT, 80, seq, ack, 5 << 4, flags, 1000, 0, 0)
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 1, 0x4000, 64, 6, 0, GUEST_IP, GW_IP)
    h = h[:10] + struct.pack("!H", _csum(h)) + h[12:]
    return GW_MAC + GUEST_MAC + b"\x08\x00" + h + seg


GUEST_IP = b"\x0a\x00\x02\x64"
GW_IP = b"\x0a\x00\x02\x02"
SYN_FRAME = _syn_frame()


@FUZZ
@given(
    frames=st.lists(st.one_of(ipv4_frames(), st.binary(max_size=200)), max_size=20),
    vnet_hdr=st.binary(min_size=10, max_size=10),
)
def test_dispatcher_survives_anything(frames: list[bytes], vnet_hdr: bytes) -> None:
    rig = Rig()
    frames = [SYN_FRAME, *frames]  # one flow at least, which the fuzzed frames may hit
    for frame in frames:
        buf = bytearray(vnet_hdr + frame)
        rig.stack.receive(buf, len(buf), rig.now)
    rig.stack.end_of_batch(rig.now)
    # the host side of every flow connects (or fails), then the same frames come again:
    # now they meet flows past CONNECTING, with host data waiting for the guest
    for i, (conn, _, stream) in enumerate(rig.host.connects):
        stream.to_guest += b"h" * 3000
        rig.stack.tcp.host_connected(conn, i % 3 != 2, 111, rig.now)
        if conn.flow.guest_port == SYN_PORT:  # the guest completes the handshake
            ack = bytearray(vnet_hdr + _syn_frame(0x10, 2, (conn.iss + 1) & 0xFFFFFFFF))
            rig.stack.receive(ack, len(ack), rig.now)
    for frame in frames:
        buf = bytearray(vnet_hdr + frame)
        rig.stack.receive(buf, len(buf), rig.now)
    rig.stack.end_of_batch(rig.now)
    for conn, _, _ in rig.host.connects:
        conn.on_host_readable(rig.now)
        rig.stack.tcp.after(conn)
    rig.advance(1.0)
    assert rig.stack.stats.drops["internal_error"] == 0


CORPUS = Path(__file__).parent / "corpus" / "frames.txt"


def corpus() -> list[tuple[str, bytes]]:
    out = []
    for line in CORPUS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, hexdata = line.partition(" ")
        out.append((name, bytes.fromhex(hexdata.strip())))
    return out


def test_corpus_replays_cleanly() -> None:
    frames = corpus()
    assert len(frames) >= 100
    for vnet_on in (False, True):
        rig = Rig(vnet_enabled=vnet_on)
        for _name, frame in frames:
            buf = bytearray(bytes(10) + frame)
            rig.stack.receive(buf, len(buf), rig.now)
        rig.stack.end_of_batch(rig.now)
        rig.advance(300)
        assert rig.stack.stats.drops["internal_error"] == 0
        assert sum(rig.stack.stats.drops.values()) > len(frames) // 2


@pytest.mark.skipif(not _fast.FAST, reason="C fast path not built")
def test_c_frame_builder_refuses_what_does_not_fit() -> None:
    buf = bytearray(200)
    ptr = _fast.writable(buf)
    args = (b"\0" * 6, b"\0" * 6, b"\0" * 4, b"\0" * 4, 1, 2, 3, 4, 0x10, 5, False, 0, 0)
    assert _fast.tcp4_frame(ptr, len(buf), 0, *args, 200, 1, False, 0) == -1  # past buflen
    assert _fast.tcp4_frame(ptr, len(buf), 0, *args, 70000, 1, False, 0) == -1  # > 64 KiB
    assert _fast.tcp4_frame(ptr, len(buf), 300, *args, 0, 1, False, 0) == -1  # start outside
    assert _fast.tcp4_frame(ptr, len(buf), 0, *args, 10, 1, False, 0) == 10 + 54 + 10
    args6 = (b"\0" * 6, b"\0" * 6, b"\0" * 16, b"\0" * 16, 1, 2, 3, 4, 0x10, 5, False, 0, 0)
    assert _fast.tcp6_frame(ptr, len(buf), 0, *args6, 200, False, 0) == -1
    assert _fast.tcp6_frame(ptr, len(buf), 0, *args6, 70000, False, 0) == -1
    assert _fast.tcp6_frame(ptr, len(buf), 300, *args6, 0, False, 0) == -1
    assert _fast.tcp6_frame(ptr, len(buf), 0, *args6, 10, False, 0) == 10 + 74 + 10


@st.composite
def ipv6_frames(draw: st.DrawFn) -> bytes:
    """IPv6 frames with extension-header chains, NDP and odd upper layers."""
    chain = b""
    nxt_first = draw(st.sampled_from([0, 6, 17, 43, 44, 58, 59, 60, draw(st.integers(0, 255))]))
    nxt = nxt_first
    for _ in range(draw(st.integers(0, 10))):
        following = draw(st.sampled_from([0, 6, 17, 43, 44, 58, 60]))
        if nxt == 44:
            chain += bytes([following, 0]) + draw(st.binary(min_size=6, max_size=6))
        elif nxt in (0, 43, 60):
            units = draw(st.integers(0, 2))
            chain += bytes([following, units]) + draw(
                st.binary(min_size=6 + 8 * units, max_size=6 + 8 * units)
            )
        else:
            break
        nxt = following
    body = draw(st.binary(max_size=100))
    if nxt == 58 and draw(st.booleans()):
        body = bytes([draw(st.sampled_from([128, 133, 135, 136, 1, 2, 134])), 0, 0, 0]) + body
    payload = chain + body
    plen = draw(st.sampled_from([len(payload), draw(st.integers(0, 65535))]))
    src = draw(
        st.sampled_from(
            [
                bytes.fromhex("fd00" + "00" * 12 + "0100"),
                bytes(16),
                bytes.fromhex("fe80" + "00" * 13 + "01"),
                draw(st.binary(min_size=16, max_size=16)),
            ]
        )
    )
    dst = draw(
        st.sampled_from(
            [
                bytes.fromhex("fd00" + "00" * 13 + "02"),
                bytes(15) + b"\x01",
                bytes.fromhex("ff02" + "00" * 13 + "02"),
                draw(st.binary(min_size=16, max_size=16)),
            ]
        )
    )
    hop = draw(st.sampled_from([255, 64, 1]))
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, plen, nxt_first, hop, src, dst)
    return bytes.fromhex("525600000002") + GUEST_MAC + b"\x86\xdd" + ip6 + payload


@FUZZ
@given(frames=st.lists(ipv6_frames(), max_size=20))
def test_ipv6_dispatcher_survives_anything(frames: list[bytes]) -> None:
    rig = Rig(NetworkConfig(ipv6=True))
    for frame in frames:
        buf = bytearray(bytes(10) + frame)
        rig.stack.receive(buf, len(buf), rig.now)
    rig.stack.end_of_batch(rig.now)
    rig.advance(1.0)
    assert rig.stack.stats.drops["internal_error"] == 0
