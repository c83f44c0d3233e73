"""The C fast path against its pure-Python twin, on random buffers."""

from __future__ import annotations

import os
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netstack import _fast

pytestmark = pytest.mark.skipif(not _fast.FAST, reason="C fast path not built")


@given(st.binary(max_size=3000), st.integers(min_value=0, max_value=0x3FFFF))
def test_sum16_matches_twin(data: bytes, seed: int) -> None:
    assert _fast.sum16(data, seed) == _fast.py_sum16(data, seed)
    assert _fast.sum16(bytearray(data), seed) == _fast.py_sum16(data, seed)
    assert _fast.sum16(memoryview(data)[1:], seed) == _fast.py_sum16(data[1:], seed)


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 1500, 65535])
def test_checksum_matches_twin_and_verifies(size: int) -> None:
    data = bytearray(os.urandom(size + (size & 1)))
    assert _fast.checksum(data) == _fast.py_checksum(data)
    if size >= 2:
        data[0:2] = b"\0\0"
        data[0:2] = _fast.checksum(data).to_bytes(2, "big")
        assert _fast.checksum(data) == 0  # a filled-in checksum sums to zero


def test_discard_and_send_space_match_twin() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    c = socket.create_connection(srv.getsockname())
    s, _ = srv.accept()
    try:
        c.sendall(b"x" * 10_000)
        assert s.recv(10, socket.MSG_PEEK) == b"x" * 10
        assert _fast.discard(s.fileno(), 4000) == 4000
        assert _fast.py_discard(s.fileno(), 1000) == 1000
        assert len(s.recv(20_000)) == 5000
        assert _fast.sock_send_space(c.fileno()) == _fast.py_sock_send_space(c.fileno())
        assert _fast.sock_send_space(c.fileno()) > 0
        assert _fast.discard(-1, 10) < 0
    finally:
        for x in (c, s, srv):
            x.close()


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("vnet_on", [True, False])
@pytest.mark.parametrize("ts", [None, (123456, 654321)])
@pytest.mark.parametrize("payload_len,seg_size", [(0, 1448), (100, 1448), (5000, 1448)])
def test_tcp_frame_builder_matches_twin(
    v6: bool, vnet_on: bool, ts: tuple[int, int] | None, payload_len: int, seg_size: int
) -> None:
    from netstack.link.memory import MemoryLink
    from netstack.tcp.output import FlowAddrs, SegmentWriter

    if v6:
        flow = FlowAddrs(os.urandom(6), os.urandom(16), 40000, os.urandom(16), 443)
    else:
        flow = FlowAddrs(os.urandom(6), b"\x0a\x00\x02\x64", 40000, b"\xc0\x00\x02\x02", 443)
    outputs = []
    for use_c in (True, False):
        w = SegmentWriter(MemoryLink(vnet_enabled=vnet_on), b"\x52\x55\x0a\x00\x02\x02")
        if not use_c:
            w._c_buf = None
        hlen = 20 + (12 if ts else 0)
        w.payload_view(hlen, payload_len)[:payload_len] = bytes(range(256)) * (
            payload_len // 256
        ) + bytes(payload_len % 256)
        start = w.payload_offset(hlen) - (10 + (54 if v6 else 34) + hlen)
        end = w._headers(start, flow, 0xFFFFFFF0, 77, 0x18, 4321, ts, hlen, payload_len, seg_size)
        outputs.append(bytes(w.buf[start:end]))
    assert outputs[0] == outputs[1]


@given(
    v6=st.booleans(),
    payload=st.binary(max_size=1600),
    sport=st.integers(0, 65535),
    dport=st.integers(0, 65535),
)
def test_udp_frame_builder_matches_twin(v6: bool, payload: bytes, sport: int, dport: int) -> None:
    """GuestOutput.send_udp builds a frame that fits in C; its Python path (the one
    that also fragments) must give the same bytes, ip id included."""
    from netstack.link.memory import MemoryLink
    from netstack.stack.config import NetworkConfig
    from netstack.stack.guest_output import GuestOutput

    src, dst = (os.urandom(16), os.urandom(16)) if v6 else (os.urandom(4), os.urandom(4))
    frames = []
    for use_c in (True, False):
        link = MemoryLink(mtu=65520)
        out = GuestOutput(link, NetworkConfig())
        if not use_c:
            out._udp_frame = None
        out.send_udp(b"\x02\x00\x00\x00\x00\x01", src, sport, dst, dport, payload)
        frames.append(link.sent)
    assert frames[0] == frames[1] and len(frames[0]) == 1
