"""struct sockaddr_in / sockaddr_in6 as they sit in a supervised process's memory."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6
SOCKADDR_MAX = 128
_V4MAPPED = bytes(10) + b"\xff\xff"


@dataclass(frozen=True)
class SockAddr:
    family: int
    ip: bytes  # 4 or 16 bytes
    port: int
    flowinfo: int = 0
    scope_id: int = 0

    @property
    def host(self) -> str:
        return socket.inet_ntop(self.family, self.ip)

    def unmapped(self) -> tuple[bytes, int]:
        """The destination as the network sees it: an IPv4-mapped IPv6 address is IPv4."""
        if self.family == AF_INET6 and self.ip[:12] == _V4MAPPED:
            return self.ip[12:], self.port
        return self.ip, self.port

    def __str__(self) -> str:
        if self.family == AF_INET6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse(data: bytes) -> SockAddr | None:
    """A sockaddr read from the caller; None for other families or short buffers."""
    if len(data) < 2:
        return None
    family = struct.unpack_from("=H", data)[0]
    if family == AF_INET and len(data) >= 16:
        port = struct.unpack_from("!H", data, 2)[0]
        return SockAddr(AF_INET, bytes(data[4:8]), port)
    if family == AF_INET6 and len(data) >= 24:
        port, flowinfo = struct.unpack_from("!HI", data, 2)
        scope = struct.unpack_from("=I", data, 24)[0] if len(data) >= 28 else 0
        return SockAddr(AF_INET6, bytes(data[8:24]), port, flowinfo, scope)
    return None


def family_of(data: bytes) -> int:
    return struct.unpack_from("=H", data)[0] if len(data) >= 2 else -1


def emit(addr: SockAddr) -> bytes:
    if addr.family == AF_INET:
        return struct.pack("=H", AF_INET) + struct.pack("!H", addr.port) + addr.ip + bytes(8)
    return (
        struct.pack("=H", AF_INET6)
        + struct.pack("!HI", addr.port, addr.flowinfo)
        + addr.ip
        + struct.pack("=I", addr.scope_id)
    )


def in_family(family: int, ip: bytes, port: int) -> SockAddr:
    """ip (4 or 16 bytes) as an address of a socket of `family` (IPv4 mapped into IPv6)."""
    if family == AF_INET6 and len(ip) == 4:
        ip = _V4MAPPED + ip
    return SockAddr(family, ip, port)


def host_tuple(family: int, host: str, port: int) -> tuple[str, int]:
    """A host endpoint as connect()/bind() on a socket of `family` takes it."""
    if family == AF_INET6 and ":" not in host:
        return (f"::ffff:{host}", port)
    return (host, port)
