"""Where a guest packet may go on the host, and how host addresses look to the guest.

Outbound (virtual -> host):
  gateway (N+2)       -> host 127.0.0.1, same port; refused as "network unreachable"
                         with --disable-host-loopback
  DNS (N+3), port 53  -> the host resolver's nameservers; other ports refused;
                         with --disable-dns, dropped (never forwarded anywhere)
  rest of the subnet, loopback, unspecified, multicast, broadcast, reserved
                      -> dropped
  directory VIPs      -> TCP: the directory's instance (stack/vips.py); UDP, ICMP:
                         dropped (with --directory only)
  IPv6 with an IPv4 address inside (NAT64 64:ff9b::/96 and 64:ff9b:1::/48, 6to4
  2002::/16, SIIT ::ffff:0:a.b.c.d, Teredo 2001::/32)
                      -> dropped when the IPv4 one would be (loopback, martian, the
                         subnet) or is the host's own; all of them dropped with
                         --disable-host-loopback; else itself
  anything else       -> itself
Inbound (host -> virtual): 127.0.0.1 -> gateway, everything else unchanged.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from netstack.stack.config import DNS6, HOST6, NetworkConfig
from netstack.stack.hostio import HostAddr
from netstack.tcp.interfaces import Refusal

if TYPE_CHECKING:  # the directory's modules load with --directory only
    from netstack.stack.vips import VipRoutes, VipWait

DNS_PORT = 53
HOST_LOOPBACK = "127.0.0.1"
HOST_LOOPBACK6 = "::1"


def is_martian(ip: bytes) -> bool:
    """Addresses the guest may never reach through the stack."""
    a = ip[0]
    return (
        a == 0
        or a == 127
        or a >= 224  # this-network, loopback, multicast, reserved, broadcast
        or (a == 169 and ip[1] == 254)  # link-local: only meaningful on the host's own links
    )


def is_martian6(ip: bytes) -> bool:
    """IPv6 destinations the guest may never reach: unspecified, loopback, IPv4-mapped or
    -compatible (loopback in disguise), link-local, multicast, discard-only."""
    return (
        ip[:15] == bytes(15)  # :: and ::1
        or ip[:12] == bytes(10) + b"\xff\xff"  # ::ffff:0:0/96
        or ip[:12] == bytes(12)  # ::/96, IPv4-compatible
        or (ip[0] == 0xFE and ip[1] & 0xC0 == 0x80)
        or ip[0] == 0xFF
        or ip[:8] == bytes.fromhex("0100000000000000")
    )


_NAT64 = bytes.fromhex("0064ff9b0000000000000000")  # 64:ff9b::/96 (RFC 6052)
_NAT64_LOCAL = bytes.fromhex("0064ff9b0001")  # 64:ff9b:1::/48 (RFC 8215)
_SIIT = bytes(8) + b"\xff\xff\0\0"  # ::ffff:0:0/96, IPv4-translated (RFC 2765)
_SIX_TO_FOUR = b"\x20\x02"  # 2002::/16 (RFC 3056)
_TEREDO = bytes.fromhex("20010000")  # 2001::/32 (RFC 4380)


def embedded_ipv4(ip: bytes) -> tuple[bytes, ...]:
    """The IPv4 addresses an IPv6 address carries in a translation or tunnel format
    (a relay or translator on the host's side may turn it into that IPv4 address)."""
    if ip[:12] in (_NAT64, _SIIT):
        return (ip[12:],)
    if ip[:6] == _NAT64_LOCAL:  # a /48: the IPv4 address around the "u" octet
        return (ip[6:8] + ip[9:11],)
    if ip[:2] == _SIX_TO_FOUR:
        return (ip[2:6],)
    if ip[:4] == _TEREDO:  # the server, and the client's (obfuscated) address
        return (ip[4:8], bytes(b ^ 0xFF for b in ip[12:]))
    return ()


def _ntop(ip: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(ip) == 16 else socket.AF_INET, ip)


class Policy:
    def __init__(
        self,
        config: NetworkConfig,
        nameservers: Callable[[], list[str]],
        vips: VipRoutes | None = None,
        is_host_address: Callable[[bytes], bool] = lambda ip: False,
    ) -> None:
        self.config = config
        self.nameservers = nameservers
        self.vips = vips
        self.is_host_address = is_host_address  # an IPv4 address of the host's own

    def is_vip(self, ip: bytes) -> bool:
        """A directory VIP (--directory): never a host address."""
        return self.vips is not None and self.vips.in_block(ip)

    def _virtual(self, ip: bytes, port: int) -> list[HostAddr] | Refusal | None | bool:
        """Common part: a decision, or False for "not a virtual address"."""
        if len(ip) == 16:
            return self._virtual6(ip, port)
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

    def _virtual6(self, ip: bytes, port: int) -> list[HostAddr] | Refusal | None | bool:
        cfg = self.config
        if not cfg.ipv6:
            return None
        if ip == HOST6:
            if not cfg.host_loopback:
                return Refusal.NET_UNREACHABLE
            return [(HOST_LOOPBACK6, port)]
        if ip == DNS6:
            if not cfg.dns_enabled:
                return None
            if port != DNS_PORT:
                return Refusal.RESET
            servers = self.nameservers()  # IPv6 ones first, then IPv4 (an IPv4-only host)
            ordered = [s for s in servers if ":" in s] + [s for s in servers if ":" not in s]
            return [(s, DNS_PORT) for s in ordered] if ordered else Refusal.HOST_UNREACHABLE
        if is_martian6(ip) or cfg.in_prefix6(ip):
            return None
        embedded = embedded_ipv4(ip)
        if embedded and (
            not cfg.host_loopback
            or any(
                is_martian(v4) or cfg.in_network(v4) or self.is_host_address(v4)
                for v4 in embedded
            )
        ):
            return None
        return False

    def tcp_target(self, ip: bytes, port: int) -> list[HostAddr] | Refusal | VipWait | None:
        if self.vips is not None and self.vips.in_block(ip):
            return self.vips.tcp_target(ip, port)
        decision = self._virtual(ip, port)
        if decision is False:
            return [(_ntop(ip), port)]
        assert not isinstance(decision, bool)
        return decision

    def udp_target(self, ip: bytes, port: int) -> HostAddr | Refusal | None:
        """DNS queries never come here (the forwarder takes them)."""
        if self.vips is not None and self.vips.in_block(ip):
            self.vips.dropped("udp_to_vip")
            return None
        decision = self._virtual(ip, port)
        if decision is False:
            return (_ntop(ip), port)
        if isinstance(decision, list):
            return decision[0]
        assert not isinstance(decision, bool)
        return decision

    def virtual_source(self, addr: HostAddr) -> bytes | None:
        """The address the guest sees for a host peer."""
        host = addr[0]
        if host == HOST_LOOPBACK:
            return self.config.gateway if self.config.host_loopback else None
        if host == HOST_LOOPBACK6:
            return HOST6 if self.config.host_loopback else None
        if ":" in host:
            try:
                ip6 = ipaddress.IPv6Address(host.split("%", 1)[0])
            except ValueError:
                return None
            if ip6.ipv4_mapped is None:
                return None if is_martian6(ip6.packed) else ip6.packed
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
