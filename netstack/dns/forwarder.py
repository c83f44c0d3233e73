"""DNS forwarder for UDP queries to the virtual DNS address, port 53.

Each query gets its own host socket and goes to the nameserver that answered last;
a reply counts only if it comes from a nameserver's port 53 and repeats the query's ID
and question (anything else is dropped and counted, and the query waits on);
without an answer within PER_SERVER_TIMEOUT it is sent to the next one, until every
nameserver has been tried once. The answer comes back to the guest from the DNS
address. The nameserver list is the host's resolv.conf, re-read when it changes
(HostIO.nameservers). TCP queries are proxied by the TCP table to the same list.
With --directory, queries for directory names are answered here (dns/directory.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from netstack.stack.guest_output import GuestOutput
from netstack.stack.hostio import DatagramSocket, DirectoryNames, HostAddr, HostIO
from netstack.stack.stats import Stats
from netstack.stack.timers import TimerQueue
from netstack.wire import WireError, dns

if TYPE_CHECKING:  # with --directory only
    from netstack.dns.directory import DirectoryAnswers

log = logging.getLogger(__name__)

PER_SERVER_TIMEOUT = 1.5
MAX_QUERIES = 256


class DnsQuery:
    def __init__(
        self,
        fwd: DnsForwarder,
        guest_mac: bytes,
        guest_ip: bytes,
        guest_port: int,
        query: bytes,
        servers: list[str],
        now: float,
    ) -> None:
        self.fwd = fwd
        self.guest_mac = guest_mac
        self.guest_ip = guest_ip
        self.guest_port = guest_port
        self.query = query
        self.ident = int.from_bytes(query[:2], "big")
        self.question = dns.question_key(query)  # raises WireError on a mangled one
        self.servers = servers
        self.tried = 0
        self.dns_ip = fwd.output.config.dns  # the address the guest asked (set by the forwarder)
        self.sock: DatagramSocket | None = None
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
            if self.sock is not None:
                self.sock.close()
                self.sock = None
            try:
                self.sock = self.fwd.host.open_udp(self, server)
                self.sock.sendto(self.query, (server, dns.PORT))
            except OSError as e:
                log.info("dns: nameserver %s: %s", server, e)
                if self.sock is not None:  # given up on: closed now, not by a later try
                    self.sock.close()
                    self.sock = None
                continue
            self._deadline = now + PER_SERVER_TIMEOUT
            return True
        return False

    def on_timer(self, now: float) -> None:
        if self._deadline is None or now < self._deadline:
            return
        self.fwd.stats.count("dns_server_timeouts")
        if not self.send_next(now):
            self.fwd.finish(self)

    def on_datagram(self, data: bytes, addr: HostAddr, now: float) -> None:
        if addr[0] not in self.servers or addr[1] != dns.PORT:
            self.fwd.stats.drop("dns_reply_foreign")
            return
        try:
            hdr = dns.parse(data)
            matches = (
                hdr.ident == self.ident
                and hdr.is_response
                and dns.question_key(data) == self.question
            )
        except WireError:
            matches = False
        if not matches:
            self.fwd.stats.drop("dns_reply_mismatch")
            return
        self.fwd.preferred = self.servers.index(addr[0])
        self.fwd.output.send_udp(
            self.guest_mac, self.dns_ip, dns.PORT, self.guest_ip, self.guest_port, data
        )
        self.fwd.stats.count("dns_answers")
        self.fwd.finish(self)


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
        self.directory: DirectoryAnswers | None = None
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
            dns.question_key(payload)
        except WireError:
            self.stats.drop("dns_malformed")
            return
        if self.directory is not None:
            answer_from = dns_ip or self.output.config.dns

            def send(reply: bytes) -> None:
                self.output.send_udp(guest_mac, answer_from, dns.PORT, src, sport, reply)

            if self.directory.take(bytes(payload), send):
                return
        servers = self.host.nameservers()
        if not servers:
            self.stats.drop("dns_no_nameserver")
            return
        if len(self.queries) >= self.max_queries:
            self.stats.drop("dns_query_limit")
            return
        if self.preferred >= len(servers):
            self.preferred = 0
        q = DnsQuery(self, guest_mac, src, sport, bytes(payload), servers, now)
        if dns_ip is not None:
            q.dns_ip = dns_ip
        if not q.send_next(now):
            self.stats.drop("dns_send_failed")
            return
        self.queries.add(q)
        self.stats.count("dns_queries")
        self.timers.touch(q)

    def finish(self, q: DnsQuery) -> None:
        q.done = True
        q._deadline = None
        if q.sock is not None:
            q.sock.close()
            q.sock = None
        self.queries.discard(q)
        self.timers.forget(q)

    def close_all(self) -> None:
        for q in list(self.queries):
            self.finish(q)
