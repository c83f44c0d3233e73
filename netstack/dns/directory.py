"""Answers for directory names (--directory), for DNS over UDP and TCP alike.

A query whose name is in the view is answered at once: A -> the service's VIP,
AAAA -> its IPv6 VIP (TTL 10 s), other types NOERROR without answers. A name under
the directory's domain that the view does not have yet is resolved by netstackd
(which reserves a VIP for it); without an answer from netstackd the guest gets
SERVFAIL. Single-label names not in the view, and every other name, are not taken:
the caller forwards them upstream as it always does (LAN single-label names keep
working). This module does no I/O: netstackd is a DirectoryNames, replies go to the
`send` callback of each query.
"""

from __future__ import annotations

from collections.abc import Callable

from netstack.directory.view import View
from netstack.log import get_logger
from netstack.stack.hostio import DirectoryNames, Resolved
from netstack.stack.stats import Stats
from netstack.wire import WireError, dns

log = get_logger(__name__)

TTL = 10
MAX_PENDING = 256  # resolves in flight; more get SERVFAIL at once

_DEFAULT_VIEW = View()

SendReply = Callable[[bytes], None]


class DirectoryAnswers:
    def __init__(self, names: DirectoryNames, stats: Stats, max_pending: int = MAX_PENDING) -> None:
        self.names = names
        self.stats = stats
        self.max_pending = max_pending
        self.pending = 0

    def take(self, query: bytes, send: SendReply) -> bool:
        """Answer query if it asks for a directory name (now or once netstackd
        answers); False: not ours, forward it."""
        try:
            q = dns.question(query)
        except WireError:
            return False
        if q.qclass != dns.CLASS_IN:
            return False
        view = self.names.view or _DEFAULT_VIEW
        service = view.lookup(q.name)
        if service is not None:
            send(self._addresses(query, q, (service.vip, service.vip6)))
            self.stats.count("dns_directory_answers")
            return True
        if not view.under_domain(q.name):
            return False
        label = view.service_name(q.name)
        if label is None:  # deeper than one label under the domain: no such service
            send(dns.reply(query, q, dns.RCODE_NXDOMAIN))
            self.stats.count("dns_directory_nxdomain")
            return True
        if q.qtype not in (dns.TYPE_A, dns.TYPE_AAAA):
            send(dns.reply(query, q, dns.RCODE_NOERROR))
            self.stats.count("dns_directory_answers")
            return True
        if self.pending >= self.max_pending:
            send(dns.reply(query, q, dns.RCODE_SERVFAIL))
            self.stats.drop("dns_directory_pending_limit")
            return True
        self.pending += 1

        def resolved(answer: Resolved) -> None:
            self.pending -= 1
            if answer is None:
                self.stats.drop("dns_directory_servfail")
                send(dns.reply(query, q, dns.RCODE_SERVFAIL))
                return
            self.stats.count("dns_directory_resolved")
            send(self._addresses(query, q, answer))

        self.names.resolve_then(label, resolved)
        return True

    @staticmethod
    def _addresses(query: bytes, q: dns.Question, vips: tuple[bytes, bytes]) -> bytes:
        if q.qtype == dns.TYPE_A:
            return dns.reply(query, q, dns.RCODE_NOERROR, [(dns.TYPE_A, TTL, vips[0])])
        if q.qtype == dns.TYPE_AAAA:
            return dns.reply(query, q, dns.RCODE_NOERROR, [(dns.TYPE_AAAA, TTL, vips[1])])
        return dns.reply(query, q, dns.RCODE_NOERROR)
