"""What the host's parts need of the runtime that drives them, as interfaces: the
host sockets and listeners (SocketRegistry). The runtime (runtime.py) supplies them."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, Protocol

from netstack.host.loop import EventHandler
from netstack.stack.dispatch import Stack


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
