"""What the host's parts need of the runtime that drives them, as interfaces: the
host sockets and listeners (SocketRegistry) and the API's report (StatsSources). The
runtime (runtime.py) supplies them."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from netstack.dns.fastpath import DnsFastPath
from netstack.forward.rules import Forwards
from netstack.host.loop import EventHandler
from netstack.stack.dispatch import Stack
from netstack.tcp.fastpath import FastPath
from netstack.udp.fastpath import UdpFastPath

if TYPE_CHECKING:
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
