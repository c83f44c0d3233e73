"""ICMP echo to other hosts through unprivileged ICMP datagram sockets.

The kernel owns the echo identifier of such a socket, so one socket serves one
(guest, identifier, destination) and replies get the guest's identifier back. Where
net.ipv4.ping_group_range forbids these sockets, the log says so once and the guest
gets "communication administratively prohibited" for each echo, never silence.
"""

from __future__ import annotations

import errno
import socket
import struct

from netstack.log import get_logger
from netstack.stack.guest_output import GuestOutput
from netstack.stack.hostio import DatagramSocket, HostAddr, HostIO
from netstack.stack.stats import Stats
from netstack.stack.timers import TimerQueue
from netstack.wire import icmpv4, icmpv6

log = get_logger(__name__)

IDLE_TIMEOUT = 60.0
MAX_FLOWS = 256


class PingFlow:
    def __init__(
        self,
        proxy: PingProxy,
        guest_mac: bytes,
        guest_ip: bytes,
        ident: int,
        dst: bytes,
        now: float,
    ) -> None:
        self.proxy = proxy
        self.guest_mac = guest_mac
        self.guest_ip = guest_ip
        self.ident = ident
        self.dst = dst
        self.last_activity = now
        self.sock: DatagramSocket | None = None
        self.closed = False

    @property
    def deadline(self) -> float | None:
        return None if self.closed else self.last_activity + IDLE_TIMEOUT

    def on_timer(self, now: float) -> None:
        if now >= self.last_activity + IDLE_TIMEOUT:
            self.proxy.expire(self)

    def on_datagram(self, data: bytes, addr: HostAddr, now: float) -> None:
        try:
            hdr = icmpv4.parse(data)
        except ValueError:
            return
        v6 = len(self.dst) == 16
        if hdr.type != (icmpv6.TYPE_ECHO_REPLY if v6 else icmpv4.TYPE_ECHO_REPLY):
            return
        self.last_activity = now
        if v6:
            body = struct.pack("!HH", self.ident, hdr.seq) + data[icmpv4.HEADER_LEN :]
            self.proxy.output.send_icmp6(
                self.guest_mac, self.dst, self.guest_ip, icmpv6.TYPE_ECHO_REPLY, 0, body
            )
            self.proxy.stats.count("icmp_echo_replies_proxied")
            return
        self.proxy.output.send_icmp(
            self.guest_mac,
            self.dst,
            self.guest_ip,
            icmpv4.IcmpHeader(icmpv4.TYPE_ECHO_REPLY, 0, self.ident, hdr.seq),
            data[icmpv4.HEADER_LEN :],
        )
        self.proxy.stats.count("icmp_echo_replies_proxied")


class PingProxy:
    def __init__(
        self,
        host: HostIO,
        output: GuestOutput,
        stats: Stats,
        timers: TimerQueue,
        max_flows: int = MAX_FLOWS,
    ) -> None:
        self.max_flows = max_flows
        self.host = host
        self.output = output
        self.stats = stats
        self.timers = timers
        self.flows: dict[tuple[bytes, int, bytes], PingFlow] = {}
        self.forbidden_logged = False

    def from_guest(
        self,
        guest_mac: bytes,
        src: bytes,
        dst: bytes,
        hdr: icmpv4.IcmpHeader,
        payload: memoryview,
        quote: bytes,
        now: float,
    ) -> None:
        key = (src, hdr.ident, dst)
        flow = self.flows.get(key)
        fresh = flow is None
        if flow is None:
            if len(self.flows) >= self.max_flows:
                self.stats.drop("icmp_flow_limit")
                return
            flow = PingFlow(self, guest_mac, src, hdr.ident, dst, now)
            try:
                flow.sock = self.host.open_ping(flow, _ntop(dst))
            except OSError as e:
                self._refuse(guest_mac, quote, e)
                return
            self.flows[key] = flow
        flow.last_activity = now
        msg = bytearray(icmpv4.HEADER_LEN + len(payload))
        request = icmpv6.TYPE_ECHO_REQUEST if len(dst) == 16 else icmpv4.TYPE_ECHO_REQUEST
        # the kernel fills in the identifier (and, for ICMPv6, the checksum)
        icmpv4.emit(icmpv4.IcmpHeader(request, 0, 0, hdr.seq), payload, msg)
        assert flow.sock is not None
        try:
            flow.sock.sendto(msg, (_ntop(dst), 0))
        except OSError as e:
            self.stats.drop("icmp_send_error")
            code = (
                icmpv4.CODE_NET_UNREACHABLE
                if e.errno == errno.ENETUNREACH
                else icmpv4.CODE_HOST_UNREACHABLE
            )
            self.output.send_icmp_error(guest_mac, icmpv4.TYPE_DEST_UNREACHABLE, code, quote)
            if fresh:  # nothing sent, nothing to wait for: the socket goes now
                self.expire(flow)
            else:
                self.timers.touch(flow)
            return
        self.stats.count("icmp_echo_proxied")
        self.timers.touch(flow)

    def _refuse(self, guest_mac: bytes, quote: bytes, e: OSError) -> None:
        if e.errno in (errno.EACCES, errno.EPERM):
            if not self.forbidden_logged:
                log.warning(
                    "ping: ICMP datagram sockets are not allowed for this group "
                    "(sysctl net.ipv4.ping_group_range); guest pings to other hosts "
                    "get 'administratively prohibited'"
                )
                self.forbidden_logged = True
            self.stats.drop("icmp_forbidden")
        else:
            log.info("ping: cannot open an ICMP socket: %s", e)
            self.stats.drop("icmp_socket_error")
        self.output.send_icmp_error(
            guest_mac, icmpv4.TYPE_DEST_UNREACHABLE, icmpv4.CODE_ADMIN_PROHIBITED, quote
        )

    def expire(self, flow: PingFlow) -> None:
        flow.closed = True
        if flow.sock is not None:
            flow.sock.close()
            flow.sock = None
        self.flows.pop((flow.guest_ip, flow.ident, flow.dst), None)
        self.timers.forget(flow)

    def close_all(self) -> None:
        for flow in list(self.flows.values()):
            self.expire(flow)


def _ntop(ip: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(ip) == 16 else socket.AF_INET, ip)
