"""Typed facade over the C fast path (netstack._fastc), with a pure-Python twin.

`FAST` tells which one is in use. The twins exist so that the package still works
where the extension was not built, and so that a test can compare both on random
input. Callers pass bytes, bytearray or memoryview; nothing here keeps state.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

Buffer = bytes | bytearray | memoryview


def py_sum16(buf: Buffer, seed: int = 0) -> int:
    """One's-complement 16-bit sum of buf added to seed, folded, not inverted."""
    data = bytes(buf)
    if len(data) & 1:
        data += b"\0"
    acc = seed + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return acc


def py_checksum(buf: Buffer, seed: int = 0) -> int:
    """The Internet checksum (RFC 1071) of buf, seeded with a partial sum."""
    return ~py_sum16(buf, seed) & 0xFFFF


_SIOCOUTQ = 0x5411


def py_discard(fd: int, length: int) -> int:
    """Drop length bytes from a TCP socket's receive queue; bytes dropped or -errno."""
    try:
        return _recv_trunc(fd, length)
    except OSError as e:
        return -(e.errno or 1)


def _recv_trunc(fd: int, length: int) -> int:
    sock = socket.socket(fileno=os.dup(fd))
    try:
        return len(sock.recv(length, socket.MSG_TRUNC | socket.MSG_DONTWAIT))
    finally:
        sock.close()


def py_sock_send_space(fd: int) -> int:
    """Bytes a TCP socket's send buffer can still take, or -errno."""
    import fcntl

    sock = socket.socket(fileno=os.dup(fd))
    try:
        sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        outq = struct.unpack("i", fcntl.ioctl(fd, _SIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError as e:
        return -(e.errno or 1)
    finally:
        sock.close()
    return max(0, sndbuf - outq)


def _load_fastc(path: str) -> None:
    """Use the extension at path as netstack._fastc (scripts/sanitize.sh: a sanitizer
    build kept out of the package)."""
    import importlib.util
    import sys

    # a build asked for by name fails loudly, not into the pure-Python twin
    spec = importlib.util.spec_from_file_location("netstack._fastc", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"NETSTACK_FASTC: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as e:
        raise RuntimeError(f"NETSTACK_FASTC={path}: {e}") from e
    sys.modules["netstack._fastc"] = module


try:
    if os.environ.get("NETSTACK_PURE_PYTHON"):
        raise ImportError("pure Python requested")
    if os.environ.get("NETSTACK_FASTC"):
        _load_fastc(os.environ["NETSTACK_FASTC"])
    from netstack._fastc import ffi as _ffi
    from netstack._fastc import lib as _lib

    FAST = True
except ImportError:  # pragma: no cover - exercised by the twin tests
    FAST = False


if FAST:
    _from_buffer: Any = _ffi.from_buffer
    _c_sum16 = _lib.ns_sum16
    _c_checksum = _lib.ns_checksum

    def sum16(buf: Buffer, seed: int = 0) -> int:
        if isinstance(buf, bytes):
            return int(_c_sum16(buf, len(buf), seed))
        return int(_c_sum16(_from_buffer(buf), len(buf), seed))

    def checksum(buf: Buffer, seed: int = 0) -> int:
        if isinstance(buf, bytes):
            return int(_c_checksum(buf, len(buf), seed))
        return int(_c_checksum(_from_buffer(buf), len(buf), seed))

    discard: Any = _lib.ns_discard
    sock_send_space: Any = _lib.ns_sock_send_space
    tcp4_frame: Any = _lib.ns_tcp4_frame
    tcp6_frame: Any = _lib.ns_tcp6_frame
    udp_frame: Any = _lib.ns_udp_frame

    def writable(buf: bytearray) -> Any:
        """A C pointer to buf, for C functions that write into it (keep buf alive)."""
        return _from_buffer(buf)
else:
    sum16 = py_sum16
    checksum = py_checksum
    discard = py_discard
    sock_send_space = py_sock_send_space
