"""ARP for Ethernet and IPv4 (RFC 826). Other hardware/protocol types are rejected."""

from __future__ import annotations

import struct
from typing import NamedTuple

from netstack.wire import WireError

HEADER = struct.Struct("!HHBBH6s4s6s4s")
HEADER_LEN = 28

HTYPE_ETHERNET = 1
PTYPE_IPV4 = 0x0800
OP_REQUEST = 1
OP_REPLY = 2


class ArpPacket(NamedTuple):
    op: int
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes


def parse(buf: bytes | bytearray | memoryview) -> ArpPacket:
    if len(buf) < HEADER_LEN:
        raise WireError("arp_short", f"{len(buf)} bytes")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = HEADER.unpack_from(buf)
    if htype != HTYPE_ETHERNET or ptype != PTYPE_IPV4 or hlen != 6 or plen != 4:
        raise WireError("arp_unsupported", f"htype {htype} ptype {ptype:#x}")
    return ArpPacket(op, sha, spa, tha, tpa)


def emit(pkt: ArpPacket, buf: bytearray | memoryview, offset: int = 0) -> int:
    HEADER.pack_into(
        buf,
        offset,
        HTYPE_ETHERNET,
        PTYPE_IPV4,
        6,
        4,
        pkt.op,
        pkt.sender_mac,
        pkt.sender_ip,
        pkt.target_mac,
        pkt.target_ip,
    )
    return HEADER_LEN
