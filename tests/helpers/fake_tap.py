"""The fake TAP of the C paths' unit tests (test_flowpath, test_udp_flowpath,
test_dns_flowpath): a SOCK_SEQPACKET pair stands in for the TAP (one read, one
frame). Frames are written as the guest's kernel would (a plain link carries no
virtio-net header), fed to ns_rx, and what C hands back to Python is checked against
what was sent."""

from __future__ import annotations

import socket
import time
from typing import Any

from netstack.tcp.fastpath import PYTHON_WORK


def wire(vnet: bool, frame: bytes) -> bytes:
    """What crosses the fake TAP for frame (plain: without its virtio-net header)."""
    return frame if vnet else frame[10:] or b"\0"


def as_read(vnet: bool, frame: bytes) -> bytes:
    """frame as Python reads it from the TAP: virtio-net header first (zeroed on a
    plain link, which carries none)."""
    return frame if vnet else bytes(10) + wire(vnet, frame)


def feed(
    lib: Any,
    ctx: Any,
    guest: socket.socket,
    rx_buf: bytearray,
    vnet: bool,
    frames: list[bytes],
    max_frames: int = 256,
) -> list[bytes]:
    """Feed frames; returns the frames C handed back to Python, in order, after checking
    the promise: each is one of those sent, unchanged, none twice, in sending order."""
    for f in frames:
        guest.send(wire(vnet, f))
    handed_back = []
    for _ in range(len(frames) + 1):
        n = int(lib.ns_rx(ctx, time.monotonic(), max_frames))
        assert n >= 0, f"ns_rx failed: errno {-n}"
        if n in (0, PYTHON_WORK):
            break
        handed_back.append(bytes(rx_buf[:n]))
    expected = iter(as_read(vnet, f) for f in frames)
    for got in handed_back:
        assert any(got == want for want in expected), "C handed back a frame it changed"
    return handed_back
