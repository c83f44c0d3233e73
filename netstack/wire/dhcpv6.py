"""DHCPv6 (RFC 8415), only what a stateless server needs: message type, transaction id
and the options list."""

from __future__ import annotations

import struct
from typing import NamedTuple

from netstack.wire import WireError

CLIENT_PORT = 546
SERVER_PORT = 547
ALL_SERVERS = bytes.fromhex("ff020000000000000000000000010002")  # ff02::1:2

SOLICIT = 1
REPLY = 7
INFORMATION_REQUEST = 11

OPT_CLIENTID = 1
OPT_SERVERID = 2
OPT_DNS_SERVERS = 23


class Dhcpv6Message(NamedTuple):
    msg_type: int
    transaction_id: int
    options: dict[int, bytes]


def parse(buf: bytes | bytearray | memoryview) -> Dhcpv6Message:
    if len(buf) < 4:
        raise WireError("dhcpv6_short", f"{len(buf)} bytes")
    msg_type = buf[0]
    xid = int.from_bytes(buf[1:4], "big")
    options: dict[int, bytes] = {}
    i = 4
    while i < len(buf):
        if i + 4 > len(buf):
            raise WireError("dhcpv6_option", "truncated option header")
        code, length = struct.unpack_from("!HH", buf, i)
        if i + 4 + length > len(buf):
            raise WireError("dhcpv6_option", f"option {code} runs past the end")
        options.setdefault(code, bytes(buf[i + 4 : i + 4 + length]))
        i += 4 + length
    return Dhcpv6Message(msg_type, xid, options)


def emit(msg: Dhcpv6Message) -> bytes:
    out = bytes([msg.msg_type]) + msg.transaction_id.to_bytes(3, "big")
    for code, value in msg.options.items():
        out += struct.pack("!HH", code, len(value)) + value
    return out


def duid_ll(mac: bytes) -> bytes:
    """DUID based on a link-layer address (type 3, hardware type Ethernet)."""
    return struct.pack("!HH", 3, 1) + mac
