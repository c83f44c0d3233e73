"""Where a guest connection to a directory VIP goes (--directory), sans-I/O.

A VIP is never a host address: a guest SYN to an address in the VIP blocks is routed
by the directory view or refused, never forwarded to the address itself.
  known VIP, port served, an instance allowed -> that instance's host:host_port,
                                                 taking turns among the allowed ones
  known VIP, port not served yet              -> the SYN waits, unanswered, for a view
  (also: no view yet, or a VIP that resolve      that serves it, at most `wait` seconds
  just gave out and no view has shown yet)
  unknown VIP, labels denied, wait timed out  -> RST (as if nobody listened)
UDP and ICMP to a VIP are dropped. Each outcome is counted in the stack's stats.
Before netstackd's first view the blocks are the protocol's defaults. This module
does no I/O: the view comes from DirectoryNames, time as `now`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from netstack.directory.view import Instance, Labels, Route, View
from netstack.stack.hostio import DirectoryNames, HostAddr
from netstack.stack.stats import Stats
from netstack.stack.timers import TimerQueue
from netstack.tcp.interfaces import Refusal

WAIT_DEFAULT = 10.0
MAX_WAITING = 1024  # SYNs held at once; beyond, the oldest is refused (a flood's bound)

_DEFAULT_VIEW = View()

Decided = Callable[[list[HostAddr] | Refusal, float], None]


@dataclass(frozen=True)
class DirectorySettings:
    """--directory and friends, as the stack takes them."""

    names: DirectoryNames
    client_labels: Labels = field(default_factory=dict)  # empty: zone=default
    wait: float = WAIT_DEFAULT


class VipWait:
    """A guest SYN to a VIP that waits for an instance (a LaterTarget)."""

    def __init__(self, routes: VipRoutes, vip: bytes, port: int) -> None:
        self.routes = routes
        self.vip = vip
        self.port = port
        self.decided: Decided | None = None
        self._deadline: float | None = None

    @property
    def deadline(self) -> float | None:
        return self._deadline

    def then(self, decided: Decided, now: float) -> None:
        routes = self.routes
        while len(routes.waiting) >= MAX_WAITING:
            routes.stats.drop("directory_wait_evicted")
            next(iter(routes.waiting)).finish(Refusal.RESET, now)
        self.decided = decided
        self._deadline = now + routes.wait
        routes.waiting[self] = None
        routes.timers.touch(self)
        routes.stats.count("directory_waits")

    def on_timer(self, now: float) -> None:
        if self._deadline is not None and now >= self._deadline:
            self.routes.stats.drop("directory_wait_timeout")
            self.finish(Refusal.RESET, now)

    def finish(self, target: list[HostAddr] | Refusal, now: float) -> None:
        decided = self.decided
        self.decided = None
        self._deadline = None
        self.routes.timers.forget(self)
        self.routes.waiting.pop(self, None)
        if decided is not None:
            decided(target, now)


class VipRoutes:
    def __init__(self, settings: DirectorySettings, stats: Stats, timers: TimerQueue) -> None:
        self.names = settings.names
        self.client_labels = settings.client_labels
        self.wait = settings.wait
        self.stats = stats
        self.timers = timers
        self.waiting: dict[VipWait, None] = {}  # oldest first

    @property
    def view(self) -> View:
        return self.names.view or _DEFAULT_VIEW

    def in_block(self, ip: bytes) -> bool:
        return self.view.in_vip_block(ip)

    def dropped(self, reason: str) -> None:
        """A datagram to a VIP (UDP, ICMP): never forwarded."""
        self.stats.drop(reason)

    def tcp_target(self, vip: bytes, port: int) -> list[HostAddr] | Refusal | VipWait:
        decision = self._decide(vip, port)
        return VipWait(self, vip, port) if decision is None else decision

    def _decide(self, vip: bytes, port: int) -> list[HostAddr] | Refusal | None:
        """Host addresses, a refusal (counted), or None: wait for a newer view."""
        view = self.names.view
        if view is None:
            return None  # netstackd not heard from yet
        route = view.route(vip, port, self.client_labels)
        if isinstance(route, Instance):
            self.stats.count("directory_connects")
            return [(route.host, route.host_port)]
        if route is Route.WAIT or (route is Route.UNKNOWN and self.names.awaited(vip)):
            return None  # not served yet, or just resolved and not in a view yet
        self.stats.drop("directory_denied" if route is Route.DENIED else "directory_unknown_vip")
        return Refusal.RESET

    def view_changed(self, now: float) -> None:
        """A new view: connects that waited for it go on (or are refused)."""
        for w in list(self.waiting):
            decision = self._decide(w.vip, w.port)
            if decision is not None:
                w.finish(decision, now)
