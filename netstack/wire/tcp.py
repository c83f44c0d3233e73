"""TCP header (RFC 9293) and the options a proxy needs: MSS, window scale (RFC 7323),
SACK-permitted and SACK blocks (RFC 2018), timestamps (RFC 7323).

Unknown options are skipped by their length; a malformed option list (a length that
runs past the header, or below 2) rejects the segment.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from netstack.wire import WireError

HEADER = struct.Struct("!HHIIBBHHH")
_TS = struct.Struct("!II")
HEADER_LEN = 20
MAX_HEADER_LEN = 60

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

OPT_END = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERMITTED = 4
OPT_SACK = 5
OPT_TIMESTAMP = 8

MAX_WSCALE = 14  # RFC 7323 section 2.3

CHECKSUM_OFFSET = 16


class TcpOptions(NamedTuple):
    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    ts_val: int | None = None
    ts_ecr: int = 0


NO_OPTIONS = TcpOptions()


class TcpHeader(NamedTuple):
    src_port: int
    dst_port: int
    seq: int
    ack: int
    header_len: int  # data offset in bytes
    flags: int
    window: int  # raw 16-bit field, unscaled
    urgent: int
    options: TcpOptions


def parse(buf: bytes | bytearray | memoryview) -> TcpHeader:
    """Parse header and options; the payload is buf[header_len:]."""
    if len(buf) < HEADER_LEN:
        raise WireError("tcp_short", f"{len(buf)} bytes")
    sport, dport, seq, ack, off, flags, window, _csum, urg = HEADER.unpack_from(buf)
    hlen = (off >> 4) * 4
    if hlen < HEADER_LEN or hlen > len(buf):
        raise WireError("tcp_header_len", f"data offset {hlen}, buffer {len(buf)}")
    if hlen == HEADER_LEN:
        opts = NO_OPTIONS
    elif (
        hlen == HEADER_LEN + 12
        and buf[20] == OPT_NOP
        and buf[21] == OPT_NOP
        and buf[22] == OPT_TIMESTAMP
        and buf[23] == 10
    ):
        # what Linux puts on every segment of a timestamped connection: one unpack
        ts_val, ts_ecr = _TS.unpack_from(buf, 24)
        opts = TcpOptions(ts_val=ts_val, ts_ecr=ts_ecr)
    else:
        opts = parse_options(buf[HEADER_LEN:hlen])
    return TcpHeader(sport, dport, seq, ack, hlen, flags, window, urg, opts)


def parse_options(buf: bytes | bytearray | memoryview) -> TcpOptions:
    mss = wscale = ts_val = None
    ts_ecr = 0
    sack_ok = False
    blocks: list[tuple[int, int]] = []
    i, n = 0, len(buf)
    while i < n:
        kind = buf[i]
        if kind == OPT_END:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            raise WireError("tcp_option", f"option {kind} truncated")
        length = buf[i + 1]
        if length < 2 or i + length > n:
            raise WireError("tcp_option", f"option {kind} length {length}")
        if kind == OPT_MSS and length == 4:
            mss = buf[i + 2] << 8 | buf[i + 3]
        elif kind == OPT_WSCALE and length == 3:
            wscale = min(buf[i + 2], MAX_WSCALE)
        elif kind == OPT_SACK_PERMITTED and length == 2:
            sack_ok = True
        elif kind == OPT_TIMESTAMP and length == 10:
            ts_val, ts_ecr = struct.unpack_from("!II", buf, i + 2)
        elif kind == OPT_SACK and (length - 2) % 8 == 0:
            for j in range(i + 2, i + length, 8):
                blocks.append(struct.unpack_from("!II", buf, j))
        i += length
    return TcpOptions(mss, wscale, sack_ok, tuple(blocks), ts_val, ts_ecr)


def options_len(opts: TcpOptions) -> int:
    """Bytes `emit_options` writes for opts (a multiple of 4)."""
    n = 0
    if opts.mss is not None:
        n += 4
    if opts.wscale is not None:
        n += 4  # NOP + 3
    if opts.sack_permitted:
        n += 4  # NOP NOP + 2, or folded into the timestamp's padding
    if opts.ts_val is not None:
        n += 12 if not opts.sack_permitted else 8  # SACK_PERM fills the NOP NOP
    if opts.sack_blocks:
        n += 4 + 8 * len(opts.sack_blocks)  # NOP NOP kind len + blocks
    return n


def emit_options(opts: TcpOptions, buf: bytearray | memoryview, offset: int) -> int:
    """Write options in the layout Linux uses; returns bytes written."""
    i = offset
    if opts.mss is not None:
        struct.pack_into("!BBH", buf, i, OPT_MSS, 4, opts.mss)
        i += 4
    if opts.sack_permitted and opts.ts_val is not None:
        struct.pack_into(
            "!BBBBII", buf, i, OPT_SACK_PERMITTED, 2, OPT_TIMESTAMP, 10, opts.ts_val, opts.ts_ecr
        )
        i += 12
    elif opts.ts_val is not None:
        struct.pack_into(
            "!BBBBII", buf, i, OPT_NOP, OPT_NOP, OPT_TIMESTAMP, 10, opts.ts_val, opts.ts_ecr
        )
        i += 12
    elif opts.sack_permitted:
        struct.pack_into("!BBBB", buf, i, OPT_NOP, OPT_NOP, OPT_SACK_PERMITTED, 2)
        i += 4
    if opts.wscale is not None:
        struct.pack_into("!BBBB", buf, i, OPT_NOP, OPT_WSCALE, 3, opts.wscale)
        i += 4
    if opts.sack_blocks:
        struct.pack_into("!BBBB", buf, i, OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(opts.sack_blocks))
        i += 4
        for left, right in opts.sack_blocks:
            struct.pack_into("!II", buf, i, left, right)
            i += 8
    return i - offset


def emit(hdr: TcpHeader, buf: bytearray | memoryview, offset: int = 0) -> int:
    """Write the header and its options with a zero checksum; returns header length.

    hdr.header_len is ignored: the length follows from the options. The caller fills
    the checksum (full, or the pseudo-header sum when the link offloads it).
    """
    olen = emit_options(hdr.options, buf, offset + HEADER_LEN) if hdr.options != NO_OPTIONS else 0
    hlen = HEADER_LEN + olen
    HEADER.pack_into(
        buf,
        offset,
        hdr.src_port,
        hdr.dst_port,
        hdr.seq & 0xFFFFFFFF,
        hdr.ack & 0xFFFFFFFF,
        (hlen // 4) << 4,
        hdr.flags,
        hdr.window,
        0,
        hdr.urgent,
    )
    return hlen


def seq_lt(a: int, b: int) -> bool:
    """a precedes b in 32-bit sequence space."""
    return ((a - b) & 0xFFFFFFFF) > 0x7FFFFFFF


def seq_le(a: int, b: int) -> bool:
    return a == b or seq_lt(a, b)


def seq_diff(a: int, b: int) -> int:
    """a - b in sequence space, as a signed number."""
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d > 0x7FFFFFFF else d
