"""DNS message header and question (RFC 1035). The stack forwards DNS, so it mostly
needs the header (id, flags, counts) and the first question (to match a reply to its
query); for directory names (--directory) it also writes a short authoritative reply
with address answers."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

from netstack.wire import WireError

HEADER = struct.Struct("!HHHHHH")
HEADER_LEN = 12
PORT = 53

FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080
OPCODE_MASK = 0x7800
RCODE_NOERROR = 0
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3

TYPE_A = 1
TYPE_AAAA = 28
CLASS_IN = 1

_QUESTION_TAIL = struct.Struct("!HH")  # qtype, qclass
_ANSWER = struct.Struct("!HHHIH")  # name pointer, type, class, ttl, rdlength
_POINTER_TO_QUESTION = 0xC000 | HEADER_LEN  # the first question's name


class Question(NamedTuple):
    name: str  # dotted, no trailing dot
    qtype: int
    qclass: int
    end: int  # offset just past the question


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


def question_name(buf: bytes | bytearray | memoryview) -> str:
    """The first question's name, dotted. Compression pointers are not allowed there."""
    return _name(buf)[0]


def question(buf: bytes | bytearray | memoryview) -> Question:
    """The first question: name, type, class and where it ends."""
    name, i = _name(buf)
    if i + _QUESTION_TAIL.size > len(buf):
        raise WireError("dns_question", "type and class run past the end")
    qtype, qclass = _QUESTION_TAIL.unpack_from(buf, i)
    return Question(name, qtype, qclass, i + _QUESTION_TAIL.size)


def reply(
    query: bytes | bytearray | memoryview,
    q: Question,
    rcode: int,
    answers: Sequence[tuple[int, int, bytes]] = (),
) -> bytes:
    """An authoritative reply to query's first question: (type, ttl, rdata) answers
    for the question's name, the query's id, opcode and RD echoed."""
    hdr = parse(query)
    flags = FLAG_QR | FLAG_AA | FLAG_RA | (hdr.flags & (OPCODE_MASK | FLAG_RD)) | rcode
    out = bytearray(HEADER.pack(hdr.ident, flags, 1, len(answers), 0, 0))
    out += bytes(query[HEADER_LEN : q.end])
    for rtype, ttl, rdata in answers:
        out += _ANSWER.pack(_POINTER_TO_QUESTION, rtype, CLASS_IN, ttl, len(rdata)) + rdata
    return bytes(out)


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


def _name(buf: bytes | bytearray | memoryview) -> tuple[str, int]:
    """The first question's name, dotted, and the offset just past it."""
    labels, end = _question_labels(buf)
    return ".".join(label.decode("ascii", "replace") for label in labels), end + 1


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
