"""Test servers, run inside a test namespace: `python servers.py KIND [ARGS]`.

  http DIR PORT ADDR        static files (http.server)
  sink PORT ADDR            per connection: read to EOF, answer the sha256 hex, close
  echo PORT ADDR            TCP echo, many clients at once
  udpecho PORT ADDR         UDP echo
  dns PORT ADDR IPV4        UDP and TCP DNS: every A question answered with IPV4
  peer PORT ADDR            per connection: send the client's "ip:port", close
  count PORT ADDR           TCP and UDP: print "tcp" / "udp" for each connection or datagram
  reset PORT ADDR           per connection: send 1 MiB, then reset (SO_LINGER 0)
  stall PORT ADDR           accept and never read
  source PORT ADDR          per connection: send zeros until the client goes away
  blocks PORT ADDR          per connection: read a block count N, send N numbered 1 MiB
                            blocks, then their sha256 hex and close

Each prints "ready" on stdout once listening.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import http.server
import socket
import struct
import sys
from typing import Any


def dns_answer(query: bytes, answer_ip: str) -> bytes:
    ident, _flags, qd = struct.unpack_from("!HHH", query)
    i = 12
    while query[i] != 0:
        i += 1 + query[i]
    question = query[12 : i + 5]
    qtype = struct.unpack_from("!H", query, i + 1)[0]
    answers = b""
    count = 0
    if qtype == 1:
        answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(answer_ip)
        count = 1
    elif qtype == 28:  # AAAA: the IPv4 answer embedded in 2001:db8::/96
        v6 = socket.inet_pton(socket.AF_INET6, "2001:db8::")[:12] + socket.inet_aton(answer_ip)
        answers = b"\xc0\x0c" + struct.pack("!HHIH", 28, 1, 60, 16) + v6
        count = 1
    return struct.pack("!HHHHHH", ident, 0x8180, 1, count, 0, 0) + question + answers


async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    h = hashlib.sha256()
    n = 0
    while chunk := await reader.read(1 << 20):
        h.update(chunk)
        n += len(chunk)
    writer.write(f"{h.hexdigest()} {n}\n".encode())
    await writer.drain()
    writer.close()


async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    host, port = writer.get_extra_info("peername")[:2]
    writer.write(f"{host}:{port}".encode())
    await writer.drain()
    writer.close()


class CountUdp(asyncio.DatagramProtocol):
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        print("udp", flush=True)


async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    print("tcp", flush=True)
    writer.close()


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"r" * (1 << 20))
    await writer.drain()
    await asyncio.sleep(0.5)  # mid-transfer: the client has connected and read by now
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


STALLED: list[asyncio.StreamWriter] = []


async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    STALLED.append(writer)  # keep it open, never read


async def source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    chunk = b"\0" * (1 << 16)
    try:
        while True:
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    writer.close()


BLOCK = bytes(range(256)) * 4096  # 1 MiB; each copy is numbered in its first 8 bytes


def numbered_block(i: int) -> bytes:
    return struct.pack("!Q", i) + BLOCK[8:]


async def blocks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    n = int((await reader.readline()).decode())
    h = hashlib.sha256()
    for i in range(n):
        b = numbered_block(i)
        h.update(b)
        writer.write(b)
        await writer.drain()
    writer.write(h.hexdigest().encode())
    await writer.drain()
    writer.close()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(1 << 16):
        writer.write(chunk)
        await writer.drain()
    writer.close()


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


class UdpDns(asyncio.DatagramProtocol):
    def __init__(self, answer_ip: str) -> None:
        self.answer_ip = answer_ip

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(dns_answer(data, self.answer_ip), addr)  # type: ignore[attr-defined]


class UdpDnsForger(UdpDns):
    """Answers each query three times: with another ID, for another question (both
    naming 192.0.2.250), then rightly."""

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        t: Any = self.transport
        wrong_id = bytes([data[0] ^ 0xFF]) + data[1:]
        t.sendto(dns_answer(wrong_id, "192.0.2.250"), addr)
        other = data.replace(b"\x01a\x04test", b"\x01b\x04test")
        t.sendto(dns_answer(other, "192.0.2.250"), addr)
        t.sendto(dns_answer(data, self.answer_ip), addr)


async def tcp_dns(
    answer_ip: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            (n,) = struct.unpack("!H", await reader.readexactly(2))
            reply = dns_answer(await reader.readexactly(n), answer_ip)
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
    except asyncio.IncompleteReadError:
        pass
    writer.close()


async def main(argv: list[str]) -> None:
    kind, port, addr = argv[0], int(argv[2] if kind_has_dir(argv[0]) else argv[1]), ""
    loop = asyncio.get_running_loop()
    if kind == "http":
        directory, addr = argv[1], argv[3]
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
        handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
        cls = http.server.ThreadingHTTPServer
        if ":" in addr:
            cls = type("Http6", (cls,), {"address_family": socket.AF_INET6})
        server = cls((addr, port), handler)
        print("ready", flush=True)
        await loop.run_in_executor(None, server.serve_forever)
        return
    addr = argv[2]
    if kind == "sink":
        await asyncio.start_server(sink, addr, port)
    elif kind == "count":
        await loop.create_datagram_endpoint(CountUdp, local_addr=(addr, port))
        await asyncio.start_server(count, addr, port)
    elif kind == "reset":
        await asyncio.start_server(reset, addr, port)
    elif kind == "stall":
        server = await asyncio.start_server(stall, addr, port)
        for sock in server.sockets:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    elif kind == "blocks":
        await asyncio.start_server(blocks, addr, port)
    elif kind == "source":
        await asyncio.start_server(source, addr, port)
    elif kind == "peer":
        await asyncio.start_server(peer, addr, port)
    elif kind == "echo":
        await asyncio.start_server(echo, addr, port, backlog=512)
    elif kind == "udpecho":
        await loop.create_datagram_endpoint(UdpEcho, local_addr=(addr, port))
    elif kind == "dnsforge":
        forger = UdpDnsForger(argv[3])
        await loop.create_datagram_endpoint(lambda: forger, local_addr=(addr, port))
    elif kind == "dns":
        answer = argv[3]
        await loop.create_datagram_endpoint(lambda: UdpDns(answer), local_addr=(addr, port))
        await asyncio.start_server(functools.partial(tcp_dns, answer), addr, port)
    else:
        raise SystemExit(f"unknown server kind {kind}")
    print("ready", flush=True)
    await asyncio.Event().wait()


def kind_has_dir(kind: str) -> bool:
    return kind == "http"


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
