"""Where a service bound in a container listens on the host: --publish-addr, at a port
from --port-range (any free port without one)."""

from __future__ import annotations

import errno
import ipaddress
import random
import socket

from netstack.directory import sockaddr as sa


def bind(sock: socket.socket, host: str, port_range: tuple[int, int] | None) -> None:
    if port_range is None:
        sock.bind(sa.host_tuple(sock.family, host, 0))
        return
    lo, hi = port_range
    count = hi - lo + 1
    start = random.randrange(count)  # spread: a port just freed is not the next one
    for i in range(count):
        try:
            sock.bind(sa.host_tuple(sock.family, host, lo + (start + i) % count))
            return
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRINUSE, f"no free port in {lo}-{hi}")


def from_here(peer_ip: str, publish_host: str) -> bool:
    """Whether a connection to a published service comes from this host (so it may be
    one of our clients' host sockets) rather than from another host's."""
    try:
        ip = ipaddress.ip_address(peer_ip.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or str(ip) == publish_host
