"""--outbound-addr / --outbound-addr6: the host address outgoing sockets bind to, given
as an address or an interface name (its first address of that family)."""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

SIOCGIFADDR = 0x8915


def ipv4_of_interface(name: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError as e:
            raise ValueError(f"interface {name}: no IPv4 address ({e.strerror})") from None
    return socket.inet_ntoa(res[20:24])


def ipv6_of_interface(name: str) -> str:
    """The interface's first global IPv6 address (from /proc/net/if_inet6)."""
    try:
        with open("/proc/net/if_inet6") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ValueError(f"interface {name}: {e.strerror}") from None
    for line in lines:
        fields = line.split()
        if len(fields) == 6 and fields[5] == name and fields[3] == "00":  # scope global
            return str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
    raise ValueError(f"interface {name}: no global IPv6 address")


def resolve(value: str | None, family: int) -> str | None:
    """An address for value (an address or an interface name), or None."""
    if value is None:
        return None
    try:
        if family == socket.AF_INET:
            return str(ipaddress.IPv4Address(value))
        return str(ipaddress.IPv6Address(value))
    except ValueError:
        pass
    return ipv4_of_interface(value) if family == socket.AF_INET else ipv6_of_interface(value)
