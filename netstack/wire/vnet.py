"""struct virtio_net_hdr: the 10-byte header a TAP opened with IFF_VNET_HDR puts before
every frame, in both directions. Little-endian (we set TUNSETVNETLE where the kernel
allows it; on little-endian hosts that is also the default).

flags NEEDS_CSUM: the L4 checksum field holds only the pseudo-header sum; finish it
from csum_start. gso_type/gso_size: a TCP super-segment, or a run of UDP datagrams
(GSO_UDP_L4), the receiver splits at gso_size. hdr_len is a hint and is never trusted on input.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from netstack.wire import WireError

HEADER = struct.Struct("<BBHHHH")
HEADER_LEN = 10

F_NEEDS_CSUM = 1
F_DATA_VALID = 2

GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5  # a UDP super-datagram: split at gso_size into datagrams (USO)
GSO_ECN = 0x80


class VnetHeader(NamedTuple):
    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0


PLAIN = VnetHeader()
PLAIN_BYTES = bytes(HEADER_LEN)


def parse(buf: bytes | bytearray | memoryview) -> VnetHeader:
    if len(buf) < HEADER_LEN:
        raise WireError("vnet_short", f"{len(buf)} bytes")
    return VnetHeader(*HEADER.unpack_from(buf))


def emit(hdr: VnetHeader, buf: bytearray | memoryview, offset: int = 0) -> int:
    HEADER.pack_into(buf, offset, *hdr)
    return HEADER_LEN
