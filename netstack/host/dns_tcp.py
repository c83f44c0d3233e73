"""DNS over TCP to the virtual DNS address with --directory: directory names answered
here, every other query relayed to the host's nameservers over TCP.

Without --directory a guest's TCP connection to port 53 is proxied byte for byte to
a nameserver. With it, the stack must see each message, so the guest's connection
ends in this process: its host side is one end of a loopback TCP pair (so it is an
ordinary HostTcpStream, C flow path included), and the other end is served here,
one length-prefixed message at a time, in order. A query the directory does not
take goes to the nameservers (tried in order, the connection kept for the next
query and opened again if the nameserver closed it); when none answers, the guest's
connection is closed, as a failed proxy connect would be. Directory answers come
from dns/directory.py.
"""

from __future__ import annotations

import asyncio
import socket

from netstack.dns.directory import DirectoryAnswers
from netstack.log import get_logger
from netstack.stack.hostio import HostAddr

log = get_logger(__name__)

UPSTREAM_TIMEOUT = 5.0  # per nameserver connect, and per relayed answer
IDLE_TIMEOUT = 30.0  # a guest connection with no query for this long is closed


def loopback_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of TCP sockets on 127.0.0.1. The listener lives for one
    accept; a stranger who raced us to it is turned away (OSError)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        ours = socket.create_connection(listener.getsockname())
        theirs, peer = listener.accept()
    if peer != ours.getsockname():
        ours.close()
        theirs.close()
        raise OSError("dns over tcp: a stranger took the loopback pair")
    return ours, theirs


class DnsOverTcp:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        directory: DirectoryAnswers,
        outbound: dict[int, str | None],
    ) -> None:
        self.loop = loop
        self.directory = directory
        self.outbound = outbound  # --outbound-addr(6), by family
        self.tasks: set[asyncio.Task[None]] = set()

    def open(self, nameservers: list[HostAddr]) -> socket.socket:
        """The host side of a guest's DNS connection (connected, to be wrapped in a
        HostTcpStream); its other end is served from now on. Raises OSError."""
        host_end, served_end = loopback_pair()
        task = self.loop.create_task(self._serve(served_end, nameservers))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return host_end

    def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    async def _serve(self, sock: socket.socket, nameservers: list[HostAddr]) -> None:
        reader, writer = await asyncio.open_connection(sock=sock)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                query = await asyncio.wait_for(_read_message(reader), IDLE_TIMEOUT)
                if query is None:
                    return
                answer = await self._directory_answer(query)
                if answer is None and upstream is not None:
                    answer = await _relay(upstream, query)
                    if answer is None:  # the nameserver closed an idle connection
                        upstream[1].close()
                        upstream = None
                if answer is None:
                    upstream = await self._open_upstream(nameservers)
                    answer = await _relay(upstream, query)
                    if answer is None:
                        return  # the nameserver went away: so does the guest's connection
                writer.write(len(answer).to_bytes(2, "big") + answer)
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
            log.debug("dns over tcp: %s", e)
        finally:
            writer.close()
            if upstream is not None:
                upstream[1].close()

    async def _open_upstream(
        self, nameservers: list[HostAddr]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        last: OSError = OSError("no nameserver")
        for host, port in nameservers:
            bind = self.outbound.get(socket.AF_INET6 if ":" in host else socket.AF_INET)
            opening = asyncio.open_connection(
                host, port, local_addr=(bind, 0) if bind is not None else None
            )
            try:
                return await asyncio.wait_for(opening, UPSTREAM_TIMEOUT)
            except OSError as e:  # TimeoutError included
                last = e
        raise last

    async def _directory_answer(self, query: bytes) -> bytes | None:
        """The directory's answer, or None: not a directory name."""
        answered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def send(reply: bytes) -> None:
            if not answered.done():
                answered.set_result(reply)

        if not self.directory.take(query, send):
            return None
        return await answered


async def _read_message(reader: asyncio.StreamReader) -> bytes | None:
    """One length-prefixed message; None at a clean end of stream."""
    head = await reader.read(2)
    if not head:
        return None
    if len(head) == 1:
        head += await reader.readexactly(1)
    return await reader.readexactly(int.from_bytes(head, "big"))


async def _relay(
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter], query: bytes
) -> bytes | None:
    """The nameserver's answer to query; None if it closed (or reset) the connection."""
    reader, writer = upstream
    try:
        writer.write(len(query).to_bytes(2, "big") + query)
        await writer.drain()
        return await asyncio.wait_for(_read_message(reader), UPSTREAM_TIMEOUT)
    except (ConnectionError, asyncio.IncompleteReadError):
        return None
