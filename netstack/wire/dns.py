"""DNS message header and question (RFC 1035). The stack forwards DNS, so it only
needs the header (id, flags, counts), the first question (to match a reply to its
query) and, for logging, that question's name."""

from __future__ import annotations

import struct
from typing import NamedTuple

from netstack.wire import WireError

HEADER = struct.Struct("!HHHHHH")
HEADER_LEN = 12
PORT = 53

FLAG_QR = 0x8000
RCODE_SERVFAIL = 2


class DnsHeader(NamedTuple):
    ident: int
    flags: int
    qdcount: int
    ancount: int
    nscount: int
    arcount: int

    @property
    def is_response(self) -> bool:
        return bool(self.flags & FLAG_QR)


def parse(buf: bytes | bytearray | memoryview) -> DnsHeader:
    if len(buf) < HEADER_LEN:
        raise WireError("dns_short", f"{len(buf)} bytes")
    return DnsHeader(*HEADER.unpack_from(buf))


def emit(hdr: DnsHeader, buf: bytearray | memoryview, offset: int = 0) -> int:
    HEADER.pack_into(buf, offset, *hdr)
    return HEADER_LEN


def _question_labels(buf: bytes | bytearray | memoryview) -> tuple[list[bytes], int]:
    """The first question's name as labels, and the offset of its closing zero byte.
    Compression pointers are not allowed there."""
    labels: list[bytes] = []
    i = HEADER_LEN
    while True:
        if i >= len(buf):
            raise WireError("dns_name", "runs past the end")
        n = buf[i]
        if n == 0:
            return labels, i
        if n & 0xC0:
            raise WireError("dns_name", "pointer in question")
        if i + 1 + n > len(buf) or len(labels) >= 127:
            raise WireError("dns_name", "label runs past the end")
        labels.append(bytes(buf[i + 1 : i + 1 + n]))
        i += 1 + n


def question_name(buf: bytes | bytearray | memoryview) -> str:
    """The first question's name, dotted."""
    labels, _ = _question_labels(buf)
    return ".".join(label.decode("ascii", "replace") for label in labels)


def question_key(buf: bytes | bytearray | memoryview) -> bytes:
    """The first question as a key a reply must repeat: its name lowercased (servers
    may echo a 0x20-mixed case either way), then type and class. b"" when the message
    has no question."""
    if len(buf) < HEADER_LEN:
        raise WireError("dns_short", f"{len(buf)} bytes")
    if not HEADER.unpack_from(buf)[2]:
        return b""
    _, end = _question_labels(buf)
    if end + 5 > len(buf):
        raise WireError("dns_question", "type and class run past the end")
    return bytes(buf[HEADER_LEN : end + 1]).lower() + bytes(buf[end + 1 : end + 5])
