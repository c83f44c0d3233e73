"""What the guest-facing services ask of the host side. host/ implements it with real
sockets on the event loop; tests implement it with fakes. Nothing else in the stack
touches a host socket."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from netstack.tcp.connection import TcpConnection
from netstack.tcp.interfaces import HostStream

if TYPE_CHECKING:  # the directory's modules load with --directory only
    from netstack.directory.view import View

HostAddr = tuple[str, int]
# a directory name's (vip, vip6), packed; None when netstackd gave no answer
Resolved = tuple[bytes, bytes] | None


class DatagramReceiver(Protocol):
    def on_datagram(self, data: bytes, addr: HostAddr, now: float) -> None: ...


class DatagramSocket(Protocol):
    def sendto(self, data: bytes | bytearray | memoryview, addr: HostAddr) -> None: ...
    def close(self) -> None: ...


class HostIO(Protocol):
    def connect_tcp(self, conn: TcpConnection, targets: list[HostAddr], now: float) -> HostStream:
        """Start a non-blocking connect to the first target (the next on failure)."""
        ...

    def adopt_tcp(self, conn: TcpConnection, fd: int) -> HostStream:
        """The host stream on a socket the C flow path connected (csrc/flow_syn.c)."""
        ...

    def open_udp(self, owner: DatagramReceiver, family_of: str) -> DatagramSocket:
        """A UDP socket whose datagrams go to owner.on_datagram. Raises OSError."""
        ...

    def open_ping(self, owner: DatagramReceiver, dst: str) -> DatagramSocket:
        """An ICMP echo datagram socket connected to dst. Raises OSError (EACCES when
        net.ipv4.ping_group_range forbids it)."""
        ...

    def nameservers(self) -> list[str]:
        """The host resolver's nameservers, current as of at most a second ago."""
        ...

    def is_host_address(self, ip: bytes) -> bool:
        """Whether ip (IPv4) is one of the host's own addresses."""
        ...


class DirectoryNames(Protocol):
    """netstackd as the stack sees it (--directory): the newest view and `resolve`."""

    @property
    def view(self) -> View | None:
        """The newest view from `watch`; None before the first one."""
        ...

    def resolve_then(self, name: str, done: Callable[[Resolved], None]) -> None:
        """Ask netstackd to resolve name (reserving a VIP); done runs later, in the
        loop, with the answer or None (unreachable, timed out, refused)."""
        ...

    def awaited(self, vip: bytes) -> bool:
        """vip came from resolve, and no view has shown it yet."""
        ...
