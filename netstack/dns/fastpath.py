"""Hand-over of UDP DNS queries to the C path (csrc/dns.c).

The forwarder (dns/forwarder.py) stays the policy. This gives C one upstream: a UDP
socket to the forwarder's preferred nameserver, and the guests whose queries the
forwarder has seen. From then on C forwards a guest's standard queries to that
nameserver itself and sends the answers back; what it does not take (a second query
with an ID in flight, anything unusual) still reaches the forwarder as before.

Python keeps the time: while C has queries in flight a timer runs, and a query C
sent PER_SERVER_TIMEOUT ago comes back here (its bytes and guest) and goes to the
forwarder as one whose first nameserver was tried, so failover is the forwarder's.
When the preferred nameserver or the list changes (`check`, on each Python DNS event
and timer), the queries C has in flight come back at once and C gets a new socket.
"""

from __future__ import annotations

import select
import socket
from typing import TYPE_CHECKING, Any, Protocol

from netstack.dns.forwarder import (
    PER_SERVER_TIMEOUT,
    UPSTREAM_IDLE,
    UPSTREAM_QUERIES,
    DnsForwarder,
)
from netstack.udp.fastpath import sockaddr
from netstack.wire import dns

if TYPE_CHECKING:
    from netstack.tcp.fastpath import FastPath

CHECK_INTERVAL = 0.25  # how often the timer looks for queries C sent too long ago
_V4_MAPPED = bytes(10) + b"\xff\xff"  # C keys IPv4 addresses as ::ffff:a.b.c.d


class DnsHost(Protocol):
    """What the hand-over needs of the runtime."""

    def nameservers(self) -> list[str]: ...

    def bind_outbound(self, sock: socket.socket, family: int) -> None: ...

    def register(self, fd: int, events: int, handler: Any) -> None: ...

    def unregister(self, fd: int) -> None: ...


class DnsFastPath:
    """The DNS part of a C context (FastPath): its upstream socket and timer."""

    def __init__(
        self,
        path: FastPath,
        forwarder: DnsForwarder,
        host: DnsHost,
        dns_ip: bytes,
        dns6_ip: bytes | None,
        mtu: int,
    ) -> None:
        self.ffi = path.ffi
        self.lib = path.lib
        self.ctx = path.ctx
        if self.lib.ns_dns_new(self.ctx, dns_ip, dns6_ip or self.ffi.NULL, mtu) < 0:
            raise MemoryError("DNS path")
        self.d: Any = self.ctx.dns
        self.fwd = forwarder
        self.host = host
        self.server: str | None = None
        self.sock: socket.socket | None = None
        self.old_sock: socket.socket | None = None  # C reads it until it drains
        self.rotations = 0
        self.guests: set[tuple[bytes, bytes]] = set()
        self.switches = 0
        self._deadline: float | None = None
        # C's query count when its sockets were last seen idle (nothing in flight)
        self._idle_queries: int | None = None
        forwarder.fast = self

    # ------------------------------------------------------------------ policy
    def seen(self, guest_mac: bytes, guest_ip: bytes, now: float) -> None:
        """The forwarder sent a query of this guest: C takes its next ones."""
        key = guest_ip if len(guest_ip) == 16 else _V4_MAPPED + guest_ip
        if (guest_mac, key) not in self.guests:
            if self.lib.ns_dns_guest(self.ctx, guest_mac, key) == 0:
                self.guests.add((guest_mac, key))
        self.check(now)

    def check(self, now: float) -> None:
        """C's upstream is the forwarder's preferred nameserver: point it at the new one
        when that changed."""
        servers = self.host.nameservers()
        target = servers[self.fwd.preferred % len(servers)] if servers else None
        if target != self.server:
            self.switch(target, now)

    def switch(self, server: str | None, now: float) -> None:
        self.after_call(now)  # what C listed before goes first
        self.lib.ns_dns_set_upstream(self.ctx, -1, self.ffi.NULL, 0)
        self._close_sock()
        self.server = None
        if server is not None:
            family = socket.AF_INET6 if ":" in server else socket.AF_INET
            addr = sockaddr(family, (server, dns.PORT))
            sock = self._open(family) if addr is not None else None
            if sock is not None and addr is not None:
                self.sock = sock
                self.server = server
                self.switches += 1
                self.lib.ns_dns_set_upstream(self.ctx, sock.fileno(), addr, len(addr))
                if self._deadline is None:  # it closes if no query comes (on_timer)
                    self._idle_queries = int(self.d.queries)
                    self._deadline = now + UPSTREAM_IDLE
                    self.fwd.timers.touch(self)
        # the queries C had in flight went to the old nameserver: the forwarder sends
        # them to the preferred one now
        self._take_back(now)

    def _open(self, family: int) -> socket.socket | None:
        sock = None
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            self.host.bind_outbound(sock, family)
            self.host.register(sock.fileno(), select.EPOLLIN, self)
        except OSError:
            if sock is not None:
                sock.close()
            return None
        return sock

    def rotate(self) -> None:
        """C sent UPSTREAM_QUERIES on its socket (and the one before has drained): a
        fresh one, a new source port, as the forwarder's Upstream does."""
        sock = self._open(self.sock.family) if self.sock is not None else None
        self.lib.ns_dns_rotate(self.ctx, sock.fileno() if sock else -1)
        if sock is None:
            return  # C keeps its socket
        old = self.old_sock  # C reads it no more (ns_dns_rotate returned its fd)
        if old is not None:
            self.host.unregister(old.fileno())
            old.close()
        self.old_sock = self.sock
        self.sock = sock
        self.rotations += 1

    def _close_sock(self) -> None:
        for sock in (self.sock, self.old_sock):
            if sock is not None:
                self.host.unregister(sock.fileno())
                sock.close()
        self.sock = self.old_sock = None

    def on_events(self, events: int, now: float) -> None:
        """C serves the socket's events (csrc/dns.c dns_host_event); not reached."""

    # ------------------------------------------------------------------ timer
    @property
    def deadline(self) -> float | None:
        return self._deadline

    def on_timer(self, now: float) -> None:
        self._deadline = None
        self.check(now)
        self.after_call(now)
        self.lib.ns_dns_expire(self.ctx, now - PER_SERVER_TIMEOUT)
        self._take_back(now)
        d = self.d
        if int(d.inflight):
            self._idle_queries = None
            self._deadline = now + CHECK_INTERVAL
            self.fwd.timers.touch(self)
            return
        d.timer_armed = 0  # C asks again with its next query
        if self.sock is None:
            self._idle_queries = None
        elif self._idle_queries == int(d.queries):
            # no query for UPSTREAM_IDLE: the sockets close, as the forwarder's idle
            # Upstream sockets do; the next query goes through Python and opens one
            self._idle_queries = None
            self.switch(None, now)
        else:
            self._idle_queries = int(d.queries)
            self._deadline = now + UPSTREAM_IDLE
            self.fwd.timers.touch(self)

    # ------------------------------------------------------- what C gives back
    def after_call(self, now: float) -> None:
        """After a C call returned Python work: arm the timer C asked for, send the
        answers C listed (too large for one frame: Python fragments them) and forward
        the queries C's socket refused."""
        d = self.d
        if not (d.arm or d.npy or d.cur_sent >= UPSTREAM_QUERIES):
            return
        if d.arm and (self._deadline is None or self._deadline > now + CHECK_INTERVAL):
            self._deadline = now + CHECK_INTERVAL  # (not the idle check's, later)
            self.fwd.timers.touch(self)
        if d.cur_sent >= UPSTREAM_QUERIES and not d.old_inflight and d.fd >= 0:
            self.rotate()
        self._take_back(now)

    def _take_back(self, now: float) -> None:
        """C's list for Python: answers go to their guest; queries without one go to
        the forwarder (tried 1: a timeout at C's nameserver; 0: C's nameserver changed,
        or its socket refused the query)."""
        d, ffi = self.d, self.ffi
        entries = []
        for i in range(int(d.npy)):
            e = d.py[i]
            q = e.query
            v6 = bool(q.v6)
            gip = bytes(ffi.buffer(q.guest_ip))
            dip = bytes(ffi.buffer(q.dns_ip))
            reply = bytes(ffi.buffer(d.py_buf + e.reply_off, e.reply_len)) if e.reply_len else b""
            entries.append(
                (
                    bytes(ffi.buffer(q.guest_mac)),
                    gip if v6 else gip[12:],
                    int(q.guest_port),
                    bytes(ffi.buffer(q.query, q.len)),
                    dip if v6 else dip[:4],
                    reply,
                    int(e.tried),
                )
            )
        self.lib.ns_dns_python_done(self.ctx)
        for mac, gip, port, query, dip, reply, tried in entries:
            if reply:
                self.fwd.output.send_udp(mac, dip, dns.PORT, gip, port, reply)
            else:
                self.fwd.resume(mac, gip, port, query, dip, now, tried)

    def close(self) -> None:
        self.lib.ns_dns_set_upstream(self.ctx, -1, self.ffi.NULL, 0)
        self.lib.ns_dns_python_done(self.ctx)  # the forwarder is closing: dropped
        self._close_sock()
        self.server = None
        self.fwd.timers.forget(self)
        self._deadline = None

    # ------------------------------------------------------------------ stats
    def counters(self) -> dict[str, int]:
        """What C counted, under the forwarder's stats names."""
        return {"dns_queries": int(self.d.queries), "dns_answers": int(self.d.answers)}

    def drops(self) -> dict[str, int]:
        d = self.d
        return {
            "dns_reply_foreign": int(d.reply_foreign),
            "dns_reply_mismatch": int(d.reply_mismatch),
        }

    def snapshot(self) -> dict[str, int]:
        d = self.d
        return {
            "dns_in_flight_in_c": int(d.inflight),
            "dns_queries_from_c": int(d.queries),
            "dns_answers_from_c": int(d.answers),
            "dns_upstream_switches": self.switches,
            "dns_upstream_rotations": self.rotations,
            "dns_send_errors_in_c": int(d.send_errors),
        }
