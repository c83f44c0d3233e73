"""IPv6 header (RFC 8200) and a bounded walk over extension headers.

`parse` checks version and payload length; `upper_layer` walks hop-by-hop, routing,
destination-options and fragment headers (at most MAX_EXTENSIONS of them) to the
upper-layer protocol, and rejects anything else it does not know.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from netstack.wire import WireError

HEADER = struct.Struct("!IHBB16s16s")
HEADER_LEN = 40

NEXT_HOP_BY_HOP = 0
NEXT_TCP = 6
NEXT_UDP = 17
NEXT_ROUTING = 43
NEXT_FRAGMENT = 44
NEXT_ICMPV6 = 58
NEXT_NONE = 59
NEXT_DEST_OPTS = 60

MAX_EXTENSIONS = 8
DEFAULT_HOP_LIMIT = 64


class Ipv6Header(NamedTuple):
    traffic_class: int
    flow_label: int
    payload_length: int
    next_header: int
    hop_limit: int
    src: bytes
    dst: bytes


class UpperLayer(NamedTuple):
    proto: int
    offset: int  # from the start of the IPv6 header
    fragment_at: int  # where the fragment header is, or 0 when there is none


def parse(buf: bytes | bytearray | memoryview) -> Ipv6Header:
    if len(buf) < HEADER_LEN:
        raise WireError("ipv6_short", f"{len(buf)} bytes")
    vtf, plen, nxt, hlim, src, dst = HEADER.unpack_from(buf)
    if vtf >> 28 != 6:
        raise WireError("ipv6_version", f"version {vtf >> 28}")
    if HEADER_LEN + plen > len(buf):
        raise WireError("ipv6_length", f"payload_length {plen}, buffer {len(buf)}")
    return Ipv6Header((vtf >> 20) & 0xFF, vtf & 0xFFFFF, plen, nxt, hlim, src, dst)


def upper_layer(hdr: Ipv6Header, buf: bytes | bytearray | memoryview) -> UpperLayer:
    """Walk the extension headers of buf (the whole packet, hdr parsed from it)."""
    nxt = hdr.next_header
    off = HEADER_LEN
    end = HEADER_LEN + hdr.payload_length
    fragment_at = 0
    for _ in range(MAX_EXTENSIONS):
        if nxt in (NEXT_HOP_BY_HOP, NEXT_ROUTING, NEXT_DEST_OPTS):
            if off + 2 > end:
                raise WireError("ipv6_extension_short")
            size = (buf[off + 1] + 1) * 8
            if off + size > end:
                raise WireError("ipv6_extension_length")
            nxt = buf[off]
            off += size
        elif nxt == NEXT_FRAGMENT:
            if off + 8 > end:
                raise WireError("ipv6_extension_short")
            fragment_at = off
            nxt = buf[off]
            off += 8
        elif nxt == NEXT_NONE:
            raise WireError("ipv6_no_next_header")
        else:
            return UpperLayer(nxt, off, fragment_at)
    raise WireError("ipv6_extension_chain", f"more than {MAX_EXTENSIONS} headers")


def emit(hdr: Ipv6Header, buf: bytearray | memoryview, offset: int = 0) -> int:
    HEADER.pack_into(
        buf,
        offset,
        (6 << 28) | (hdr.traffic_class << 20) | hdr.flow_label,
        hdr.payload_length,
        hdr.next_header,
        hdr.hop_limit,
        hdr.src,
        hdr.dst,
    )
    return HEADER_LEN


def pseudo_header_sum(src: bytes, dst: bytes, next_header: int, length: int) -> int:
    """Folded one's-complement sum of the IPv6 pseudo-header (RFC 8200 8.1), not inverted."""
    words = struct.unpack("!16H", src + dst)
    s = sum(words) + (length >> 16) + (length & 0xFFFF) + next_header
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def is_link_local(ip: bytes) -> bool:
    return ip[0] == 0xFE and (ip[1] & 0xC0) == 0x80


def solicited_node(ip: bytes) -> bytes:
    return bytes.fromhex("ff0200000000000000000001ff") + ip[13:]  # ff02::1:ffXX:XXXX


def multicast_mac(ip: bytes) -> bytes:
    return b"\x33\x33" + ip[12:]
