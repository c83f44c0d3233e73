"""Where a guest packet may go on the host, and how host addresses look to the guest.

Outbound (virtual -> host):
  gateway (N+2)       -> host 127.0.0.1, same port; refused as "network unreachable"
                         with --disable-host-loopback
  DNS (N+3), port 53  -> the host resolver's nameservers; other ports refused;
                         with --disable-dns, dropped (never forwarded anywhere)
  rest of the subnet, loopback, unspecified, multicast, broadcast, reserved
                      -> dropped
  anything else       -> itself
Inbound (host -> virtual): 127.0.0.1 -> gateway, everything else unchanged.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from netstack.stack.config import NetworkConfig
from netstack.stack.hostio import HostAddr
from netstack.tcp.connection import Refusal

DNS_PORT = 53
HOST_LOOPBACK = "127.0.0.1"


def is_martian(ip: bytes) -> bool:
    """Addresses the guest may never reach through the stack."""
    a = ip[0]
    return (
        a == 0
        or a == 127
        or a >= 224  # this-network, loopback, multicast, reserved, broadcast
        or (a == 169 and ip[1] == 254)  # link-local: only meaningful on the host's own links
    )


class Policy:
    def __init__(self, config: NetworkConfig, nameservers: Callable[[], list[str]]) -> None:
        self.config = config
        self.nameservers = nameservers

    def _virtual(self, ip: bytes, port: int) -> list[HostAddr] | Refusal | None | bool:
        """Common part: a decision, or False for "not a virtual address"."""
        cfg = self.config
        if ip == cfg.gateway:
            if not cfg.host_loopback:
                return Refusal.NET_UNREACHABLE
            return [(HOST_LOOPBACK, port)]
        if ip == cfg.dns:
            if not cfg.dns_enabled:
                return None
            if port != DNS_PORT:
                return Refusal.RESET
            servers = self.nameservers()
            return [(s, DNS_PORT) for s in servers] if servers else Refusal.HOST_UNREACHABLE
        if is_martian(ip) or cfg.in_network(ip):
            return None
        return False

    def tcp_target(self, ip: bytes, port: int) -> list[HostAddr] | Refusal | None:
        decision = self._virtual(ip, port)
        if decision is False:
            return [(socket.inet_ntoa(ip), port)]
        assert not isinstance(decision, bool)
        return decision

    def udp_target(self, ip: bytes, port: int) -> HostAddr | Refusal | None:
        """DNS queries never come here (the forwarder takes them)."""
        decision = self._virtual(ip, port)
        if decision is False:
            return (socket.inet_ntoa(ip), port)
        if isinstance(decision, list):
            return decision[0]
        assert not isinstance(decision, bool)
        return decision

    def virtual_source(self, addr: HostAddr) -> bytes | None:
        """The address the guest sees for a host peer."""
        host = addr[0]
        if host == HOST_LOOPBACK:
            return self.config.gateway if self.config.host_loopback else None
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address):
            mapped = ip.ipv4_mapped
            if mapped is None:
                return None
            ip = mapped
        if ip.is_loopback:
            return None
        return ip.packed
