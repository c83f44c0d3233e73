"""IPv4 header (RFC 791). Options are skipped, never interpreted.

`parse` checks version, header length, total length against the buffer and the
header checksum; trailing Ethernet padding beyond total_length is excluded from the
payload bounds it returns.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from netstack import _fast
from netstack.wire import WireError

HEADER = struct.Struct("!BBHHHBBH4s4s")
HEADER_LEN = 20

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

FLAG_DF = 0x4000
FLAG_MF = 0x2000
FRAG_OFFSET_MASK = 0x1FFF

DEFAULT_TTL = 64


class Ipv4Header(NamedTuple):
    ihl: int  # header length in bytes
    tos: int
    total_length: int
    ident: int
    flags_frag: int
    ttl: int
    proto: int
    src: bytes
    dst: bytes

    @property
    def is_fragment(self) -> bool:
        return bool(self.flags_frag & (FLAG_MF | FRAG_OFFSET_MASK))


def parse(buf: bytes | bytearray | memoryview, verify_checksum: bool = True) -> Ipv4Header:
    if len(buf) < HEADER_LEN:
        raise WireError("ipv4_short", f"{len(buf)} bytes")
    vihl, tos, total, ident, ff, ttl, proto, _csum, src, dst = HEADER.unpack_from(buf)
    if vihl >> 4 != 4:
        raise WireError("ipv4_version", f"version {vihl >> 4}")
    ihl = (vihl & 0xF) * 4
    if ihl < HEADER_LEN:
        raise WireError("ipv4_ihl", f"ihl {ihl}")
    if total < ihl or total > len(buf):
        raise WireError("ipv4_length", f"total_length {total}, header {ihl}, buffer {len(buf)}")
    if verify_checksum and _fast.checksum(buf[:ihl]) != 0:
        raise WireError("ipv4_checksum")
    return Ipv4Header(ihl, tos, total, ident, ff, ttl, proto, src, dst)


def emit(hdr: Ipv4Header, buf: bytearray | memoryview, offset: int = 0) -> int:
    """Write a 20-byte header (no options) with its checksum."""
    HEADER.pack_into(
        buf,
        offset,
        0x45,
        hdr.tos,
        hdr.total_length,
        hdr.ident,
        hdr.flags_frag,
        hdr.ttl,
        hdr.proto,
        0,
        hdr.src,
        hdr.dst,
    )
    csum = _fast.checksum(memoryview(buf)[offset : offset + HEADER_LEN])
    struct.pack_into("!H", buf, offset + 10, csum)
    return HEADER_LEN


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Folded one's-complement sum of the IPv4 pseudo-header (not inverted)."""
    s = (
        (src[0] << 8 | src[1])
        + (src[2] << 8 | src[3])
        + (dst[0] << 8 | dst[1])
        + (dst[2] << 8 | dst[3])
        + proto
        + length
    )
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s
