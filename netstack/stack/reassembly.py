"""IPv4 and IPv6 fragment reassembly, bounded: at most MAX_DATAGRAMS in progress,
MAX_PIECES fragments each, MAX_BYTES held in all (each piece charged PIECE_OVERHEAD on
top of its bytes, so tiny fragments cannot hold more than they are charged for),
REASSEMBLY_TIMEOUT seconds each. A fragment that is not the last must carry a non-empty
multiple of 8 bytes. Pieces are kept sorted by offset, so a new one is checked against
its two neighbours only; any overlap (the teardrop family) discards the whole datagram.
What does not fit is dropped and counted by the caller."""

from __future__ import annotations

from bisect import bisect_left

from netstack.wire import WireError, ipv4

MAX_DATAGRAMS = 64
MAX_BYTES = 1 << 20
# 64 > 52 = 65535 / 1280 + 1: a largest datagram cut at IPv6's minimum MTU still fits
MAX_PIECES = 64
PIECE_OVERHEAD = 96  # what holding a piece costs beyond its bytes (a bytes object, list slots)
REASSEMBLY_TIMEOUT = 30.0
MAX_PACKET = 65535

Key = tuple[bytes, bytes, int, int]  # src, dst, proto (0 for IPv6), ident


class _Partial:
    __slots__ = ("offsets", "pieces", "size", "charged", "total", "header", "expires")

    def __init__(self, expires: float) -> None:
        self.offsets: list[int] = []  # sorted; pieces[i] starts at offsets[i]
        self.pieces: list[bytes] = []
        self.size = 0  # payload bytes held
        self.charged = 0  # what they count against MAX_BYTES
        self.total: int | None = None  # payload length, known once the last fragment came
        self.header = b""  # the first fragment's IP header
        self.expires = expires


class Reassembler:
    def __init__(self) -> None:
        self.partials: dict[Key, _Partial] = {}
        self.held = 0

    def add(self, hdr: ipv4.Ipv4Header, packet: memoryview, now: float) -> bytes | None:
        """Take one fragment; returns the whole IP packet (header with no options, then
        the payload) once complete. Raises WireError on a fragment to drop."""
        key = (hdr.src, hdr.dst, hdr.proto, hdr.ident)
        offset = (hdr.flags_frag & ipv4.FRAG_OFFSET_MASK) * 8
        more = bool(hdr.flags_frag & ipv4.FLAG_MF)
        data = bytes(packet[hdr.ihl : hdr.total_length])
        done = self.add_piece(key, offset, more, data, bytes(packet[: ipv4.HEADER_LEN]), now)
        if done is None:
            return None
        head, payload = done
        return b"\x45" + head[1:] + payload  # the options, if any, stayed behind

    def add6(self, packet: memoryview, frag_at: int, end: int, now: float) -> bytes | None:
        """An IPv6 fragment whose fragment header sits right after the IPv6 header
        (frag_at == 40); returns the reassembled packet, extension-free."""
        if frag_at != 40:
            raise WireError("ipv6_fragment_after_extensions")
        nxt = packet[frag_at]
        off_flags = int.from_bytes(packet[frag_at + 2 : frag_at + 4], "big")
        ident = int.from_bytes(packet[frag_at + 4 : frag_at + 8], "big")
        key = (bytes(packet[8:24]), bytes(packet[24:40]), 0, ident)
        head = bytearray(packet[:40])
        head[6] = nxt
        done = self.add_piece(
            key,
            off_flags & 0xFFF8,
            bool(off_flags & 1),
            bytes(packet[frag_at + 8 : end]),
            bytes(head),
            now,
        )
        if done is None:
            return None
        head6, payload = done
        return head6[:4] + len(payload).to_bytes(2, "big") + head6[6:] + payload

    def add_piece(
        self, key: Key, offset: int, more: bool, data: bytes, header: bytes, now: float
    ) -> tuple[bytes, bytes] | None:
        """One fragment's data at offset; (first fragment's header, whole payload) once
        complete."""
        self._expire(now)
        if offset + len(data) > MAX_PACKET - ipv4.HEADER_LEN:
            raise WireError("ipv4_fragment_too_big")
        if more and not data:  # would cost a slot and nothing against MAX_BYTES
            raise WireError("ipv4_fragment_empty")
        if more and len(data) % 8:
            raise WireError("ipv4_fragment_unaligned")
        part = self.partials.get(key)
        if part is None:
            if len(self.partials) >= MAX_DATAGRAMS:
                raise WireError("ipv4_reassembly_full")
            part = self.partials[key] = _Partial(now + REASSEMBLY_TIMEOUT)
        cost = len(data) + PIECE_OVERHEAD
        if self.held + cost > MAX_BYTES or len(part.pieces) >= MAX_PIECES:
            self._discard(key)
            raise WireError("ipv4_reassembly_full")
        end = offset + len(data)
        offsets, pieces = part.offsets, part.pieces
        i = bisect_left(offsets, offset)
        if (i > 0 and offsets[i - 1] + len(pieces[i - 1]) > offset) or (
            i < len(offsets) and offsets[i] < end
        ):
            self._discard(key)
            raise WireError("ipv4_fragment_overlap")
        if not more:
            if part.total is not None or (pieces and offsets[-1] + len(pieces[-1]) > end):
                self._discard(key)
                raise WireError("ipv4_fragment_overlap")
            part.total = end
        elif part.total is not None and end > part.total:
            self._discard(key)
            raise WireError("ipv4_fragment_overlap")
        if offset == 0:
            part.header = header
        offsets.insert(i, offset)
        pieces.insert(i, data)
        part.size += len(data)
        part.charged += cost
        self.held += cost
        if part.total is None or part.size != part.total or not part.header:
            return None
        self._discard(key)
        return part.header, b"".join(pieces)

    def _discard(self, key: Key) -> None:
        part = self.partials.pop(key, None)
        if part is not None:
            self.held -= part.charged

    def _expire(self, now: float) -> None:
        if not self.partials:
            return
        for key in [k for k, p in self.partials.items() if p.expires <= now]:
            self._discard(key)
