"""The syscall path's connects: a trapped connect() decided and answered.

A connect to a VIP goes to an instance the directory picks (labels, round robin): our
own host socket connects to it and takes the caller's fd (ADDFD); one to anywhere else
is the TAP stack's policy (netstack.stack.policy): the container's loopback, subnet and
DNS continue into its netns, the rest gets a direct host socket (outbound bypass). A
blocking caller whose service is not served yet waits (bounded); a blocking connect in
progress is answered when ours completes, EINTR on a signal as the kernel does. A
refused connect to an instance whose listener closed since the last sweep sweeps at
once and decides again. ConnectDesk is the middle of Supervisor
(netstack.directory.supervisor): CallDesk below it receives and answers calls, the
Supervisor above it adds bind, listen, accept, names and the socket table's upkeep.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
import time

from netstack.directory import notify
from netstack.directory import sockaddr as sa
from netstack.directory.calls import MAX_IN_FLIGHT, CallDesk, Container, Continue, Fail
from netstack.directory.hostsock import (
    HostSocket,
    Kind,
    Watch,
    blocking,
    copy_options,
    fd_cloexec,
    in_an_epoll,
)
from netstack.directory.registry import Directory, Pick
from netstack.directory.sockaddr import SockAddr
from netstack.directory.store import Instance
from netstack.log import get_logger
from netstack.stack.config import DNS6
from netstack.tcp.interfaces import Refusal

log = get_logger("netstackd")

CONNECT_TIMEOUT_S = 75.0
_REFUSAL_ERRNO = {
    Refusal.NET_UNREACHABLE: errno.ENETUNREACH,
    Refusal.HOST_UNREACHABLE: errno.EHOSTUNREACH,
    Refusal.RESET: errno.ECONNREFUSED,
}


class ConnectDesk(CallDesk):
    def __init__(self, directory: Directory, connect_wait: float) -> None:
        self.directory = directory
        self.connect_wait = connect_wait
        super().__init__()
        self.sockets: dict[int, HostSocket] = {}  # by socket inode
        self.clients_by_port: dict[int, int] = {}  # client's host port -> inode
        self._waiters: list[asyncio.Future[None]] = []
        directory.changed.append(self._wake_waiters)

    def _forget_dead_listeners(self) -> bool:
        """A connect to an instance was refused: forget the instances whose listener is
        gone; True if there was one (the supervisor's, with its sweep)."""
        raise NotImplementedError

    def _on_host_socket(self, c: Container, n: notify.Notification, copy: socket.socket,
                        rec: HostSocket, addr: SockAddr) -> None:
        """A call on a socket we installed: never CONTINUEd (it is a host socket)."""
        if n.nr == notify.SYS_BIND:
            raise Fail(errno.EINVAL)
        if rec.kind == Kind.BOUND:
            self._connect_bound(c, n, copy, rec, addr)
            return
        if rec.kind != Kind.CLIENT or rec.target is None:
            raise Fail(errno.EISCONN if rec.kind == Kind.ACCEPTED else errno.EINVAL)
        # A repeated or restarted (signal) connect: the kernel's answer on our target.
        err = self._connect_shared(n, copy, rec.target)
        if err == errno.EISCONN and blocking(copy.fileno()):
            err = 0
        if err in (errno.EALREADY, errno.EINPROGRESS) and blocking(copy.fileno()):
            self._wait_connected(c, n, copy.dup(), None)
            return
        if err:
            raise Fail(err)
        self._respond(c, n)

    def _connect_shared(self, n: notify.Notification, copy: socket.socket,
                        target: tuple[str, int]) -> int:
        """connect() on a socket the caller holds too, without ever blocking us."""
        with self._nonblocking_for_call(n, copy):
            return copy.connect_ex(sa.host_tuple(copy.family, *target))

    def _connect_bound(self, c: Container, n: notify.Notification, copy: socket.socket,
                       rec: HostSocket, addr: SockAddr) -> None:
        """A named process connects from a socket it bound first (a fixed source port):
        that socket is already ours, on the host; it connects where a fresh one would,
        except that nothing can go to the container's netns from it."""
        ip, port = addr.unmapped()
        if self.directory.is_vip(ip):
            pick = self.directory.pick(ip, port, c.labels)
            if not isinstance(pick, Instance):
                self.stats["denied" if pick is Pick.DENIED else "unknown_vip"] += 1
                raise Fail(errno.ECONNREFUSED)
            self.stats["bypassed_connects"] += 1
            target, service = (pick.host, pick.host_port), pick.name
        else:
            decision = c.policy.tcp_target(ip, port)
            if isinstance(decision, Refusal):
                raise Fail(_REFUSAL_ERRNO[decision])
            if not isinstance(decision, list) or ip == c.config.dns or ip == DNS6:
                raise Fail(errno.ENETUNREACH)  # the netns's own: not from a host socket
            self.stats["outbound_bypassed"] += 1
            target, service = decision[0], None
        own4 = c.address(socket.AF_INET, n.pid)
        rec.kind, rec.peer, rec.target, rec.service = Kind.CLIENT, addr, target, service
        rec.own = c.address(socket.AF_INET6, n.pid) if len(ip) == 16 else own4
        # the port it bound is the one it and its server see (the host's is ours)
        rec.own4, rec.established = own4, False
        rec.local_port = rec.local.port if rec.local else copy.getsockname()[1]
        self.clients_by_port[copy.getsockname()[1]] = os.fstat(copy.fileno()).st_ino
        err = self._connect_shared(n, copy, target)
        if err == errno.EINPROGRESS and blocking(copy.fileno()):
            self._wait_connected(c, n, copy.dup(), None)
            return
        if err and err != errno.EINPROGRESS:
            raise Fail(err)
        rec.established = err == 0
        self._respond(c, n, error=err)

    def _connect(self, c: Container, n: notify.Notification, copy: socket.socket,
                 addr: SockAddr) -> None:
        ip, port = addr.unmapped()
        if self.directory.is_vip(ip):
            self._connect_vip(c, n, copy, addr, ip, port)
            return
        if ip == c.config.dns or ip == DNS6:
            raise Continue  # the TAP stack's DNS
        decision = c.policy.tcp_target(ip, port)
        if decision is None:
            raise Continue  # the container's own loopback, subnet, martians
        if isinstance(decision, Refusal):
            raise Fail(_REFUSAL_ERRNO[decision])
        if not isinstance(decision, list):
            raise Continue  # (VIPs of the TAP path: never here, our policy has none)
        self.stats["outbound_bypassed"] += 1
        self._bypass(c, n, copy, addr, decision[0], None)

    def _connect_vip(self, c: Container, n: notify.Notification, copy: socket.socket,
                     addr: SockAddr, vip: bytes, port: int) -> None:
        pick = self.directory.pick(vip, port, c.labels)
        if isinstance(pick, Instance):
            self.stats["bypassed_connects"] += 1
            try:
                self._bypass(c, n, copy, addr, (pick.host, pick.host_port), pick.name)
            except Fail as e:
                if e.err != errno.ECONNREFUSED or not self._forget_dead_listeners():
                    raise
                self._connect_vip(c, n, copy, addr, vip, port)  # fewer instances now
        elif pick is Pick.NOT_SERVED:
            if not blocking(copy.fileno()):
                raise Continue  # EINPROGRESS from the netns; the TAP stack waits
            if c.in_flight >= MAX_IN_FLIGHT:
                self.stats["over_limit"] += 1
                raise Fail(errno.ECONNREFUSED)
            self.stats["waited"] += 1
            self._spawn(self._wait_for_service(c, n, copy.dup(), addr, vip, port))
            # not interruptible: a connect answered EINTR must go on in the background,
            # and there is nothing to connect to yet (the wait is bounded instead)
            self.wait_begins(c, n, None)
        else:
            self.stats["denied" if pick is Pick.DENIED else "unknown_vip"] += 1
            raise Fail(errno.ECONNREFUSED)

    async def _wait_for_service(self, c: Container, n: notify.Notification,
                                copy: socket.socket, addr: SockAddr, vip: bytes,
                                port: int) -> None:
        handed_over = False
        try:
            deadline = time.monotonic() + self.connect_wait
            while True:
                pick = self.directory.pick(vip, port, c.labels)
                if pick is not Pick.NOT_SERVED:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not notify.id_valid(c.listener, n.id):
                    break
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._waiters.append(fut)
                try:
                    await asyncio.wait_for(fut, min(remaining, 1.0))
                except TimeoutError:
                    pass
            if isinstance(pick, Instance):
                self.stats["bypassed_connects"] += 1
                handed_over = self._bypass(c, n, copy, addr, (pick.host, pick.host_port),
                                           pick.name)
            else:
                if pick is Pick.NOT_SERVED:
                    self.stats["wait_timeouts"] += 1
                    err = errno.ETIMEDOUT
                else:
                    self.stats["denied"] += 1
                    err = errno.ECONNREFUSED
                self._respond(c, n, error=err)
        except Fail as e:
            self._respond(c, n, error=e.err)
        except ProcessLookupError:
            self.stats["caller_gone"] += 1
        except asyncio.CancelledError:
            pass  # answered by whoever cancelled
        except Exception:
            self.stats["errors"] += 1
            log.exception("waiting connect")
            self._respond(c, n, error=errno.ECONNREFUSED)
        finally:
            if not handed_over:  # else the connect's waiter holds the call now
                self.wait_ends(c, n)
            copy.close()

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _bypass(self, c: Container, n: notify.Notification, copy: socket.socket,
                addr: SockAddr, target: tuple[str, int], service: str | None) -> bool:
        """Our own host socket, connected to target, in place of the caller's fd.
        True if the call is now held until that connect completes."""
        if not blocking(copy.fileno()) and in_an_epoll(n.pid, copy):
            self.stats["epoll_continued"] += 1
            raise Continue
        host = socket.socket(copy.family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        handed_over = False
        try:
            copy_options(copy, host)
            host.setblocking(False)
            err = host.connect_ex(sa.host_tuple(copy.family, *target))
            if err not in (0, errno.EINPROGRESS):
                raise Fail(err)
            dest_ip, _ = addr.unmapped()
            own4 = c.address(socket.AF_INET, n.pid)
            own = c.address(socket.AF_INET6, n.pid) if len(dest_ip) == 16 else own4
            record = HostSocket(Kind.CLIENT, c.state.container, peer=addr, service=service,
                                target=target, own=own, own4=own4)
            # known before the server can accept it, so accept() finds the client
            record.family, record.local_port = copy.family, host.getsockname()[1]
            record.established = err == 0
            inode = os.fstat(host.fileno()).st_ino
            self.sockets[inode] = record
            self.clients_by_port[record.local_port] = inode
            if not blocking(copy.fileno()):
                self._install(c, n, host, record)
                self._respond(c, n, error=errno.EINPROGRESS if err else 0)
                return False
            if err == 0:
                host.setblocking(True)
                self._install(c, n, host, record)
                self._respond(c, n)
                return False
            if n.id not in self.held and c.in_flight >= MAX_IN_FLIGHT:
                self.stats["over_limit"] += 1
                raise Fail(errno.EAGAIN)
            self._wait_connected(c, n, host, record)
            handed_over = True
            return True
        finally:
            if not handed_over:
                host.close()

    def _wait_connected(self, c: Container, n: notify.Notification, host: socket.socket,
                        record: HostSocket | None) -> None:
        """Answer a blocking connect once our socket's connect completes; record None:
        the socket is already installed (a restarted connect)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def writable() -> None:
            if not done.done():
                done.set_result(None)

        watch = Watch(host.fileno(), select.EPOLLOUT, writable)

        async def finish() -> None:
            redone = False
            try:
                try:
                    await asyncio.wait_for(done, CONNECT_TIMEOUT_S)
                    err = host.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                except TimeoutError:
                    err = errno.ETIMEDOUT
                finally:
                    watch.close()
                if (err == errno.ECONNREFUSED and record is not None and record.service
                        and self._forget_dead_listeners()):
                    # an instance whose listener closed since the last sweep (iperf3
                    # opens a new one after each test): decide again, without it
                    self.wait_ends(c, n)
                    redone = True
                    self._handle(c, n)
                    return
                if err:
                    self._respond(c, n, error=err)
                    return
                if record is not None:
                    record.established = True
                    host.setblocking(True)
                    self._install(c, n, host, record)
                self._respond(c, n)
            except ProcessLookupError:
                self.stats["caller_gone"] += 1
            except Fail as e:
                self._respond(c, n, error=e.err)
            except asyncio.CancelledError:
                pass  # answered by whoever cancelled
            finally:
                if not redone:  # (else the call is the new decision's)
                    self.wait_ends(c, n)
                host.close()

        task = self._spawn(finish())

        def interrupt() -> None:
            """As the kernel does: EINTR, and the connect goes on in the background
            (on our socket, installed now)."""
            task.cancel()
            if record is not None:
                host.setblocking(True)
                self._install(c, n, host, record)
            self._respond(c, n, error=errno.EINTR)

        self.wait_begins(c, n, interrupt)

    def _install(self, c: Container, n: notify.Notification, host: socket.socket,
                 record: HostSocket, newfd: int | None = None, send: bool = False,
                 cloexec: bool | None = None) -> int:
        target_fd = n.args[0] & 0xFFFFFFFF if newfd is None and not send else newfd
        if cloexec is None:
            cloexec = fd_cloexec(n.pid, n.args[0] & 0xFFFFFFFF)
        inode = os.fstat(host.fileno()).st_ino
        self.sockets[inode] = record
        try:
            return notify.addfd(c.listener, n.id, host.fileno(), target_fd, cloexec, send)
        except OSError as e:
            self.sockets.pop(inode, None)
            if e.errno == errno.ENOENT:
                raise ProcessLookupError from None
            raise Fail(e.errno or errno.EBADF) from None
