"""UDP proxy: one host socket per guest source (address, port), unconnected, so replies
from any peer come back, as in slirp. Idle flows expire (240 s, slirp's value).

Destinations are translated by the stack's policy (gateway -> host loopback);
replies are translated back (host loopback -> gateway) before they reach the guest.

With the C path (netstack/udp/fastpath.py, `fast`), a flow that has sent a datagram is
held by C, which then moves its datagrams to that destination and its replies; this
module still opens, expires, evicts and closes every flow.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from netstack.log import get_logger
from netstack.stack.guest_output import GuestOutput
from netstack.stack.hostio import DatagramSocket, HostAddr, HostIO
from netstack.stack.stats import Stats
from netstack.stack.timers import TimerQueue
from netstack.tcp.interfaces import Refusal
from netstack.wire import icmpv4

if TYPE_CHECKING:
    from netstack.udp.fastpath import UdpFastPath

log = get_logger(__name__)

IDLE_TIMEOUT = 240.0
MAX_FLOWS = 1024

UdpTarget = HostAddr | Refusal | None


class UdpFlow:
    def __init__(
        self, proxy: UdpProxy, guest_mac: bytes, guest_ip: bytes, guest_port: int, now: float
    ) -> None:
        self.proxy = proxy
        self.guest_mac = guest_mac
        self.guest_ip = guest_ip
        self.guest_port = guest_port
        self.last_activity = now
        self.sock: DatagramSocket | None = None
        self.closed = False
        self.fast: Any = None  # its struct ns_udp_flow while C holds it
        self.datagrams_from_guest_in_c = 0  # as of the last sync
        self.datagrams_to_guest_in_c = 0

    @property
    def deadline(self) -> float | None:
        return None if self.closed else self.last_activity + self.proxy.idle_timeout

    def on_timer(self, now: float) -> None:
        if self.proxy.fast is not None:
            self.proxy.fast.sync(self)  # C stamps the activity it saw
        if now >= self.last_activity + self.proxy.idle_timeout:
            self.proxy.expire(self)

    def on_datagram(self, data: bytes, addr: HostAddr, now: float) -> None:
        src = self.proxy.virtual_source(addr)
        if src is None:
            self.proxy.stats.drop("udp_reply_unmapped")
            return
        self.last_activity = now
        self.proxy.output.send_udp(
            self.guest_mac, src, addr[1], self.guest_ip, self.guest_port, data
        )
        self.proxy.stats.count("udp_datagrams_to_guest")


class UdpProxy:
    def __init__(
        self,
        host: HostIO,
        output: GuestOutput,
        stats: Stats,
        timers: TimerQueue,
        resolve: Callable[[bytes, int], UdpTarget],
        virtual_source: Callable[[HostAddr], bytes | None],
        max_flows: int = MAX_FLOWS,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.idle_timeout = idle_timeout
        self.host = host
        self.output = output
        self.stats = stats
        self.timers = timers
        self.resolve = resolve
        self.virtual_source = virtual_source
        self.max_flows = max_flows
        # least recently used first: a guest opening more flows than allowed pushes out
        # its own idlest one, not a newcomer
        self.flows: OrderedDict[tuple[bytes, int], UdpFlow] = OrderedDict()
        self.fast: UdpFastPath | None = None

    def from_guest(
        self,
        guest_mac: bytes,
        src: bytes,
        sport: int,
        dst: bytes,
        dport: int,
        payload: memoryview,
        quote: bytes,
        now: float,
    ) -> None:
        target = self.resolve(dst, dport)
        if target is None:
            self.stats.drop("udp_destination_dropped")
            return
        if isinstance(target, Refusal):
            code = (
                icmpv4.CODE_PORT_UNREACHABLE
                if target is Refusal.RESET
                else icmpv4.CODE_NET_UNREACHABLE
            )
            self.output.send_icmp_error(guest_mac, icmpv4.TYPE_DEST_UNREACHABLE, code, quote)
            return
        flow = self.flows.get((src, sport))
        fresh = flow is None
        if flow is None:
            if len(self.flows) >= self.max_flows:
                self.stats.drop("udp_flow_evicted")
                self.expire(self._least_recently_used())
            flow = UdpFlow(self, guest_mac, src, sport, now)
            try:
                flow.sock = self.host.open_udp(flow, target[0])
            except OSError as e:
                log.warning("udp: cannot open a host socket: %s", e)
                self.stats.drop("udp_socket_error")
                return
            self.flows[(src, sport)] = flow
            self.stats.count("udp_flows_opened")
        else:
            self.flows.move_to_end((src, sport))
        flow.last_activity = now
        assert flow.sock is not None
        try:
            flow.sock.sendto(payload, target)
        except OSError as e:
            self.stats.drop("udp_send_error")
            log.debug("udp sendto %s: %s", target, e)
            if fresh:  # nothing sent, nothing to wait for: the socket goes now
                self.expire(flow)
            else:
                self.timers.touch(flow)
            return
        self.stats.count("udp_datagrams_from_guest")
        self.timers.touch(flow)
        if self.fast is not None:
            self.fast.hold(flow, dst, dport, target)

    def _least_recently_used(self) -> UdpFlow:
        """The flow idle longest (C's activity counts: its flows do not move in the
        order Python keeps)."""
        if self.fast is None or not self.fast.held:
            return next(iter(self.flows.values()))
        for flow in self.fast.held.values():
            self.fast.sync(flow)
        return min(self.flows.values(), key=lambda f: f.last_activity)

    def route_opened(self, guest_ip: bytes, guest_port: int) -> None:
        """A forwarded port's route now starts at (guest_ip, guest_port): its frames
        must meet the route lookup in Python, so C gives the flow back."""
        flow = self.flows.get((guest_ip, guest_port))
        if flow is not None and self.fast is not None:
            self.fast.release(flow)

    def sync(self) -> None:
        """Bring every held flow's activity and counts up to date (for reading)."""
        if self.fast is not None:
            for flow in self.fast.held.values():
                self.fast.sync(flow)

    def expire(self, flow: UdpFlow) -> None:
        flow.closed = True
        if self.fast is not None:
            self.fast.release(flow)  # before its socket closes
        if flow.sock is not None:
            flow.sock.close()
            flow.sock = None
        self.flows.pop((flow.guest_ip, flow.guest_port), None)
        self.timers.forget(flow)
        self.stats.count("udp_flows_closed")

    def close_all(self) -> None:
        for flow in list(self.flows.values()):
            self.expire(flow)
