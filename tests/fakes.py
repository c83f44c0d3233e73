"""Fakes for driving the stack without sockets: a host stream, a HostIO, and helpers
to feed scapy-built frames in and read the stack's frames back as scapy packets."""

from __future__ import annotations

import errno
from collections.abc import Callable

from scapy.layers.l2 import Ether

from netstack.directory.view import View
from netstack.link.memory import MemoryLink
from netstack.stack.config import NetworkConfig
from netstack.stack.dispatch import Stack
from netstack.stack.hostio import DatagramReceiver, HostAddr, Resolved
from netstack.stack.limits import Limits
from netstack.stack.vips import DirectorySettings
from netstack.tcp.connection import TcpConnection
from netstack.wire import vnet

GUEST_MAC = "02:00:00:00:00:01"
GW_MAC = "52:55:0a:00:02:02"


class FakeStream:
    def __init__(self) -> None:
        self.written = bytearray()  # what the guest sent to the host
        self.to_guest = bytearray()  # what the host has for the guest (unacknowledged)
        self.eof = False
        self.space = 1 << 20
        self.accept_limit: int | None = None  # take at most this much per send()
        self.shut_write = False
        self.closed: str | None = None
        self.error: int | None = None
        self.at_once = False  # connected within connect() (as a loopback connect is)

    def send(self, data: memoryview) -> int:
        if self.error:
            raise OSError(self.error, "fake error")
        n = len(data) if self.accept_limit is None else min(len(data), self.accept_limit)
        self.written += data[:n]
        return n

    def send_space(self) -> int:
        return self.space

    def connected_at_once(self) -> bool:
        return self.at_once  # else the tests complete connects (Rig.connect_ok)

    def peek_into(self, buf: memoryview, offset: int) -> int | None:
        avail = self.to_guest[offset : offset + len(buf)]
        if not avail:
            return 0 if self.eof else None
        buf[: len(avail)] = avail
        return len(avail)

    def discard(self, n: int) -> None:
        assert n <= len(self.to_guest), "discarding more than was sent"
        del self.to_guest[:n]

    def shutdown_write(self) -> None:
        self.shut_write = True

    @property
    def peer_closed(self) -> bool:
        return self.eof

    def close(self, reset: bool = False) -> None:
        self.closed = "reset" if reset else "close"


class FakeSocket:
    def __init__(self, send_errno: int | None = None) -> None:
        self.sent: list[tuple[bytes, HostAddr]] = []
        self.closed = False
        self.send_errno = send_errno  # every sendto fails with it (no route...)

    def sendto(self, data: bytes | bytearray | memoryview, addr: HostAddr) -> None:
        if self.send_errno:
            raise OSError(self.send_errno, "fake sendto error")
        self.sent.append((bytes(data), addr))

    def close(self) -> None:
        self.closed = True


class FakeHost:
    def __init__(self) -> None:
        self.connects: list[tuple[TcpConnection, list[HostAddr], FakeStream]] = []
        self.udp: list[tuple[DatagramReceiver, FakeSocket]] = []
        self.servers = ["127.0.0.1"]
        self.host_addresses = {bytes([192, 0, 2, 1])}  # the host's own IPv4 addresses
        self.ping_errno: int | None = None
        self.send_errno: int | None = None  # sockets opened from now on fail every sendto
        self.connect_at_once = False  # streams opened from now on connect within connect()

    def connect_tcp(self, conn: TcpConnection, targets: list[HostAddr], now: float) -> FakeStream:
        stream = FakeStream()
        stream.at_once = self.connect_at_once
        self.connects.append((conn, targets, stream))
        return stream

    def open_udp(self, owner: DatagramReceiver, family_of: str) -> FakeSocket:
        s = FakeSocket(self.send_errno)
        self.udp.append((owner, s))
        return s

    def open_sockets(self) -> int:
        return sum(not s.closed for _, s in self.udp)

    def open_ping(self, owner: DatagramReceiver, dst: str) -> FakeSocket:
        if self.ping_errno:
            raise OSError(self.ping_errno, "forbidden")
        s = FakeSocket(self.send_errno)
        self.udp.append((owner, s))
        return s

    def nameservers(self) -> list[str]:
        return self.servers

    def is_host_address(self, ip: bytes) -> bool:
        return ip in self.host_addresses


class FakeNames:
    """netstackd for the stack (DirectoryNames): a view set by the test, and resolve
    requests kept until the test answers them."""

    def __init__(self, view: View | None = None) -> None:
        self.view = view
        self.resolving: list[tuple[str, Callable[[Resolved], None]]] = []
        self.awaiting: set[bytes] = set()  # VIPs resolve gave out, not in a view yet

    def resolve_then(self, name: str, done: Callable[[Resolved], None]) -> None:
        self.resolving.append((name, done))

    def awaited(self, vip: bytes) -> bool:
        return vip in self.awaiting


class Rig:
    """A stack on a memory link with a fake host."""

    def __init__(
        self,
        config: NetworkConfig | None = None,
        vnet_enabled: bool = False,
        mtu: int = 1500,
        directory: DirectorySettings | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.config = config or NetworkConfig(mtu=mtu)
        self.link = MemoryLink(mtu=self.config.mtu, vnet_enabled=vnet_enabled)
        self.host = FakeHost()
        self.now = 1000.0
        self.stack = Stack(self.config, self.link, self.host, limits=limits, clock=self.clock,
                           directory=directory)

    def clock(self) -> float:
        """The stack's clock is the rig's: time moves only with advance()."""
        return self.now

    def send(self, pkt: object, header: vnet.VnetHeader = vnet.PLAIN) -> None:
        """One frame from the guest (a scapy packet, Ethernet added if missing)."""
        from scapy.packet import Packet

        assert isinstance(pkt, Packet)
        if not pkt.haslayer(Ether):
            pkt = Ether(src=GUEST_MAC, dst=GW_MAC) / pkt
        raw = vnet.HEADER.pack(*header) + bytes(pkt)
        buf = bytearray(raw)
        self.stack.receive(buf, len(raw), self.now)
        self.stack.end_of_batch(self.now)

    def frames(self) -> list[Ether]:
        return [Ether(f) for f in self.link.take()]

    def headers(self) -> list[vnet.VnetHeader]:
        return [h for h, _ in self.link.sent]

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.stack.run_timers(self.now)

    def connect_ok(self, index: int = -1) -> FakeStream:
        conn, _, stream = self.host.connects[index]
        self.stack.tcp.host_connected(conn, True, 0, self.now)
        return stream

    def connect_fail(self, err: int = errno.ECONNREFUSED, index: int = -1) -> None:
        conn, _, _ = self.host.connects[index]
        self.stack.tcp.host_connected(conn, False, err, self.now)
