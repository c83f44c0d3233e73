"""Host listeners for port forwards. A TCP connection accepted on the host becomes a
connection the stack opens toward the guest; a UDP client gets a route (its source as
the guest sees it) that lives while it is used.

The guest sees the real client address; clients on the host's loopback (or an
unspecified or clashing address) appear as the gateway, as with slirp4netns.

With the C loop, an IPv4 TCP listener's connections are accepted in C once it knows the
guest's MAC (csrc/flow_forward.c, the twin of `take`); the first connection, and any C
leaves, come here.
"""

from __future__ import annotations

import ipaddress
import select
import socket
from typing import TYPE_CHECKING, Any

from netstack.forward.rules import ForwardRule
from netstack.host.datagrams import enable_gro, read_datagrams
from netstack.host.interfaces import SocketRegistry
from netstack.host.streams import HostTcpStream
from netstack.log import get_logger
from netstack.stack.config import HOST6, NetworkConfig
from netstack.stack.policy import is_martian6
from netstack.tcp.connection import TcpConnection
from netstack.tcp.output import FlowAddrs

if TYPE_CHECKING:
    from netstack.tcp.fastpath import FastPath

log = get_logger(__name__)

ACCEPTS_PER_WAKEUP = 64
LISTEN_BACKLOG = 128
UDP_ROUTE_IDLE = 240.0
UDP_ROUTES_PER_FORWARD = 1024
UNKNOWN_MAC = bytes(6)


def client_as_seen_by_guest(config: NetworkConfig, addr: str, guest_v6: bool = False) -> bytes:
    """The source address the guest sees for a host client: the client's own address
    when the guest can be told it (same family, not loopback, not clashing with the
    virtual network), else the gateway (10.0.2.2 or fd00::2)."""
    stand_in = HOST6 if guest_v6 else config.gateway
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return stand_in
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    packed = ip.packed
    if guest_v6 != (len(packed) == 16):
        return stand_in
    if len(packed) == 4:
        if packed[0] in (0, 127) or config.in_network(packed):
            return stand_in
        return packed
    if is_martian6(packed) or config.in_prefix6(packed):
        return stand_in
    return packed


def _listen_socket(kind: int, host_addr: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host_addr else socket.AF_INET
    sock = socket.socket(family, kind | socket.SOCK_NONBLOCK)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # "::" is IPv6 only
    return sock


class TcpForwardListener:
    def __init__(self, runtime: SocketRegistry, rule: ForwardRule) -> None:
        self.runtime = runtime
        self.rule = rule
        self.guest_ip = ipaddress.ip_address(rule.guest_addr).packed
        sock = _listen_socket(socket.SOCK_STREAM, rule.host_addr)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((rule.host_addr, rule.host_port))
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        self.sock: socket.socket | None = sock
        runtime.register(sock.fileno(), select.EPOLLIN, self)
        # C accepts (csrc/flow_forward.c) once it knows the guest's MAC; until then, and
        # whatever C leaves, comes here
        fast = runtime.stack.tcp.fastpath
        self.fast: FastPath | None = None
        if (
            fast is not None
            and sock.family == socket.AF_INET
            and fast.listen(sock.fileno(), self.guest_ip, rule.guest_port, self._left_by_c)
        ):
            self.fast = fast
            mac = runtime.stack.neighbours.mac_of(self.guest_ip)
            if mac is not None:
                fast.listener_mac(sock.fileno(), mac)

    def on_events(self, events: int, now: float) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            if self.sock is None:
                return
            try:
                client, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.info("forward %d: accept: %s", self.rule.id, e)
                return
            self.take(client, addr[0], addr[1], now)

    def _left_by_c(self, client_fd: int, now: float) -> None:
        """A connection C accepted and left (its fd beyond C's table)."""
        client = socket.socket(fileno=client_fd)
        try:
            host, port = client.getpeername()[:2]
        except OSError:  # gone already
            client.close()
            return
        self.take(client, host, port, now)

    def take(self, client: socket.socket, host: str, port: int, now: float) -> None:
        """An accepted connection: SYN the guest (or close it when the table refuses)."""
        stack = self.runtime.stack
        remote = client_as_seen_by_guest(stack.config, host, len(self.guest_ip) == 16)
        flow = FlowAddrs(UNKNOWN_MAC, self.guest_ip, self.rule.guest_port, remote, port)

        def make_host(conn: TcpConnection) -> HostTcpStream:
            return HostTcpStream(self.runtime, conn, [], accepted=client)

        conn = stack.tcp.open_to_guest(flow, make_host, now)
        if conn is None:
            client.close()
        elif self.fast is not None and self.sock is not None and conn.flow.guest_mac != UNKNOWN_MAC:
            self.fast.listener_mac(self.sock.fileno(), conn.flow.guest_mac)

    def close(self) -> None:
        if self.sock is not None:
            if self.fast is not None:
                self.fast.unlisten(self.sock.fileno())
            self.runtime.unregister(self.sock.fileno())
            self.sock.close()
            self.sock = None


class UdpRoute:
    """One UDP client of a forward: guest replies go back to it from the listener."""

    def __init__(
        self, listener: UdpForwardListener, client: tuple[str, int], remote: bytes, now: float
    ) -> None:
        self.listener = listener
        self.client = client
        self.remote = remote  # the client's address as the guest sees it
        self.last_activity = now
        self.closed = False
        self.fast: Any = None  # its struct ns_udp_flow while C sends the guest's datagrams

    @property
    def key(self) -> tuple[bytes, int, bytes, int]:
        return (self.listener.guest_ip, self.listener.rule.guest_port, self.remote, self.client[1])

    @property
    def deadline(self) -> float | None:
        return None if self.closed else self.last_activity + UDP_ROUTE_IDLE

    def on_timer(self, now: float) -> None:
        if self.fast is not None:  # the guest's datagrams C sent count too
            self.last_activity = max(self.last_activity, float(self.fast.last_activity))
        if now >= self.last_activity + UDP_ROUTE_IDLE:
            self.listener.drop_route(self)

    def to_client(self, payload: memoryview, now: float) -> None:
        sock = self.listener.sock
        if sock is None:
            return
        self.last_activity = now
        try:
            sock.sendto(payload, self.client)
        except OSError as e:
            log.debug("forward %d: sendto %s: %s", self.listener.rule.id, self.client, e)


class UdpForwardListener:
    def __init__(self, runtime: SocketRegistry, rule: ForwardRule) -> None:
        self.runtime = runtime
        self.rule = rule
        self.guest_ip = ipaddress.ip_address(rule.guest_addr).packed
        sock = _listen_socket(socket.SOCK_DGRAM, rule.host_addr)
        enable_gro(sock)  # a forward lives long: coalesced reads at once (datagrams.py)
        try:
            sock.bind((rule.host_addr, rule.host_port))
        except OSError:
            sock.close()
            raise
        self.sock: socket.socket | None = sock
        self.routes: dict[tuple[str, int], UdpRoute] = {}
        runtime.register(sock.fileno(), select.EPOLLIN, self)
        # C reads it (csrc/udp_to_guest.c) when it can: clients with a route in C go
        # to the guest there, the others come to `take`
        fast = runtime.stack.udp.fast
        self.read_in_c: Any = None  # its struct ns_udp_flow while C reads it
        if fast is not None:
            self.read_in_c = fast.hold_listener(sock, self.guest_ip, rule.guest_port, self.take)

    def on_events(self, events: int, now: float) -> None:
        for _ in range(64):
            if self.sock is None:
                return
            try:
                datagrams, addr = read_datagrams(self.sock, self.runtime.stack.stats)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            for data in datagrams:
                self.take(data, addr, now)

    def take(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        """A client's datagram (read here or left by C): to the guest by its route."""
        stack = self.runtime.stack
        if self.sock is None:
            return
        client = (addr[0], addr[1])
        route = self.routes.get(client)
        if route is None:
            if len(self.routes) >= UDP_ROUTES_PER_FORWARD:
                stack.stats.drop("udp_forward_route_limit")
                return
            remote = client_as_seen_by_guest(stack.config, addr[0], len(self.guest_ip) == 16)
            route = UdpRoute(self, client, remote, now)
            if route.key in stack.udp_routes_to_host:
                stack.stats.drop("udp_forward_tuple_busy")
                return
            self.routes[client] = route
            stack.udp_routes_to_host[route.key] = route
            stack.udp.route_opened(route.key[0], route.key[1])
        route.last_activity = now
        stack.timers.touch(route)
        self._to_guest(route, data)

    def _to_guest(self, route: UdpRoute, data: bytes) -> None:
        stack = self.runtime.stack
        mac = stack.guest_mac_for(self.guest_ip, lambda: self._to_guest(route, data))
        if mac is None:
            return  # sent once the guest answers ARP
        stack.output.send_udp(
            mac, route.remote, route.client[1], self.guest_ip, self.rule.guest_port, data
        )
        stack.stats.count("udp_forward_datagrams_to_guest")
        fast = stack.udp.fast
        if route.fast is None and fast is not None and self.sock is not None and not route.closed:
            # the guest's answers go to the client from C now (csrc/udp.c)
            route.fast = fast.hold_route(
                self.sock, route.key, mac, route.client, route.last_activity
            )

    def drop_route(self, route: UdpRoute) -> None:
        fast = self.runtime.stack.udp.fast
        if route.fast is not None and fast is not None:
            fast.release_route(route.fast)
            route.fast = None
        route.closed = True
        self.routes.pop(route.client, None)
        stack = self.runtime.stack
        if stack.udp_routes_to_host.get(route.key) is route:
            del stack.udp_routes_to_host[route.key]
        stack.timers.forget(route)

    def close(self) -> None:
        for route in list(self.routes.values()):
            self.drop_route(route)
        fast = self.runtime.stack.udp.fast
        if self.read_in_c is not None and fast is not None:
            fast.release_listener(self.read_in_c)  # before its fd closes
            self.read_in_c = None
        if self.sock is not None:
            self.runtime.unregister(self.sock.fileno())
            self.sock.close()
            self.sock = None
