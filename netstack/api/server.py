"""The API socket: AF_UNIX stream, mode 0600, one request per connection, one compact
JSON reply, then close. A request may arrive in pieces; it is complete when a JSON
value parses, at EOF, after a quiet spell, or at 4096 bytes.

The listener and its clients are nonblocking sockets on the runtime's host epoll and
their deadlines sit in the stack's timer queue, like a flow's: no asyncio (whose import
costs start-up time and resident memory), and a slow or silent client never stalls the
data path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
from collections.abc import Callable
from typing import Protocol

from netstack.api import commands
from netstack.host.loop import EventHandler
from netstack.log import get_logger
from netstack.stack.timers import TimerQueue

log = get_logger(__name__)

FIRST_BYTE_TIMEOUT = 5.0
QUIET_TIMEOUT = 0.5
WRITE_TIMEOUT = 5.0
ACCEPT_PAUSE = 0.1  # out of fds: accept again after this, not in a busy loop
MAX_CLIENTS = 64
DISCARD_READS = 16
SUN_PATH_MAX = 108


class ApiHost(Protocol):
    """What the server needs from the runtime: readiness events and timers."""

    @property
    def timers(self) -> TimerQueue: ...

    def register(self, fd: int, events: int, handler: EventHandler) -> None: ...

    def modify(self, fd: int, events: int) -> None: ...

    def unregister(self, fd: int) -> None: ...


def bind_api_socket(path: str) -> socket.socket:
    """Bind and listen now (before ready-fd); raises OSError or ValueError."""
    if len(path.encode()) >= SUN_PATH_MAX:
        raise ValueError(f"API socket path too long ({len(path.encode())} >= {SUN_PATH_MAX})")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(MAX_CLIENTS)
    sock.setblocking(False)
    return sock


class ApiServer:
    def __init__(
        self, sock: socket.socket, path: str, handle: Callable[[bytes], bytes], host: ApiHost
    ) -> None:
        self.sock: socket.socket | None = sock
        self.path = path
        self.handle = handle
        self.host = host
        self.clients: set[ApiClient] = set()
        self._paused_until: float | None = None

    def start(self) -> None:
        assert self.sock is not None
        self.host.register(self.sock.fileno(), select.EPOLLIN, self)

    # the listener's own deadline: the end of a pause after EMFILE
    @property
    def deadline(self) -> float | None:
        return self._paused_until

    def on_timer(self, now: float) -> None:
        if self._paused_until is not None and now >= self._paused_until and self.sock:
            self._paused_until = None
            self.host.register(self.sock.fileno(), select.EPOLLIN, self)

    def on_events(self, events: int, now: float) -> None:
        sock = self.sock
        for _ in range(MAX_CLIENTS):
            if sock is None:
                return
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.debug("api accept: %s", e)
                    continue
                log.warning("api accept: %s; pausing", e)
                self.host.unregister(sock.fileno())
                self._paused_until = now + ACCEPT_PAUSE
                self.host.timers.touch(self)
                return
            if len(self.clients) >= MAX_CLIENTS:
                conn.close()
                continue
            conn.setblocking(False)
            client = ApiClient(self, conn, now)
            self.clients.add(client)
            self.host.register(conn.fileno(), select.EPOLLIN, client)
            self.host.timers.touch(client)

    def close(self) -> None:
        for client in list(self.clients):
            client.close()
        sock = self.sock
        if sock is not None:
            self.sock = None
            self.host.unregister(sock.fileno())
            sock.close()
        self.host.timers.forget(self)
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class ApiClient:
    """One connection: read the request, then write the reply, each with a deadline."""

    def __init__(self, server: ApiServer, sock: socket.socket, now: float) -> None:
        self.server = server
        self.sock: socket.socket | None = sock
        self.request = b""
        self.reply: memoryview | None = None  # what is left to write, once answered
        self._deadline: float | None = now + FIRST_BYTE_TIMEOUT

    @property
    def deadline(self) -> float | None:
        return self._deadline

    def on_timer(self, now: float) -> None:
        if self._deadline is None or now < self._deadline:
            return
        if self.reply is None:
            self._answer(now)  # quiet (or silent) for too long: what came is the request
        else:
            log.debug("api client: reply not taken within %s s", WRITE_TIMEOUT)
            self.close()

    def on_events(self, events: int, now: float) -> None:
        sock = self.sock
        if sock is None:
            return
        if self.reply is not None:
            self._write(now)
            return
        try:
            chunk = sock.recv(commands.MAX_REQUEST - len(self.request))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.debug("api client: %s", e)
            self.close()
            return
        self.request += chunk
        if (
            not chunk
            or len(self.request) >= commands.MAX_REQUEST
            or commands.parse_complete(self.request) is not None
        ):
            self._answer(now)
            return
        self._deadline = now + QUIET_TIMEOUT
        self.server.host.timers.touch(self)

    def _answer(self, now: float) -> None:
        log.debug("api_handler: got request: %r", self.request[:200])
        try:
            reply = self.server.handle(self.request)
        except Exception:
            log.exception("api client failed")
            self.close()
            return
        self.reply = memoryview(reply)
        self._deadline = now + WRITE_TIMEOUT
        self._write(now)

    def _write(self, now: float) -> None:
        sock, reply = self.sock, self.reply
        assert sock is not None and reply is not None
        while reply:
            try:
                sent = sock.send(reply)
            except (BlockingIOError, InterruptedError):
                # the rest goes when the client reads: wait for room, until the deadline
                self.server.host.modify(sock.fileno(), select.EPOLLOUT)
                self.server.host.timers.touch(self)
                self.reply = reply
                return
            except OSError as e:
                log.debug("api client: %s", e)
                break
            reply = reply[sent:]
        self._discard_input(sock)
        self.close()

    @staticmethod
    def _discard_input(sock: socket.socket) -> None:
        """Read what is left of an over-long request: a socket closed with unread
        bytes resets the connection, and the client would lose our reply."""
        for _ in range(DISCARD_READS):
            try:
                if not sock.recv(65536):
                    return
            except OSError:
                return

    def close(self) -> None:
        sock = self.sock
        if sock is None:
            return
        self.sock = None
        self._deadline = None
        self.server.clients.discard(self)
        self.server.host.unregister(sock.fileno())
        self.server.host.timers.forget(self)
        sock.close()
