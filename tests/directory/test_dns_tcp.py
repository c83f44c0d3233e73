"""DNS over TCP with --directory (host/dns_tcp.py), on a real loop without namespaces:
directory names answered in netstack, other queries relayed to a nameserver over TCP,
in order, and the guest's connection closed when no nameserver answers."""

from __future__ import annotations

import asyncio
import socket

from scapy.layers.dns import DNS, DNSQR, DNSRR

from netstack.directory.view import View
from netstack.dns.directory import DirectoryAnswers
from netstack.host.dns_tcp import DnsOverTcp
from netstack.stack.stats import Stats
from tests.directory.test_view import WEB, message
from tests.fakes import FakeNames


def query(name: str, ident: int) -> bytes:
    q = bytes(DNS(id=ident, rd=1, qd=DNSQR(qname=name, qtype="A")))
    return len(q).to_bytes(2, "big") + q


async def read_answer(reader: asyncio.StreamReader) -> DNS:
    n = int.from_bytes(await reader.readexactly(2), "big")
    return DNS(await reader.readexactly(n))


async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A nameserver: every query answered with 192.0.2.123."""
    while head := await reader.read(2):
        q = DNS(await reader.readexactly(int.from_bytes(head, "big")))
        a = bytes(
            DNS(id=q.id, qr=1, ra=1, qd=q.qd, an=DNSRR(rrname=q.qd[0].qname, rdata="192.0.2.123"))
        )
        writer.write(len(a).to_bytes(2, "big") + a)
        await writer.drain()
    writer.close()


def relay() -> DnsOverTcp:
    answers = DirectoryAnswers(FakeNames(View.parse(message(WEB))), Stats())
    return DnsOverTcp(asyncio.get_running_loop(), answers, {})


def test_directory_names_here_others_relayed_in_order() -> None:
    async def main() -> None:
        server = await asyncio.start_server(upstream, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        dns_tcp = relay()
        host_end = dns_tcp.open([("127.0.0.1", port)])
        reader, writer = await asyncio.open_connection(sock=host_end)
        writer.write(query("example.test", 1) + query("web.netstack.internal", 2))
        writer.write(query("other.test", 3))
        first, second, third = [await read_answer(reader) for _ in range(3)]
        assert (first.id, first.an[0].rdata) == (1, "192.0.2.123")
        assert (second.id, second.aa, second.an[0].rdata) == (2, 1, "198.18.0.1")
        assert (third.id, third.an[0].rdata) == (3, "192.0.2.123")
        writer.close()
        dns_tcp.close()
        server.close()

    asyncio.run(main())


def test_without_a_nameserver_the_guests_connection_is_closed() -> None:
    async def main() -> None:
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]  # bound, not listening: refused
            dns_tcp = relay()
            reader, writer = await asyncio.open_connection(sock=dns_tcp.open([("127.0.0.1", port)]))
            writer.write(query("web.netstack.internal", 1) + query("example.test", 2))
            assert (await read_answer(reader)).an[0].rdata == "198.18.0.1"
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()

    asyncio.run(main())


async def one_answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A nameserver that closes its connection after each answer (an idle timeout)."""
    head = await reader.readexactly(2)
    q = DNS(await reader.readexactly(int.from_bytes(head, "big")))
    a = bytes(DNS(id=q.id, qr=1, ra=1, qd=q.qd, an=DNSRR(rrname=q.qd[0].qname, rdata="192.0.2.7")))
    writer.write(len(a).to_bytes(2, "big") + a)
    await writer.drain()
    writer.close()


def test_a_nameserver_that_closed_its_connection_is_connected_again() -> None:
    async def main() -> None:
        server = await asyncio.start_server(one_answer_then_close, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        dns_tcp = relay()
        reader, writer = await asyncio.open_connection(sock=dns_tcp.open([("127.0.0.1", port)]))
        for ident in (1, 2, 3):
            writer.write(query("example.test", ident))
            answer = await read_answer(reader)
            assert (answer.id, answer.an[0].rdata) == (ident, "192.0.2.7")
        writer.close()
        dns_tcp.close()
        server.close()

    asyncio.run(main())
