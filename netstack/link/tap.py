"""The TAP link: open /dev/net/tun as a TAP (IFF_VNET_HDR when the kernel allows it,
with checksum, TSO and USO offloads on), and move frames through its fd.

`open_tap` runs inside the target namespace (in the short-lived child, see
netstack.cli.nsenter); `TapLink` wraps the fd the child passes back.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from netstack.link.base import VNET_HEADROOM, LinkClosed
from netstack.log import get_logger

log = get_logger(__name__)

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNSETVNETLE = 0x400454DC

IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_USO4 = 0x20  # UDP segmentation offload (kernel 6.2+): a guest's UDP_SEGMENT
TUN_F_USO6 = 0x40  # writes reach us as one frame
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6

_IFREQ = struct.Struct("16sH22x")


def open_tap(name: str, want_vnet: bool = True) -> tuple[int, bool]:
    """Open or attach to TAP `name` in the current namespace; (fd, vnet in use)."""
    if len(name.encode()) >= 16:
        raise ValueError(f"TAP name too long: {name!r}")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        vnet_on = False
        if want_vnet:
            try:
                fcntl.ioctl(
                    fd, TUNSETIFF, _IFREQ.pack(name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
                )
                vnet_on = True
            except OSError as e:
                log.info("TAP %s: IFF_VNET_HDR refused (%s); plain frames", name, e.strerror)
        if not vnet_on:
            fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), IFF_TAP | IFF_NO_PI))
        if vnet_on:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HEADROOM))
            try:
                fcntl.ioctl(fd, TUNSETVNETLE, struct.pack("i", 1))
            except OSError:
                pass  # little-endian hosts use LE by default; big-endian ones are not supported
            try:
                set_offloads(fd)
            except OSError as e:
                log.info("TAP %s: offloads refused (%s)", name, e.strerror)
        return fd, vnet_on
    except BaseException:
        os.close(fd)
        raise


def set_offloads(fd: int) -> None:
    """Checksum, TCP and, where the kernel has it, UDP segmentation offloads."""
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS | TUN_F_USO4 | TUN_F_USO6)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS)  # before 6.2: no USO


TUNGETIFF = 0x800454D2


def inherited_tap(fd: int) -> tuple[int, bool]:
    """--netns-type=tapfd: a TAP fd opened by someone else; whether it carries
    virtio-net headers is read back from its flags (and offloads enabled if so)."""
    try:
        res = fcntl.ioctl(fd, TUNGETIFF, bytes(40))
    except OSError as e:
        raise OSError(e.errno, f"fd {fd} is not a TAP: {e.strerror}") from None
    flags = struct.unpack_from("H", res, 16)[0]
    if not flags & IFF_TAP:
        raise OSError(0, f"fd {fd} is a TUN, not a TAP")
    vnet_on = bool(flags & IFF_VNET_HDR)
    if vnet_on:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HEADROOM))
        try:
            set_offloads(fd)
        except OSError:
            pass
    return fd, vnet_on


class TapLink:
    """A TAP fd in non-blocking mode."""

    def __init__(self, fd: int, mtu: int, vnet_enabled: bool) -> None:
        self.fd = fd
        self.mtu = mtu
        self.vnet = vnet_enabled
        os.set_blocking(fd, False)
        self._plain_read_zero = bytes(VNET_HEADROOM)

    def fileno(self) -> int:
        return self.fd

    def read_into(self, buf: bytearray) -> int:
        try:
            if self.vnet:
                return os.readv(self.fd, (buf,))
            n = os.readv(self.fd, (memoryview(buf)[VNET_HEADROOM:],))
            buf[:VNET_HEADROOM] = self._plain_read_zero
            return n + VNET_HEADROOM
        except BlockingIOError:
            return 0
        except InterruptedError:
            return 0
        except OSError as e:
            if e.errno in (errno.EBADFD, errno.EBADF, errno.EIO, errno.ENXIO, errno.ENODEV):
                raise LinkClosed(e.strerror) from e
            raise

    def write(self, frame: memoryview) -> None:
        try:
            os.write(self.fd, frame if self.vnet else frame[VNET_HEADROOM:])
        except (BlockingIOError, InterruptedError):
            pass  # the TAP queue is full: a dropped frame, as on any link
        except OSError as e:
            if e.errno in (errno.EBADFD, errno.EBADF, errno.EIO, errno.ENXIO, errno.ENODEV):
                raise LinkClosed(e.strerror) from e
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
