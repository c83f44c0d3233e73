"""Host TCP sockets behind the TCP core's HostStream interface.

A socket lives in the runtime's edge-triggered epoll: an edge means "new data" or
"room again", so bytes that wait in the receive queue for the guest's ACK do not keep
waking the loop. Host data is peeked at an offset (SO_PEEK_OFF, Linux 6.9+; a copy-
based fallback before that) and dropped without a copy once acknowledged.
"""

from __future__ import annotations

import errno
import select
import socket
import struct

from netstack import _fast
from netstack.host.interfaces import SocketRegistry
from netstack.log import get_logger
from netstack.stack.hostio import HostAddr
from netstack.tcp.connection import TcpConnection

log = get_logger(__name__)

SO_PEEK_OFF = 42
_LINGER_RESET = struct.pack("ii", 1, 0)

TCP_ESTABLISHED = 1  # tcp_info's tcpi_state
STREAM_EVENTS = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET


class HostTcpStream:
    def __init__(
        self,
        runtime: SocketRegistry,
        conn: TcpConnection,
        targets: list[HostAddr],
        accepted: socket.socket | None = None,
        opened_in_c: bool = False,
    ) -> None:
        """Connect to the first of targets, or wrap an accepted (connected) socket; or
        one the C flow path connected, tuned and added to the loop's epoll already
        (opened_in_c: csrc/flow_syn.c)."""
        self.runtime = runtime
        self.conn = conn
        self.targets = targets
        self.next_target = 0
        self.sock: socket.socket | None = None
        self.connecting = accepted is None
        self.peek_off = 0
        self.peek_off_supported = True
        self.peer_closed = False
        if accepted is None:
            self._start_connect()
            return
        self.sock = accepted
        if opened_in_c:
            runtime.registered_in_c(accepted.fileno(), self)
            return
        accepted.setblocking(False)
        self._tune(accepted)
        runtime.register(accepted.fileno(), STREAM_EVENTS, self)

    def _tune(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        except OSError:
            self.peek_off_supported = False

    def _start_connect(self) -> None:
        last_err = errno.EHOSTUNREACH
        while self.next_target < len(self.targets):
            host, port = self.targets[self.next_target]
            self.next_target += 1
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            try:
                sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            except OSError as e:  # out of fds, for one
                last_err = e.errno or errno.EMFILE
                continue
            try:
                self._tune(sock)
                self.runtime.bind_outbound(sock, family)
                err = sock.connect_ex((host, port))
                if err in (0, errno.EINPROGRESS):
                    self.runtime.register(sock.fileno(), STREAM_EVENTS, self)
                    self.sock = sock
                    return
            except OSError as e:  # --outbound-addr gone, for one
                err = e.errno or errno.EADDRNOTAVAIL
            sock.close()
            last_err = err
        self.runtime.soon(self._report_failure, last_err)

    def connected_at_once(self) -> bool:
        """Whether the connect is complete already (a loopback connect is when connect()
        returns, EINPROGRESS all the same); if so the stream is connected from now, and
        the epoll's writable event that follows is an ordinary one."""
        sock = self.sock
        if not self.connecting or sock is None:
            return False
        try:
            state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
        except OSError:
            return False
        if state != TCP_ESTABLISHED:
            return False
        self.connecting = False
        return True

    def _report_failure(self, err: int) -> None:
        self.runtime.stack.tcp.host_connected(self.conn, False, err, self.runtime.now())

    def on_events(self, events: int, now: float) -> None:
        conn = self.conn
        table = self.runtime.stack.tcp
        if conn.fast is not None:
            conn.fast.release(conn, now)  # an event the C flow path left to us
        sock = self.sock
        if sock is None:
            table.after(conn)
            return
        if self.connecting:
            if not events & (select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP):
                return
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._drop_socket()
                if self.next_target < len(self.targets):
                    self._start_connect()  # the next nameserver, for instance
                    return
                table.host_connected(conn, False, err, now)
                return
            self.connecting = False
            # what the host sent already is noted before host_connected: its SYN-ACK
            # may hand the connection to C, which then keeps this state
            if events & (select.EPOLLRDHUP | select.EPOLLHUP):
                self.peer_closed = True
            if events & (select.EPOLLIN | select.EPOLLRDHUP):
                conn.on_host_readable(now)
            table.host_connected(conn, True, 0, now)
            return
        if events & select.EPOLLERR:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                conn.on_host_error(err, now)
                table.after(conn)
                return
        if events & (select.EPOLLRDHUP | select.EPOLLHUP):
            self.peer_closed = True
        if events & (select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP):
            conn.on_host_readable(now)
        if events & select.EPOLLOUT and self.sock is not None:
            conn.on_host_writable(now)
        table.after(conn)

    # ------------------------------------------------------ HostStream interface
    def send(self, data: memoryview) -> int:
        assert self.sock is not None
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0

    def send_space(self) -> int:
        if self.sock is None:
            return 0
        n = int(_fast.sock_send_space(self.sock.fileno()))
        return max(n, 0)

    def peek_into(self, buf: memoryview, offset: int) -> int | None:
        sock = self.sock
        assert sock is not None
        if not self.peek_off_supported:
            return self._peek_by_copy(buf, offset)
        if offset != self.peek_off:
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, offset)
            self.peek_off = offset
        try:
            n = sock.recv_into(buf, len(buf), socket.MSG_PEEK)
        except BlockingIOError:
            return None
        self.peek_off += n
        return n

    def _peek_by_copy(self, buf: memoryview, offset: int) -> int | None:
        assert self.sock is not None
        try:
            data = self.sock.recv(offset + len(buf), socket.MSG_PEEK)
        except BlockingIOError:
            return None
        if len(data) <= offset:
            return 0 if not data or len(data) < offset else None
        n = len(data) - offset
        buf[:n] = data[offset:]
        return n

    def discard(self, n: int) -> None:
        assert self.sock is not None
        done = int(_fast.discard(self.sock.fileno(), n))
        if done < 0:
            raise OSError(-done, errno.errorcode.get(-done, "discard failed"))
        self.peek_off = max(0, self.peek_off - done)

    def shutdown_write(self) -> None:
        if self.sock is not None:
            self.sock.shutdown(socket.SHUT_WR)

    def close(self, reset: bool = False) -> None:
        if self.sock is None:
            return
        if reset:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
        self._drop_socket()

    def _drop_socket(self) -> None:
        sock = self.sock
        if sock is None:
            return
        self.sock = None
        self.runtime.unregister(sock.fileno())
        sock.close()
