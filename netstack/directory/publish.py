"""Where a service bound in a container listens on the host: --publish-addr, at a port
from --port-range (any free port without one)."""

from __future__ import annotations

import errno
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
