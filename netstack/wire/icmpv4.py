"""ICMPv4 (RFC 792): echo and the error messages the stack sends."""

from __future__ import annotations

import struct
from typing import NamedTuple

from netstack import _fast
from netstack.wire import WireError

HEADER = struct.Struct("!BBHHH")
HEADER_LEN = 8

TYPE_ECHO_REPLY = 0
TYPE_DEST_UNREACHABLE = 3
TYPE_ECHO_REQUEST = 8
TYPE_TIME_EXCEEDED = 11

CODE_NET_UNREACHABLE = 0
CODE_HOST_UNREACHABLE = 1
CODE_PROTO_UNREACHABLE = 2
CODE_PORT_UNREACHABLE = 3
CODE_ADMIN_PROHIBITED = 13

# An error quotes the offending IP header and the first 8 bytes of its payload.
ERROR_QUOTE_PAYLOAD = 8


class IcmpHeader(NamedTuple):
    type: int
    code: int
    ident: int  # echo identifier (or the first half of "rest of header")
    seq: int


def parse(buf: bytes | bytearray | memoryview) -> IcmpHeader:
    if len(buf) < HEADER_LEN:
        raise WireError("icmp_short", f"{len(buf)} bytes")
    t, c, _csum, ident, seq = HEADER.unpack_from(buf)
    return IcmpHeader(t, c, ident, seq)


def emit(
    hdr: IcmpHeader,
    payload: bytes | bytearray | memoryview,
    buf: bytearray | memoryview,
    offset: int = 0,
) -> int:
    """Write header and payload with the checksum filled; returns bytes written."""
    end = offset + HEADER_LEN + len(payload)
    HEADER.pack_into(buf, offset, hdr.type, hdr.code, 0, hdr.ident, hdr.seq)
    buf[offset + HEADER_LEN : end] = payload
    csum = _fast.checksum(memoryview(buf)[offset:end])
    struct.pack_into("!H", buf, offset + 2, csum)
    return end - offset
