"""The API socket's server on its own (netstack/api/server.py): real AF_UNIX sockets,
a real epoll and the stack's timer queue driven with a clock the test moves, so the
deadlines (first byte, quiet spell, a reply nobody reads) are tested without waiting."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from netstack.api import server
from netstack.api.server import ApiServer, bind_api_socket
from netstack.host.loop import EventHandler
from netstack.stack.timers import TimerQueue


class Host:
    """The runtime's part: an epoll with handlers, and the timer queue."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.handlers: dict[int, EventHandler] = {}
        self._timers = TimerQueue()
        self.now = 1000.0

    @property
    def timers(self) -> TimerQueue:
        return self._timers

    def register(self, fd: int, events: int, handler: EventHandler) -> None:
        self.epoll.register(fd, events)
        self.handlers[fd] = handler

    def modify(self, fd: int, events: int) -> None:
        self.epoll.modify(fd, events)

    def unregister(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            self.epoll.unregister(fd)

    def turn(self, advance: float = 0.0) -> None:
        """One loop turn: ready events, then the timers due after `advance` seconds."""
        for fd, ev in self.epoll.poll(0.05):
            handler = self.handlers.get(fd)
            if handler is not None:
                handler.on_events(ev, self.now)
        self.now += advance
        self._timers.run(self.now)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Host, ApiServer, list[bytes]]]:
    host = Host()
    seen: list[bytes] = []
    replies = {b"big": b"x" * (4 << 20)}

    def handle(request: bytes) -> bytes:
        seen.append(request)
        return replies.get(request.strip(), b'{"return":{}}')

    path = str(tmp_path / "api.sock")
    srv = ApiServer(bind_api_socket(path), path, handle, host)
    srv.start()
    yield host, srv, seen
    srv.close()
    host.epoll.close()


def client(srv: ApiServer) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(srv.path)
    return s


def read_all(s: socket.socket, host: Host) -> bytes:
    s.setblocking(False)
    data = b""
    for _ in range(10000):
        host.turn()
        try:
            chunk = s.recv(1 << 20)
        except BlockingIOError:
            continue
        if not chunk:
            return data
        data += chunk
    raise AssertionError("no EOF")


def test_a_reply_larger_than_the_socket_buffer_arrives_whole(
    served: tuple[Host, ApiServer, list[bytes]],
) -> None:
    host, srv, _ = served
    s = client(srv)
    s.sendall(b"big")
    s.shutdown(socket.SHUT_WR)
    assert read_all(s, host) == b"x" * (4 << 20)
    assert not srv.clients and len(host.handlers) == 1  # only the listener


def test_a_reply_nobody_reads_is_dropped_at_the_write_deadline(
    served: tuple[Host, ApiServer, list[bytes]],
) -> None:
    host, srv, _ = served
    s = client(srv)
    s.sendall(b"big")
    s.shutdown(socket.SHUT_WR)
    host.turn()
    host.turn()
    assert len(srv.clients) == 1  # waiting for room
    host.turn(server.WRITE_TIMEOUT - 0.1)
    assert len(srv.clients) == 1
    host.turn(0.2)
    assert not srv.clients
    s.close()


def test_a_silent_client_gets_the_answer_to_nothing_at_the_first_byte_deadline(
    served: tuple[Host, ApiServer, list[bytes]],
) -> None:
    host, srv, seen = served
    s = client(srv)
    host.turn()
    host.turn(server.FIRST_BYTE_TIMEOUT - 0.1)
    assert not seen
    host.turn(0.2)
    assert seen == [b""]
    assert read_all(s, host) == b'{"return":{}}'


def test_a_pause_after_part_of_a_request_ends_it(
    served: tuple[Host, ApiServer, list[bytes]],
) -> None:
    host, srv, seen = served
    s = client(srv)
    s.sendall(b'{"execute":')
    host.turn()
    host.turn()
    host.turn(server.QUIET_TIMEOUT + 0.1)
    assert seen == [b'{"execute":']
    assert read_all(s, host) == b'{"return":{}}'


def test_clients_over_the_limit_are_closed_and_the_rest_served(
    served: tuple[Host, ApiServer, list[bytes]],
) -> None:
    host, srv, seen = served
    held = [client(srv) for _ in range(server.MAX_CLIENTS)]
    host.turn()
    assert len(srv.clients) == server.MAX_CLIENTS
    extra = client(srv)
    host.turn()
    extra.settimeout(5)
    assert extra.recv(10) == b""  # closed without a reply
    held[0].sendall(b"{}")
    assert read_all(held[0], host) == b'{"return":{}}'
    for s in held:
        s.close()
    for _ in range(5):
        host.turn()
    assert not srv.clients  # a client that went away is let go (EOF, answer, EPIPE)
    assert len(seen) == server.MAX_CLIENTS
