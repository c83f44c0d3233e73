"""ICMPv6 (RFC 4443) and Neighbor Discovery (RFC 4861): echo, errors, router and
neighbour solicitation/advertisement with their options (link-layer address, prefix
information, MTU) and RDNSS (RFC 8106)."""

from __future__ import annotations

import struct
from typing import NamedTuple

from netstack import _fast
from netstack.wire import WireError, ipv6

HEADER = struct.Struct("!BBHHH")
HEADER_LEN = 8

TYPE_DEST_UNREACHABLE = 1
TYPE_PACKET_TOO_BIG = 2
TYPE_TIME_EXCEEDED = 3
TYPE_PARAM_PROBLEM = 4
TYPE_ECHO_REQUEST = 128
TYPE_ECHO_REPLY = 129
TYPE_ROUTER_SOLICIT = 133
TYPE_ROUTER_ADVERT = 134
TYPE_NEIGHBOR_SOLICIT = 135
TYPE_NEIGHBOR_ADVERT = 136

CODE_NO_ROUTE = 0
CODE_ADMIN_PROHIBITED = 1
CODE_ADDRESS_UNREACHABLE = 3
CODE_PORT_UNREACHABLE = 4

OPT_SOURCE_LL = 1
OPT_TARGET_LL = 2
OPT_PREFIX_INFO = 3
OPT_MTU = 5
OPT_RDNSS = 25

NA_ROUTER = 0x80000000
NA_SOLICITED = 0x40000000
NA_OVERRIDE = 0x20000000

# an error quotes as much of the offending packet as fits the minimum MTU
ERROR_QUOTE_MAX = 1280 - 40 - 8


class Icmpv6Header(NamedTuple):
    type: int
    code: int
    word1: int  # identifier (echo) or the first 16 bits of the message body
    word2: int  # sequence (echo) or the next 16 bits


def parse(buf: bytes | bytearray | memoryview) -> Icmpv6Header:
    if len(buf) < HEADER_LEN:
        raise WireError("icmpv6_short", f"{len(buf)} bytes")
    t, c, _csum, w1, w2 = HEADER.unpack_from(buf)
    return Icmpv6Header(t, c, w1, w2)


def parse_options(buf: bytes | bytearray | memoryview) -> dict[int, bytes]:
    """NDP options (type -> first value); a zero or overlong length rejects the lot."""
    out: dict[int, bytes] = {}
    i = 0
    while i + 2 <= len(buf):
        kind, units = buf[i], buf[i + 1]
        if units == 0 or i + units * 8 > len(buf):
            raise WireError("ndp_option", f"option {kind} length {units}")
        out.setdefault(kind, bytes(buf[i + 2 : i + units * 8]))
        i += units * 8
    return out


def ll_option(kind: int, mac: bytes) -> bytes:
    return bytes((kind, 1)) + mac


def prefix_option(prefix: bytes, length: int, valid: int, preferred: int) -> bytes:
    return struct.pack(
        "!BBBBII4x16s", OPT_PREFIX_INFO, 4, length, 0xC0, valid, preferred, prefix
    )  # flags: on-link, autonomous (SLAAC)


def mtu_option(mtu: int) -> bytes:
    return struct.pack("!BBHI", OPT_MTU, 1, 0, mtu)


def rdnss_option(servers: list[bytes], lifetime: int) -> bytes:
    return struct.pack("!BBHI", OPT_RDNSS, 1 + 2 * len(servers), 0, lifetime) + b"".join(servers)


def emit(src: bytes, dst: bytes, type_: int, code: int, body: bytes) -> bytes:
    """A whole ICMPv6 message: header, then body (everything after the checksum)."""
    msg = bytearray(struct.pack("!BBH", type_, code, 0) + body)
    seed = ipv6.pseudo_header_sum(src, dst, ipv6.NEXT_ICMPV6, len(msg))
    struct.pack_into("!H", msg, 2, _fast.checksum(msg, seed))
    return bytes(msg)
