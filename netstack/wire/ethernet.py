"""Ethernet II header: destination MAC, source MAC, ethertype (no VLAN tags)."""

from __future__ import annotations

import struct
from typing import NamedTuple

from netstack.wire import WireError

HEADER = struct.Struct("!6s6sH")
HEADER_LEN = 14

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_IPV6 = 0x86DD

BROADCAST = b"\xff" * 6


class EthernetHeader(NamedTuple):
    dst: bytes
    src: bytes
    ethertype: int


def parse(buf: bytes | bytearray | memoryview) -> EthernetHeader:
    if len(buf) < HEADER_LEN:
        raise WireError("eth_short", f"{len(buf)} bytes")
    return EthernetHeader(*HEADER.unpack_from(buf))


def emit(hdr: EthernetHeader, buf: bytearray | memoryview, offset: int = 0) -> int:
    HEADER.pack_into(buf, offset, hdr.dst, hdr.src, hdr.ethertype)
    return HEADER_LEN


def mac_to_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def mac_from_str(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"bad MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)
