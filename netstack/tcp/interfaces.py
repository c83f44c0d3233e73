"""What a TCP connection deals with: the host socket (HostStream) and the stack (Guest)
as interfaces, its states, and how a failed host connect is told to the guest."""

from __future__ import annotations

import enum
import errno
from collections.abc import Callable
from typing import Protocol


class HostStream(Protocol):
    """The host socket as the core sees it. Errors raise OSError."""

    def send(self, data: memoryview) -> int: ...  # bytes taken (0 if full)
    def send_space(self) -> int: ...
    def peek_into(self, buf: memoryview, offset: int) -> int | None: ...  # 0 = EOF, None = empty
    def discard(self, n: int) -> None: ...
    def shutdown_write(self) -> None: ...
    def connected_at_once(self) -> bool: ...  # the connect completed within connect()
    def close(self, reset: bool = False) -> None: ...

    @property
    def peer_closed(self) -> bool: ...  # the host peer's FIN (or a hang-up) has been seen


class TcpState(enum.Enum):
    CONNECTING = "connecting"
    SYN_SENT = "syn_sent"
    SYN_RECEIVED = "syn_received"
    ESTABLISHED = "established"
    TIME_WAIT = "time_wait"
    CLOSED = "closed"


class Refusal(enum.Enum):
    """How a failed host connect is reported to the guest."""

    RESET = "reset"
    NET_UNREACHABLE = "net_unreachable"
    HOST_UNREACHABLE = "host_unreachable"


class LaterTarget(Protocol):
    """A destination decided after the guest's SYN (a directory VIP whose service has
    no instance for the port yet): `then` arranges for decided(host addresses or a
    refusal, now) to run once, later; the SYN stays unanswered meanwhile."""

    def then(
        self, decided: Callable[[list[tuple[str, int]] | Refusal, float], None], now: float
    ) -> None: ...


def refusal_for_errno(err: int) -> Refusal:
    if err == errno.ECONNREFUSED:
        return Refusal.RESET
    if err == errno.EHOSTUNREACH:
        return Refusal.HOST_UNREACHABLE
    if err in (errno.ETIMEDOUT, errno.EHOSTDOWN):
        return Refusal.HOST_UNREACHABLE
    return Refusal.NET_UNREACHABLE


class Guest(Protocol):
    """What a connection needs from the stack beyond its segment writer."""

    def send_icmp_unreachable(self, code: int, quoted_ip_packet: bytes) -> None: ...

    def count_drop(self, reason: str) -> None: ...

    def guest_mac_for(
        self, ip: bytes, when_known: Callable[[], None] | None = None
    ) -> bytes | None:
        """The guest's MAC for ip; None after asking for it with ARP (when_known runs
        once the answer comes)."""
        ...
