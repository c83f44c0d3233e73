"""UDP header (RFC 768) with the IPv4 pseudo-header checksum."""

from __future__ import annotations

import struct
from typing import NamedTuple

from netstack import _fast
from netstack.wire import WireError, ipv4, ipv6

HEADER = struct.Struct("!HHHH")
HEADER_LEN = 8


class UdpHeader(NamedTuple):
    src_port: int
    dst_port: int
    length: int  # header + payload


def parse(buf: bytes | bytearray | memoryview) -> UdpHeader:
    if len(buf) < HEADER_LEN:
        raise WireError("udp_short", f"{len(buf)} bytes")
    sport, dport, length, _csum = HEADER.unpack_from(buf)
    if length < HEADER_LEN or length > len(buf):
        raise WireError("udp_length", f"length {length}, buffer {len(buf)}")
    return UdpHeader(sport, dport, length)


def emit(
    hdr: UdpHeader,
    src: bytes,
    dst: bytes,
    payload: bytes | bytearray | memoryview,
    buf: bytearray | memoryview,
    offset: int = 0,
) -> int:
    """Write header and payload with the full checksum over the IPv4 or IPv6 (by the
    addresses' length) pseudo-header; returns bytes written."""
    if len(src) == 16:
        seed = ipv6.pseudo_header_sum(src, dst, ipv6.NEXT_UDP, hdr.length)
    else:
        seed = ipv4.pseudo_header_sum(src, dst, ipv4.PROTO_UDP, hdr.length)
    end = offset + HEADER_LEN + len(payload)
    HEADER.pack_into(buf, offset, hdr.src_port, hdr.dst_port, hdr.length, 0)
    buf[offset + HEADER_LEN : end] = payload
    csum = _fast.checksum(memoryview(buf)[offset:end], seed) or 0xFFFF  # 0 means "none"
    struct.pack_into("!H", buf, offset + 6, csum)
    return end - offset
