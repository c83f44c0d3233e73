"""The virtual network's addresses, all derived from one CIDR as slirp4netns does:
network N, gateway N+2 (the host), DNS N+3, DHCP pool N+15..N+30, guest N+100."""

from __future__ import annotations

import ipaddress

DHCP_POOL_START = 15
DHCP_POOL_SIZE = 16
RECOMMENDED_GUEST = 100


def virtual_mac(ip: bytes) -> bytes:
    """slirp's MAC for a virtual host: 52:55 then the four IPv4 address bytes, or
    52:56 then the last four bytes of an IPv6 address."""
    if len(ip) == 16:
        return b"\x52\x56" + ip[12:]
    return b"\x52\x55" + ip


# IPv6 is fixed, as in slirp4netns (--cidr does not move it)
PREFIX6 = ipaddress.IPv6Network("fd00::/64")
HOST6 = ipaddress.IPv6Address("fd00::2").packed
DNS6 = ipaddress.IPv6Address("fd00::3").packed
ROUTER_LL = ipaddress.IPv6Address("fe80::2").packed
DNS_LL = ipaddress.IPv6Address("fe80::3").packed


DEFAULT_CIDR = ipaddress.IPv4Network("10.0.2.0/24")


class NetworkConfig:
    """Immutable. A plain class, not a dataclass: this module is on the start path,
    and importing dataclasses alone takes ~5 ms of a ~50 ms start (bench/startup)."""

    __slots__ = (
        "cidr",
        "mtu",
        "host_loopback",
        "dns_enabled",
        "ipv6",
        "network",
        "netmask",
        "gateway",
        "dns",
        "guest",
        "gateway_mac",
        "dns_mac",
        "_net_int",
        "_mask_int",
    )
    cidr: ipaddress.IPv4Network
    mtu: int
    host_loopback: bool
    dns_enabled: bool
    ipv6: bool
    network: bytes
    netmask: bytes
    gateway: bytes
    dns: bytes
    guest: bytes
    gateway_mac: bytes
    dns_mac: bytes
    _net_int: int
    _mask_int: int

    def __init__(
        self,
        cidr: ipaddress.IPv4Network = DEFAULT_CIDR,
        mtu: int = 1500,
        host_loopback: bool = True,
        dns_enabled: bool = True,
        ipv6: bool = False,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "cidr", cidr)
        set_(self, "mtu", mtu)
        set_(self, "host_loopback", host_loopback)
        set_(self, "dns_enabled", dns_enabled)
        set_(self, "ipv6", ipv6)
        base = int(self.cidr.network_address)
        set_(self, "network", self.cidr.network_address.packed)
        set_(self, "netmask", self.cidr.netmask.packed)
        set_(self, "gateway", ipaddress.IPv4Address(base + 2).packed)
        set_(self, "dns", ipaddress.IPv4Address(base + 3).packed)
        set_(self, "guest", ipaddress.IPv4Address(base + RECOMMENDED_GUEST).packed)
        set_(self, "gateway_mac", virtual_mac(self.gateway))
        set_(self, "dns_mac", virtual_mac(self.dns))
        set_(self, "_net_int", int(self.cidr.network_address))
        set_(self, "_mask_int", int(self.cidr.netmask))

    def _key(self) -> tuple[object, ...]:
        return (self.cidr, self.mtu, self.host_loopback, self.dns_enabled, self.ipv6)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"NetworkConfig is immutable: cannot set {name}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NetworkConfig) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"NetworkConfig(cidr={self.cidr!r}, mtu={self.mtu}, "
            f"host_loopback={self.host_loopback}, dns_enabled={self.dns_enabled}, "
            f"ipv6={self.ipv6})"
        )

    def dhcp_address(self, index: int) -> bytes:
        return ipaddress.IPv4Address(
            int(self.cidr.network_address) + DHCP_POOL_START + index
        ).packed

    def in_network(self, ip: bytes) -> bool:
        """ip (4 bytes) inside the CIDR; on the per-packet path, so plain integers."""
        return len(ip) == 4 and int.from_bytes(ip, "big") & self._mask_int == self._net_int

    @property
    def broadcast(self) -> bytes:
        return self.cidr.broadcast_address.packed

    @property
    def router_mac(self) -> bytes:
        return virtual_mac(HOST6)

    def in_prefix6(self, ip: bytes) -> bool:
        return ip[:8] == PREFIX6.network_address.packed[:8]
