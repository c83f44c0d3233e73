"""Host datagram sockets (UDP, ICMP echo) for the UDP proxy, the DNS forwarder and the
ping proxy. Level-triggered: each wakeup reads a bounded number of datagrams."""

from __future__ import annotations

import select
import socket

from netstack.host.interfaces import SocketRegistry
from netstack.stack.hostio import DatagramReceiver, HostAddr

READS_PER_WAKEUP = 64
MAX_DATAGRAM = 65535


class HostDatagram:
    def __init__(
        self, runtime: SocketRegistry, owner: DatagramReceiver, family: int, proto: int
    ) -> None:
        self.runtime = runtime
        self.owner = owner
        self.sock: socket.socket | None = socket.socket(
            family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK, proto
        )
        try:
            runtime.bind_outbound(self.sock, family)
            runtime.register(self.sock.fileno(), select.EPOLLIN, self)
        except BaseException:
            self.sock.close()
            raise

    def on_events(self, events: int, now: float) -> None:
        for _ in range(READS_PER_WAKEUP):
            sock = self.sock
            if sock is None:
                return
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error queued on the socket (port unreachable...)
            self.owner.on_datagram(data, (addr[0], addr[1]), now)

    def sendto(self, data: bytes | bytearray | memoryview, addr: HostAddr) -> None:
        assert self.sock is not None
        self.sock.sendto(data, addr)

    def close(self) -> None:
        sock = self.sock
        if sock is None:
            return
        self.sock = None
        self.runtime.unregister(sock.fileno())
        sock.close()
