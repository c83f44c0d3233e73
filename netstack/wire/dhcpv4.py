"""DHCPv4 (RFC 2131/2132): the BOOTP fixed part and the options list."""

from __future__ import annotations

import struct
from typing import NamedTuple

from netstack.wire import WireError

# op htype hlen hops xid secs flags ciaddr yiaddr siaddr giaddr chaddr(16) sname(64) file(128)
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
HEADER_LEN = 236
MAGIC = b"\x63\x82\x53\x63"

SERVER_PORT = 67
CLIENT_PORT = 68

OP_REQUEST = 1
OP_REPLY = 2
FLAG_BROADCAST = 0x8000

OPT_PAD = 0
OPT_SUBNET_MASK = 1
OPT_ROUTER = 3
OPT_DNS = 6
OPT_REQUESTED_IP = 50
OPT_LEASE_TIME = 51
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_END = 255

DISCOVER = 1
OFFER = 2
REQUEST = 3
DECLINE = 4
ACK = 5
NAK = 6
RELEASE = 7
INFORM = 8


class DhcpMessage(NamedTuple):
    op: int
    xid: int
    flags: int
    ciaddr: bytes
    yiaddr: bytes
    siaddr: bytes
    chaddr: bytes  # the 6-byte client MAC
    options: dict[int, bytes]

    @property
    def message_type(self) -> int | None:
        v = self.options.get(OPT_MESSAGE_TYPE)
        return v[0] if v else None


def parse(buf: bytes | bytearray | memoryview) -> DhcpMessage:
    if len(buf) < HEADER_LEN + len(MAGIC):
        raise WireError("dhcp_short", f"{len(buf)} bytes")
    op, htype, hlen, _hops, xid, _secs, flags, ci, yi, si, _gi, ch, _sn, _f = HEADER.unpack_from(
        buf
    )
    if htype != 1 or hlen != 6:
        raise WireError("dhcp_hardware", f"htype {htype} hlen {hlen}")
    if bytes(buf[HEADER_LEN : HEADER_LEN + 4]) != MAGIC:
        raise WireError("dhcp_magic")
    # a repeated option's values are concatenated (RFC 3396): gathered in lists and
    # joined once, so a message of many repeats costs linear time, not quadratic
    parts: dict[int, list[bytes | bytearray | memoryview]] = {}
    i, n = HEADER_LEN + 4, len(buf)
    while i < n:
        code = buf[i]
        if code == OPT_END:
            break
        if code == OPT_PAD:
            i += 1
            continue
        if i + 1 >= n or i + 2 + buf[i + 1] > n:
            raise WireError("dhcp_option", f"option {code} runs past the end")
        length = buf[i + 1]
        parts.setdefault(code, []).append(buf[i + 2 : i + 2 + length])
        i += 2 + length
    options = {code: b"".join(values) for code, values in parts.items()}
    return DhcpMessage(op, xid, flags, ci, yi, si, bytes(ch[:6]), options)


def emit(msg: DhcpMessage, server_ip: bytes) -> bytes:
    """Serialise a reply; options are written in key order, then END."""
    head = HEADER.pack(
        msg.op,
        1,
        6,
        0,
        msg.xid,
        0,
        msg.flags,
        msg.ciaddr,
        msg.yiaddr,
        msg.siaddr,
        b"\0" * 4,
        msg.chaddr.ljust(16, b"\0"),
        b"",
        b"",
    )
    opts = bytearray(MAGIC)
    for code, value in msg.options.items():
        opts += bytes((code, len(value))) + value
    opts.append(OPT_END)
    out = head + bytes(opts)
    return out.ljust(300, b"\0")  # BOOTP minimum message size (RFC 1542)
