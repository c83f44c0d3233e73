"""Host datagram sockets (UDP, ICMP echo) for the UDP proxy, the DNS forwarder and the
ping proxy. Level-triggered: each wakeup reads a bounded number of datagrams.

A UDP socket that one wakeup finds GRO_AFTER datagrams on asks for coalesced reads
(UDP_GRO): a host peer's GSO send (a QUIC server's UDP_SEGMENT writes), or a run of one
peer's datagrams a NIC's GRO merged, then arrives as one read of many datagrams of one
size (the last may be shorter), with that size in a control message. `read_datagrams`
splits it, as csrc/udp_to_guest.c does in C (which asks by the same rule: csrc/udp.h
GRO_AFTER says why not every socket at once)."""

from __future__ import annotations

import select
import socket
import struct
from typing import Any

from netstack.host.interfaces import SocketRegistry
from netstack.stack.hostio import DatagramReceiver, HostAddr
from netstack.stack.stats import Stats

READS_PER_WAKEUP = 64
READ_SIZE = 65536  # a datagram, or a coalesced read (at most 64 KiB)
GRO_AFTER = 16  # datagrams in one wakeup before a socket asks for coalesced reads
UDP_GRO = 104  # linux/udp.h (Linux 5.0+); Python's socket module does not name it
_GRO_CONTROL = socket.CMSG_SPACE(4)
_INT = struct.Struct("=i")


def enable_gro(sock: socket.socket) -> None:
    """Ask for coalesced reads on a UDP socket; a kernel without UDP_GRO reads one
    datagram at a time, as before."""
    try:
        sock.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
    except OSError:
        pass


def read_datagrams(sock: socket.socket, stats: Stats) -> tuple[list[bytes], Any]:
    """One read of a UDP socket: its datagrams (one, or a coalesced read's, counted in
    stats) and the peer. Raises what recvmsg raises."""
    data, ancillary, flags, addr = sock.recvmsg(READ_SIZE, _GRO_CONTROL)
    size = 0
    if not flags & socket.MSG_CTRUNC:
        for level, kind, value in ancillary:
            if level == socket.SOL_UDP and kind == UDP_GRO and len(value) >= _INT.size:
                size = _INT.unpack_from(value)[0]
    if 0 < size < len(data):
        stats.count("udp_gro_reads_from_host")
        return [data[i : i + size] for i in range(0, len(data), size)], addr
    return [data], addr


class HostDatagram:
    def __init__(
        self, runtime: SocketRegistry, owner: DatagramReceiver, family: int, proto: int
    ) -> None:
        self.runtime = runtime
        self.owner = owner
        self.sock: socket.socket | None = socket.socket(
            family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK, proto
        )
        self.udp = proto == socket.IPPROTO_UDP
        self.gro = False  # asked for coalesced reads (C may have asked while it held it)
        try:
            runtime.bind_outbound(self.sock, family)
            runtime.register(self.sock.fileno(), select.EPOLLIN, self)
        except BaseException:
            self.sock.close()
            raise

    def on_events(self, events: int, now: float) -> None:
        for reads in range(READS_PER_WAKEUP):
            sock = self.sock
            if sock is None:
                return
            if reads == GRO_AFTER and self.udp and not self.gro:
                self.gro = True
                enable_gro(sock)
            try:
                if self.udp:
                    datagrams, addr = read_datagrams(sock, self.runtime.stack.stats)
                else:
                    data, addr = sock.recvfrom(READ_SIZE)
                    datagrams = [data]
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error queued on the socket (port unreachable...)
            for data in datagrams:
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
