"""What the host's parts need of the runtime that drives them, as interfaces: the
host sockets and listeners (SocketRegistry), the API's report (StatsSources) and the
C paths' set-up (CPathsHost). The runtime (runtime.py) supplies them."""

from __future__ import annotations

import select
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from netstack.dns.fastpath import DnsFastPath, DnsHost
from netstack.forward.rules import Forwards
from netstack.host.loop import EpollLoop, EventHandler
from netstack.stack.dispatch import Stack
from netstack.tcp.fastpath import FastPath
from netstack.udp.fastpath import UdpFastPath

if TYPE_CHECKING:
    import asyncio

    from netstack.directory.client import DirectoryClient


class SocketRegistry(Protocol):
    """Where a host socket (streams.py, datagrams.py) or a forward's listener
    (listeners.py) joins the loop: the epoll, callbacks soon, the time, the stack."""

    @property
    def stack(self) -> Stack: ...

    def register(self, fd: int, events: int, handler: EventHandler) -> None: ...

    def registered_in_c(self, fd: int, handler: EventHandler) -> None:
        """fd is in the epoll already (C added it): its events go to handler."""
        ...

    def unregister(self, fd: int) -> None: ...

    def bind_outbound(self, sock: socket.socket, family: int) -> None: ...

    def soon(self, fn: Callable[..., Any], *args: Any) -> None: ...

    def now(self) -> float: ...


class StatsSources(Protocol):
    """What the API's report (report.py) reads: the stack, the C paths, the forwards,
    the start time and the directory client."""

    @property
    def stack(self) -> Stack: ...

    @property
    def fastpath(self) -> FastPath | None: ...

    @property
    def udp_fast(self) -> UdpFastPath | None: ...

    @property
    def dns_fast(self) -> DnsFastPath | None: ...

    @property
    def started(self) -> float: ...

    @property
    def forwards(self) -> Forwards: ...

    @property
    def directory_client(self) -> DirectoryClient | None: ...


class CPathsHost(DnsHost, Protocol):
    """What the C paths' set-up (cpaths.py) reads of the runtime and sets on it: the
    C paths it builds, whether the loop waits in C, and the epoll host sockets join
    (the loop's own when the loop waits in C). The DNS path's host (DnsHost) too."""

    fastpath: FastPath | None
    udp_fast: UdpFastPath | None
    dns_fast: DnsFastPath | None
    c_loop: bool
    epoll: select.epoll

    @property
    def stack(self) -> Stack: ...

    @property
    def loop(self) -> EpollLoop | asyncio.AbstractEventLoop: ...

    @property
    def rx_buf(self) -> bytearray: ...

    @property
    def outbound(self) -> dict[int, str | None]: ...
