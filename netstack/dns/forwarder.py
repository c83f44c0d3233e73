"""DNS forwarder for UDP queries to the virtual DNS address, port 53.

A query goes to the nameserver that answered last, through a host socket that
carries up to UPSTREAM_QUERIES queries to that nameserver (then it retires and the
next query gets a fresh port), at most one in flight per ID, so a reply is matched
by its ID; it counts only if it comes from the nameserver's port 53 and repeats the
query's question (anything else is dropped and counted, and the query waits on).
Without an answer within PER_SERVER_TIMEOUT it is sent to the next one, until every
nameserver has been tried once. A socket nothing waits on closes after
UPSTREAM_IDLE. (A socket per query cost a socket, a port bind, two epoll calls and a
close per query: a third of the forwarder's time.) The answer comes back to the guest from the DNS
address. The nameserver list is the host's resolv.conf, re-read when it changes
(HostIO.nameservers). TCP queries are proxied by the TCP table to the same list.
With --directory, queries for directory names are answered here (dns/directory.py).
With the C flow path (and without --directory), the common query of a guest seen here
is forwarded to the preferred nameserver by C (csrc/dns.c, dns/fastpath.py); what C
does not answer in PER_SERVER_TIMEOUT comes back through `resume`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from netstack.log import get_logger
from netstack.stack.guest_output import GuestOutput
from netstack.stack.hostio import DatagramSocket, DirectoryNames, HostAddr, HostIO
from netstack.stack.stats import Stats
from netstack.stack.timers import TimerQueue
from netstack.wire import WireError, dns

if TYPE_CHECKING:
    from netstack.dns.directory import DirectoryAnswers  # with --directory only

log = get_logger(__name__)


class FastDns(Protocol):
    """What the forwarder tells the C path (dns/fastpath.py DnsFastPath), if there is one."""

    def seen(self, guest_mac: bytes, guest_ip: bytes, now: float) -> None: ...  # a query sent
    def check(self, now: float) -> None: ...  # the preferred nameserver may have changed
    def close(self) -> None: ...


PER_SERVER_TIMEOUT = 1.5
MAX_QUERIES = 256
UPSTREAM_QUERIES = 100
UPSTREAM_IDLE = 5.0
FLAG_QR_BYTE = dns.FLAG_QR >> 8  # QR in the flags' first byte


class Upstream:
    """A host socket to one nameserver, shared by queries with different IDs."""

    def __init__(self, fwd: DnsForwarder, server: str) -> None:
        self.fwd = fwd
        self.server = server
        self.pending: dict[int, DnsQuery] = {}
        self.sent = 0
        self.retired = False  # takes no new query; closes when nothing waits on it
        self.idle_since = 0.0
        self.sock: DatagramSocket | None = fwd.host.open_udp(self, server)

    @property
    def deadline(self) -> float | None:
        if self.pending or self.sock is None:
            return None
        return self.idle_since + UPSTREAM_IDLE

    def on_timer(self, now: float) -> None:
        if not self.pending and now >= self.idle_since + UPSTREAM_IDLE:
            self.close()

    def takes(self, ident: int) -> bool:
        return not self.retired and ident not in self.pending

    def send(self, q: DnsQuery) -> None:
        """Raises OSError; the socket is retired then (a fresh one for the next try)."""
        assert self.sock is not None
        try:
            self.sock.sendto(q.query, (self.server, dns.PORT))
        except OSError:
            self.retired = True
            if not self.pending:
                self.close()
            raise
        self.pending[q.ident] = q
        self.sent += 1
        if self.sent >= UPSTREAM_QUERIES:
            self.retired = True

    def release(self, q: DnsQuery, now: float) -> None:
        if self.pending.get(q.ident) is q:
            del self.pending[q.ident]
        if self.pending:
            return
        if self.retired:
            self.close()
        else:
            self.idle_since = now
            self.fwd.timers.touch(self)

    def on_datagram(self, data: bytes, addr: HostAddr, now: float) -> None:
        if addr[0] != self.server or addr[1] != dns.PORT:
            self.fwd.stats.drop("dns_reply_foreign")
            return
        q = self.pending.get(int.from_bytes(data[:2], "big")) if len(data) >= 2 else None
        if q is None or not q.answered_by(data):
            self.fwd.stats.drop("dns_reply_mismatch")
            return
        self.fwd.answer(q, data, addr[0], now)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.retired = True
        self.fwd.timers.forget(self)
        pool = self.fwd.upstreams.get(self.server)
        if pool is not None and self in pool:
            pool.remove(self)
            if not pool:
                del self.fwd.upstreams[self.server]


class DnsQuery:
    def __init__(
        self,
        fwd: DnsForwarder,
        guest_mac: bytes,
        guest_ip: bytes,
        guest_port: int,
        query: bytes,
        question: bytes,
        servers: list[str],
    ) -> None:
        self.fwd = fwd
        self.guest_mac = guest_mac
        self.guest_ip = guest_ip
        self.guest_port = guest_port
        self.query = query
        self.ident = int.from_bytes(query[:2], "big")
        self.question = question  # dns.question_key of the query
        self.servers = servers
        self.tried = 0
        self.dns_ip = fwd.output.config.dns  # the address the guest asked (set by the forwarder)
        self.upstream: Upstream | None = None
        self._deadline: float | None = None
        self.done = False

    @property
    def deadline(self) -> float | None:
        return self._deadline

    def send_next(self, now: float) -> bool:
        """Send to the next untried nameserver; False when none is left."""
        while self.tried < len(self.servers):
            server = self.servers[(self.fwd.preferred + self.tried) % len(self.servers)]
            self.tried += 1
            self.release(now)
            try:
                upstream = self.fwd.upstream_for(server, self.ident)
                upstream.send(self)
            except OSError as e:
                log.info("dns: nameserver %s: %s", server, e)
                continue
            self.upstream = upstream
            self._deadline = now + PER_SERVER_TIMEOUT
            return True
        return False

    def release(self, now: float) -> None:
        if self.upstream is not None:
            self.upstream.release(self, now)
            self.upstream = None

    def on_timer(self, now: float) -> None:
        if self._deadline is None or now < self._deadline:
            return
        self.fwd.stats.count("dns_server_timeouts")
        if not self.send_next(now):
            self.fwd.finish(self, now)

    def answered_by(self, data: bytes) -> bool:
        """A response repeating the question: byte for byte (the common case, checked
        without parsing names), or with the name's case changed."""
        end = dns.HEADER_LEN + len(self.question)  # the key is as long as the question
        if (
            len(data) >= end
            and data[2] & FLAG_QR_BYTE
            and data[4:6] == b"\x00\x01"
            and data[dns.HEADER_LEN : end] == self.query[dns.HEADER_LEN : end]
        ):
            return True
        try:
            hdr = dns.parse(data)
            return hdr.is_response and dns.question_key(data) == self.question
        except WireError:
            return False


class DnsForwarder:
    def __init__(
        self,
        host: HostIO,
        output: GuestOutput,
        stats: Stats,
        timers: TimerQueue,
        max_queries: int = MAX_QUERIES,
        names: DirectoryNames | None = None,
    ) -> None:
        self.max_queries = max_queries
        self.host = host
        self.output = output
        self.stats = stats
        self.timers = timers
        self.preferred = 0
        self.queries: set[DnsQuery] = set()
        self.upstreams: dict[str, list[Upstream]] = {}  # per nameserver
        self.directory: DirectoryAnswers | None = None
        # csrc/dns.c forwards the common queries to the preferred nameserver itself
        self.fast: FastDns | None = None
        if names is not None:  # --directory
            from netstack.dns.directory import DirectoryAnswers

            self.directory = DirectoryAnswers(names, stats)

    def from_guest(
        self,
        guest_mac: bytes,
        src: bytes,
        sport: int,
        payload: memoryview,
        now: float,
        dns_ip: bytes | None = None,
    ) -> None:
        try:
            hdr = dns.parse(payload)
        except ValueError:
            self.stats.drop("dns_malformed")
            return
        if hdr.is_response:
            self.stats.drop("dns_not_a_query")
            return
        try:
            question = dns.question_key(payload)
        except WireError:
            self.stats.drop("dns_malformed")
            return
        if self.directory is not None:
            answer_from = dns_ip or self.output.config.dns

            def send(reply: bytes) -> None:
                self.output.send_udp(guest_mac, answer_from, dns.PORT, src, sport, reply)

            if self.directory.take(bytes(payload), send):
                return
        if not self._start(guest_mac, src, sport, bytes(payload), question, dns_ip, now):
            return
        self.stats.count("dns_queries")
        if self.fast is not None:
            self.fast.seen(guest_mac, src, now)

    def resume(
        self,
        guest_mac: bytes,
        src: bytes,
        sport: int,
        query: bytes,
        dns_ip: bytes,
        now: float,
        tried: int,
    ) -> None:
        """A query the C path (dns/fastpath.py) forwarded and gave back without an
        answer: after PER_SERVER_TIMEOUT at the preferred nameserver (tried 1, so the
        next one gets it, as on_timer would), or because C's nameserver changed
        (tried 0). Counted in dns_queries by C already."""
        try:
            question = dns.question_key(query)
        except WireError:
            self.stats.drop("dns_malformed")
            return
        if tried:
            self.stats.count("dns_server_timeouts")
        self._start(guest_mac, src, sport, query, question, dns_ip, now, tried)

    def _start(
        self,
        guest_mac: bytes,
        src: bytes,
        sport: int,
        query: bytes,
        question: bytes,
        dns_ip: bytes | None,
        now: float,
        tried: int = 0,
    ) -> bool:
        """Send a query to the next untried nameserver (the first `tried` count as
        tried) and track it; False (counted) when it could not go."""
        servers = self.host.nameservers()
        if not servers:
            self.stats.drop("dns_no_nameserver")
            return False
        if len(self.queries) >= self.max_queries:
            self.stats.drop("dns_query_limit")
            return False
        if self.preferred >= len(servers):
            self.preferred = 0
        q = DnsQuery(self, guest_mac, src, sport, query, question, servers)
        if dns_ip is not None:
            q.dns_ip = dns_ip
        q.tried = min(tried, len(servers))
        if not q.send_next(now):
            if not tried:
                self.stats.drop("dns_send_failed")
            return False  # every nameserver was tried, as when on_timer finishes a query
        self.queries.add(q)
        self.timers.touch(q)
        return True

    def upstream_for(self, server: str, ident: int) -> Upstream:
        """A socket to server with no query of this ID in flight; raises OSError."""
        pool = self.upstreams.setdefault(server, [])
        for upstream in pool:
            if upstream.takes(ident):
                return upstream
        try:
            upstream = Upstream(self, server)
        except OSError:
            if not pool:
                del self.upstreams[server]
            raise
        pool.append(upstream)
        return upstream

    def answer(self, q: DnsQuery, data: bytes, server: str, now: float) -> None:
        if server in q.servers:
            self.preferred = q.servers.index(server)
        self.output.send_udp(q.guest_mac, q.dns_ip, dns.PORT, q.guest_ip, q.guest_port, data)
        self.stats.count("dns_answers")
        self.finish(q, now)
        if self.fast is not None:
            self.fast.check(now)  # the preferred nameserver may have changed

    def finish(self, q: DnsQuery, now: float) -> None:
        q.done = True
        q._deadline = None
        q.release(now)
        self.queries.discard(q)
        self.timers.forget(q)

    def close_all(self) -> None:
        if self.fast is not None:
            self.fast.close()
        for q in list(self.queries):
            self.finish(q, 0.0)
        for pool in list(self.upstreams.values()):
            for upstream in list(pool):
                upstream.close()
