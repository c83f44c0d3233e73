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


def damage(frame: bytes, edit: tuple[Any, ...], keep: range = range(0)) -> bytes:
    """frame after one of the fuzz tests' edits: ("cut", n) keeps its first n bytes,
    ("flip", at, bits) flips bits in the byte at `at` (wrapped; not one in keep, which a
    test leaves alone), ("junk", data) replaces it. Never empty: a read returns a byte."""
    bad = bytearray(frame)
    if edit[0] == "cut":
        bad = bad[: edit[1]]
    elif edit[0] == "flip":
        at = edit[1] % len(bad)
        if at not in keep:
            bad[at] ^= edit[2]
    else:
        bad = bytearray(edit[1])
    return bytes(bad) or b"\0"


def taken(vnet: bool, frames: list[bytes], handed_back: list[bytes]) -> list[bytes]:
    """The frames C took (as read, virtio-net header first): those sent, less those it
    handed back (feed checked those are in sending order)."""
    back = iter(handed_back)
    nxt = next(back, None)
    out = []
    for f in frames:
        read = as_read(vnet, f)
        if read == nxt:
            nxt = next(back, None)
        else:
            out.append(read)
    assert nxt is None, "C handed back a frame out of order"
    return out
