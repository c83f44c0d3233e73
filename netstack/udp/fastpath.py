"""Hand-over of established UDP flows to the C path (csrc/udp.c).

The proxy (netstack/udp/proxy.py) stays the policy: it opens a flow's host socket and
resolves each destination. Once a datagram has gone out, the flow is *held*: C gets
its socket, the guest's MAC and the destination as the guest addressed it with the
host address the policy gave. From then on C sends the guest's datagrams to that
destination itself and reads the socket's replies; a datagram to any other
destination still comes to Python (which moves the cached destination to it). Replies
C cannot send (an unknown source, larger than the MTU) come back in order through
`after_call`, to the flow's own `on_datagram`.

C counts datagrams and stamps the flow's last activity; `sync` copies them into the
flow (expiry, eviction, the API read them) and `counters` feeds the stack's stats.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from netstack.stack.config import HOST6, PREFIX6, NetworkConfig
from netstack.stack.hostio import DatagramSocket, HostAddr

if TYPE_CHECKING:
    from netstack.tcp.fastpath import FastPath

_V4_MAPPED = bytes(10) + b"\xff\xff"  # C keys IPv4 addresses as ::ffff:a.b.c.d
# A held socket's receive buffer (the kernel caps it at net.core.rmem_max): C is woken
# per datagram and may wait for a core while a host peer sends on; the default 208 KiB
# (about 90 datagrams of 1400 bytes) overflows there, measurably.
RECEIVE_BUFFER = 2 << 20


def sockaddr(family: int, addr: HostAddr) -> bytes | None:
    """struct sockaddr_in / sockaddr_in6 for addr, or None if addr is not of family."""
    try:
        packed = socket.inet_pton(family, addr[0])
    except (OSError, ValueError):
        return None
    port = addr[1].to_bytes(2, "big")
    fam = family.to_bytes(2, "little")
    if family == socket.AF_INET:
        return fam + port + packed + bytes(8)
    return fam + port + bytes(4) + packed + bytes(4)


class UdpFlow(Protocol):
    """What the hand-over reads and writes of a proxy's flow (udp/proxy.py UdpFlow)."""

    guest_mac: bytes
    guest_ip: bytes
    guest_port: int
    last_activity: float
    sock: DatagramSocket | None
    fast: Any  # its struct ns_udp_flow while C holds it
    datagrams_from_guest_in_c: int
    datagrams_to_guest_in_c: int

    def on_datagram(self, data: bytes, addr: HostAddr, now: float) -> None: ...


class UdpFastPath:
    """The UDP part of a C context (FastPath): held flows by slot."""

    def __init__(
        self,
        path: FastPath,
        config: NetworkConfig,
        mtu: int,
        max_flows: int,
        routes: Mapping[tuple[bytes, int, bytes, int], object],
    ) -> None:
        self.ffi = path.ffi
        self.lib = path.lib
        self.ctx = path.ctx
        if self.lib.ns_udp_new(self.ctx, max_flows, path.by_fd_cap) < 0:
            raise MemoryError("UDP flow path")
        u = self.ctx.udp
        u.gateway_ip = config.gateway
        u.host6_ip = HOST6
        u.net4 = config.network  # how a forward's client looks to the guest
        u.mask4 = config.netmask
        u.prefix6 = PREFIX6.network_address.packed[:8]
        u.host_loopback = int(config.host_loopback)
        u.mtu = mtu
        self.u: Any = u
        # forwarded ports' routes back (Stack.udp_routes_to_host): a guest port with one
        # stays in Python, where the route is looked up first
        self.routes = routes
        self.held: dict[int, UdpFlow] = {}  # slot -> flow
        # a forward's listener read in C: slot -> the listener's taker of what C leaves
        self.listeners: dict[int, Callable[[bytes, HostAddr, float], None]] = {}
        self.holds = 0

    def hold(self, flow: UdpFlow, dst: bytes, dport: int, target: HostAddr) -> None:
        """After Python sent a datagram of flow to (dst, dport), resolved to target: C
        takes the flow's next datagrams to that destination (and the socket's replies)."""
        sock = getattr(flow.sock, "sock", None)
        if sock is None:
            return
        addr = sockaddr(sock.family, target)
        if addr is None:
            return
        c = flow.fast
        if c is None:
            if any(k[0] == flow.guest_ip and k[1] == flow.guest_port for k in self.routes):
                return
            v6 = len(flow.guest_ip) == 16
            if v6 != (sock.family == socket.AF_INET6):
                return
            key = flow.guest_ip if v6 else _V4_MAPPED + flow.guest_ip
            c = self.lib.ns_udp_open(self.ctx, sock.fileno(), key, flow.guest_port, v6)
            if c == self.ffi.NULL:
                return  # full, or an fd beyond the table: Python keeps it
            c.guest_mac = flow.guest_mac
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            c.last_activity = flow.last_activity
            flow.fast = c
            self.held[int(c.slot)] = flow
            self.holds += 1
        c.dst_ip = dst if len(dst) == 16 else _V4_MAPPED + dst
        c.dst_port = dport
        c.host_addr = addr
        c.host_addr_len = len(addr)

    def hold_route(
        self,
        listener: socket.socket,
        key: tuple[bytes, int, bytes, int],
        guest_mac: bytes,
        client: HostAddr,
        now: float,
    ) -> Any:
        """A port forward's route (key: the guest's address and port, the client as the
        guest sees it): C sends the guest's datagrams on it to the client from the
        listener (csrc/udp.c ns_udp_route_open). Its struct, or None (full, or a client
        of another family: Python keeps it)."""
        addr = sockaddr(listener.family, client)
        if addr is None:
            return None
        guest_ip, guest_port, remote_ip, remote_port = key
        v6 = len(guest_ip) == 16
        c = self.lib.ns_udp_route_open(
            self.ctx,
            listener.fileno(),
            guest_ip if v6 else _V4_MAPPED + guest_ip,
            guest_port,
            remote_ip if v6 else _V4_MAPPED + remote_ip,
            remote_port,
            v6,
        )
        if c == self.ffi.NULL:
            return None
        c.guest_mac = guest_mac
        c.host_addr = addr
        c.host_addr_len = len(addr)
        c.last_activity = now
        return c

    def hold_listener(
        self,
        sock: socket.socket,
        guest_ip: bytes,
        guest_port: int,
        take: Callable[[bytes, HostAddr, float], None],
    ) -> Any:
        """C reads a UDP forward's listener (sock, to guest_ip:guest_port): each
        client's datagrams go to the guest by its route (hold_route); what C leaves (a
        client without a route yet) comes to take(data, client, now), in order. Its
        struct, or None (C could not take it: Python reads it)."""
        v6 = len(guest_ip) == 16
        key = guest_ip if v6 else _V4_MAPPED + guest_ip
        c = self.lib.ns_udp_listener_open(self.ctx, sock.fileno(), key, guest_port, v6)
        if c == self.ffi.NULL:
            return None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self.listeners[int(c.slot)] = take
        return c

    def release_listener(self, c: Any) -> None:
        """C no longer reads the listener (before its fd closes)."""
        self.listeners.pop(int(c.slot), None)
        self.lib.ns_udp_close(self.ctx, c)

    def release_route(self, c: Any) -> float:
        """Take a route back; returns when C last sent on it."""
        last = float(c.last_activity)
        self.lib.ns_udp_close(self.ctx, c)
        return last

    def release(self, flow: UdpFlow) -> None:
        """Take flow back (it is closing, or a forwarded port's route now needs it)."""
        c = flow.fast
        if c is None:
            return
        self.sync(flow)
        self.held.pop(int(c.slot), None)
        self.lib.ns_udp_close(self.ctx, c)
        flow.fast = None

    def sync(self, flow: UdpFlow) -> None:
        """Copy C's view of a held flow (last activity, counts) into it."""
        c = flow.fast
        if c is None:
            return
        flow.last_activity = max(flow.last_activity, float(c.last_activity))
        flow.datagrams_from_guest_in_c = int(c.datagrams_to_host)
        flow.datagrams_to_guest_in_c = int(c.datagrams_to_guest)

    def after_call(self, now: float) -> None:
        """Datagrams C read from held sockets and left to Python, in order. Run it
        right after ns_host_poll, before other handlers: a flow released meanwhile
        would lose them."""
        u = self.u
        n = int(u.npy)
        if not n:
            return
        ffi = self.ffi
        try:
            for i in range(n):
                e = u.py[i]
                flow = self.held.get(int(e.slot))
                take = flow.on_datagram if flow is not None else self.listeners.get(int(e.slot))
                if take is None:
                    continue  # released since
                addr = bytes(ffi.buffer(e.addr))
                if e.family == socket.AF_INET:
                    host = socket.inet_ntop(socket.AF_INET, addr[:4])
                else:
                    host = socket.inet_ntop(socket.AF_INET6, addr)
                data = bytes(ffi.buffer(u.py_buf + e.off, e.len))
                take(data, (host, int(e.port)), now)
        finally:
            self.lib.ns_udp_python_done(self.ctx)

    def counters(self) -> dict[str, int]:
        """What C counted, under the proxy's stats names."""
        u = self.u
        return {
            "udp_datagrams_from_guest": int(u.datagrams_to_host),
            "udp_datagrams_to_guest": int(u.datagrams_to_guest),
        }

    def drops(self) -> dict[str, int]:
        return {"udp_send_error": int(self.u.send_errors)}

    def snapshot(self) -> dict[str, int]:
        u = self.u
        return {
            "udp_flows_held": len(self.held),
            "udp_holds": self.holds,
            "udp_forward_routes_in_c": int(u.nroutes),
            "udp_forward_listeners_in_c": len(self.listeners),
            "udp_datagrams_to_host_from_c": int(u.datagrams_to_host),
            "udp_datagrams_to_guest_from_c": int(u.datagrams_to_guest),
            "udp_gso_sends": int(u.gso_sends),
            "udp_gso_frames_to_guest": int(u.gso_frames_to_guest),
            "udp_gso_frames_from_guest": int(u.gso_frames_from_guest),
            "udp_gro_reads_from_host": int(u.gro_reads),
        }
