"""The link endpoint interface the stack reads and writes frames through.

One convention for both directions: a frame buffer starts with VNET_HEADROOM bytes
holding a virtio-net header, then the Ethernet frame. A link whose TAP carries the
header (`vnet` true) moves those bytes as they are; a plain link skips them on write
and zeroes them on read. So the stack always finds a header in front of a frame, and
may ask for GSO or a partial checksum only where `vnet` is true.
"""

from __future__ import annotations

from typing import Protocol

from netstack.wire import vnet

VNET_HEADROOM = vnet.HEADER_LEN

# Room for the largest frame we read or write: header, Ethernet, a 64 KiB IP packet,
# and a VLAN tag's worth of slack (a frame that does not fit is truncated by read()).
FRAME_BUFFER_SIZE = VNET_HEADROOM + 14 + 65535 + 4


class LinkClosed(Exception):
    """The link went away (TAP deleted, namespace gone)."""


class LinkEndpoint(Protocol):
    mtu: int
    vnet: bool

    def fileno(self) -> int: ...

    def read_into(self, buf: bytearray) -> int:
        """Read one frame into buf (header at 0); its length incl. header, 0 if none."""
        ...

    def write(self, frame: memoryview) -> None:
        """Send one frame given with its VNET_HEADROOM header bytes in front."""
        ...

    def close(self) -> None: ...
