"""Answering trapped calls: the mechanics every decision shares (netstack.directory.
supervisor makes the decisions).

A notification is received into the container's in-flight memory (netstack.directory.
inflight), handled, and answered (SEND: a value, an error, or CONTINUE into the
caller's netns); a call held for later (a connect waiting, an accept with nothing to
accept) keeps its slot and is bounded per container. Here too: reading and writing the
caller's memory (always ID_VALID after a read), a copy of the caller's socket, a caught
signal ending a held call, and a call that makes the caller's socket nonblocking for a
moment without ever leaving it so.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import ipaddress
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from netstack.directory import notify
from netstack.directory import sockaddr as sa
from netstack.directory.hostsock import Watch, caught_signal_pending, container_addresses
from netstack.directory.inflight import InFlight
from netstack.directory.oci import ContainerState
from netstack.directory.registry import effective_labels
from netstack.directory.sockaddr import SockAddr
from netstack.log import get_logger
from netstack.stack.config import NetworkConfig
from netstack.stack.policy import Policy

log = get_logger("netstackd")

MAX_IN_FLIGHT = 256  # async notifications per container (waiting connects, accepts)
BATCH = 64  # notifications taken per wakeup
SYNC_WAKE_UP = os.environ.get("NETSTACKD_SYNC_WAKE_UP", "1") != "0"


class Continue(Exception):
    """Let the kernel run the call in the caller's network namespace."""


class Fail(Exception):
    def __init__(self, err: int) -> None:
        super().__init__(os.strerror(err))
        self.err = err


class Container:
    """One supervised container (one seccomp listener)."""

    def __init__(self, state: ContainerState, owner: int, inflight: InFlight) -> None:
        self.state = state
        self.inflight = inflight
        self.poll = select.poll()  # is a notification waiting (or no task left: POLLHUP)?
        self.poll.register(state.listener, select.POLLIN)
        self.owner = owner
        self.labels = effective_labels(state.labels)
        self.netns = os.stat(f"/proc/{state.pid}/ns/net").st_ino
        config = NetworkConfig(cidr=ipaddress.IPv4Network(state.cidr),
                               host_loopback=state.host_loopback, ipv6=state.ipv6)
        self.config = config
        self.policy = Policy(config, lambda: [])
        self.in_flight = 0
        self.since = time.time()
        self._addresses: dict[int, bytes] = {}

    @property
    def listener(self) -> int:
        return self.state.listener

    def address(self, family: int, pid: int) -> bytes:
        """The container's own address (as its sockets see it) in `family`."""
        if family not in self._addresses:
            self._addresses.update(container_addresses(pid))
        ip = self._addresses.get(family)
        if ip is None and family == socket.AF_INET6 and socket.AF_INET in self._addresses:
            return bytes(10) + b"\xff\xff" + self._addresses[socket.AF_INET]
        if ip is None:
            ip = self.config.guest if family == socket.AF_INET else bytes(16)
        return ip


class HeldUntilReadable:
    """A call held until a socket we share with the caller is readable (an accept with
    nothing to accept yet): `attempt` answers it and says True, or says False to keep
    waiting. Dropped when the calling thread exits (its pidfd); a caught signal ends it
    with EINTR, nothing having happened."""

    def __init__(self, desk: CallDesk, c: Container, n: notify.Notification,
                 copy: socket.socket, pidfd: int, attempt: Callable[[], bool],
                 what: str) -> None:
        self.desk, self.c, self.n, self.copy, self.pidfd = desk, c, n, copy, pidfd
        self.attempt, self.what = attempt, what
        self.watch = Watch(copy.fileno(), select.EPOLLIN, self._readable)
        asyncio.get_running_loop().add_reader(pidfd, self._finish)
        desk.wait_begins(c, n, self.interrupt)

    def _readable(self) -> None:
        desk, c, n = self.desk, self.c, self.n
        try:
            if not notify.id_valid(c.listener, n.id):
                raise ProcessLookupError
            if not self.attempt():
                return  # someone else took it: keep waiting
        except ProcessLookupError:
            desk.stats["caller_gone"] += 1
        except Fail as e:
            desk._respond(c, n, error=e.err)
        except Exception:
            desk.stats["errors"] += 1
            log.exception(self.what)
            desk._respond(c, n, error=errno.ECONNABORTED)
        self._finish()

    def _finish(self) -> None:
        if self.copy.fileno() < 0:
            return
        self.watch.close()
        asyncio.get_running_loop().remove_reader(self.pidfd)
        os.close(self.pidfd)
        self.copy.close()
        self.desk.wait_ends(self.c, self.n)

    def interrupt(self) -> None:
        self._finish()
        self.desk._respond(self.c, self.n, error=errno.EINTR)


class CallDesk:
    """Supervised containers and their calls, short of deciding what a call means."""

    def __init__(self) -> None:
        self.containers: dict[int, Container] = {}
        self.stats: dict[str, int] = {k: 0 for k in (
            "traps", "continued", "caller_gone", "errors", "over_limit", "containers",
            "interrupted")}
        self.on_container_gone: Callable[[Container], None] = lambda c: None
        self.held: dict[int, tuple[Container, notify.Notification,
                                   Callable[[], None] | None]] = {}
        self._slots: dict[int, tuple[Container, int]] = {}  # in-flight memory, by call id
        self._tasks: set[asyncio.Task[None]] = set()

    def _handle(self, c: Container, n: notify.Notification) -> None:
        """Decide and answer one call (the supervisor's)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def _nonblocking_for_call(self, n: notify.Notification, copy: socket.socket
                              ) -> Iterator[None]:
        """Make the caller's socket (a file we share with it) nonblocking while we act on
        it, so we never block; its flags are saved in the call's in-flight slot first,
        so a successor puts them back if we die in between."""
        fd = copy.fileno()
        old = fcntl.fcntl(fd, fcntl.F_GETFL)
        where = self._slots.get(n.id)
        if where is not None:
            where[0].inflight.save_flags(where[1], old)
        fcntl.fcntl(fd, fcntl.F_SETFL, old | os.O_NONBLOCK)
        try:
            yield
        finally:
            fcntl.fcntl(fd, fcntl.F_SETFL, old)
            if where is not None:
                where[0].inflight.flags_restored(where[1])

    def adopt(self, state: ContainerState, owner: int,
              inflight: InFlight | None = None) -> Container:
        """Supervise a container's listener; inflight: the memory of calls an earlier
        netstackd received (from the keeper), else fresh."""
        c = Container(state, owner, inflight or InFlight(MAX_IN_FLIGHT + BATCH))
        if SYNC_WAKE_UP:
            notify.sync_wake_up(c.listener)
        self.containers[c.listener] = c
        self.stats["containers"] += 1
        asyncio.get_running_loop().add_reader(c.listener, self._readable, c)
        log.info("supervising %s (pid %d, name %s, labels %s)", state.container, state.pid,
                 state.name, c.labels)
        return c

    def drop(self, c: Container) -> None:
        if self.containers.pop(c.listener, None) is None:
            return
        asyncio.get_running_loop().remove_reader(c.listener)
        os.close(c.listener)
        c.inflight.close()
        log.info("container %s gone", c.state.container)
        self.on_container_gone(c)

    def close(self) -> None:
        """Stop supervising (the keeper, if any, still holds every listener)."""
        self.on_container_gone = lambda c: None
        for c in list(self.containers.values()):
            self.drop(c)

    def _readable(self, c: Container) -> None:
        events = c.poll
        for _ in range(BATCH):  # a batch, then back to the loop
            ready = events.poll(0)
            if not ready:
                return
            if not ready[0][1] & select.POLLIN:  # POLLHUP: no task uses the filter
                self.drop(c)
                return
            got = c.inflight.receive(c.listener)
            if got is None:
                continue
            self.stats["traps"] += 1
            self._handle_in_slot(c, *got)

    # ------------------------------------------------------------- dispatch
    def _handle_in_slot(self, c: Container, slot: int, n: notify.Notification) -> None:
        """Handle a call received into slot; the slot is free once it is answered."""
        self._slots[n.id] = (c, slot)
        try:
            self._handle(c, n)
        finally:
            if n.id not in self.held:
                self._slots.pop(n.id, None)
                c.inflight.release(slot)

    def _restore_flags(self, c: Container, slot: int, n: notify.Notification) -> None:
        """Put back the file flags an earlier netstackd changed and died with."""
        flags = c.inflight.saved_flags(slot)
        if flags is None:
            return
        try:
            pidfd = notify.pidfd_open(n.pid)
            try:
                fd = notify.pidfd_getfd(pidfd, n.args[0] & 0xFFFFFFFF)
            finally:
                os.close(pidfd)
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)
            finally:
                os.close(fd)
        except OSError as e:
            log.warning("could not restore the flags of a listener: %s", e)
        c.inflight.flags_restored(slot)

    def answer_left_over(self, c: Container) -> int:
        """Calls an earlier netstackd received and never answered: handled now (the
        ones still waiting). Returns how many."""
        count = 0
        for slot, n in c.inflight.left_over():
            self._restore_flags(c, slot, n)
            if notify.id_valid(c.listener, n.id):
                count += 1
                self.stats["traps"] += 1
                self._handle_in_slot(c, slot, n)
            else:
                c.inflight.release(slot)
        return count

    def _respond(self, c: Container, n: notify.Notification, val: int = 0, error: int = 0,
                 cont: bool = False) -> None:
        try:
            if not notify.respond(c.listener, n.id, val, error, cont):
                self.stats["caller_gone"] += 1
        except OSError as e:
            log.warning("respond: %s", e)

    def _socket_copy(self, n: notify.Notification, pidfd: int,
                     copies: list[socket.socket]) -> socket.socket:
        """The caller's socket (same open file), closed with `copies` after the call."""
        try:
            fd = notify.pidfd_getfd(pidfd, n.args[0] & 0xFFFFFFFF)
        except OSError as e:
            if e.errno == errno.ESRCH:
                raise ProcessLookupError from None
            raise Continue from None  # EBADF and the like: the kernel says it best
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            raise Continue from None  # not a socket
        copies.append(sock)
        return sock

    def _read(self, c: Container, n: notify.Notification, address: int, length: int) -> bytes:
        """Caller memory, then ID_VALID (so the bytes are the blocked caller's)."""
        try:
            data = notify.read_memory(n.pid, address, length)
        except OSError as e:
            if e.errno == errno.ESRCH:
                raise ProcessLookupError from None
            raise Fail(errno.EFAULT) from None
        if not notify.id_valid(c.listener, n.id):
            raise ProcessLookupError
        return data

    def _write(self, n: notify.Notification, *pieces: tuple[int, bytes]) -> None:
        try:
            notify.write_memory(n.pid, *pieces)
        except OSError as e:
            if e.errno == errno.ESRCH:
                raise ProcessLookupError from None
            raise Fail(errno.EFAULT) from None

    @staticmethod
    def _socket_inode(n: notify.Notification) -> int | None:
        """The inode of the socket the call names (args[0]), from /proc without a copy;
        None if it is no socket. (A racing dup2 can change it: only used to pick calls
        that are not ours, where letting the kernel run them is safe anyway.)"""
        try:
            target = os.readlink(f"/proc/{n.pid}/fd/{n.args[0] & 0xFFFFFFFF}")
        except OSError:
            return None
        if not target.startswith("socket:["):
            return None
        return int(target[8:-1])

    def _write_sockaddr(self, c: Container, n: notify.Notification, address: int,
                        len_address: int, view: SockAddr) -> None:
        """As the kernel does: the address truncated to *len, *len set to its size."""
        raw_len = self._read(c, n, len_address, 4)
        room = struct.unpack("=i", raw_len)[0]
        if room < 0:
            raise Fail(errno.EINVAL)
        data = sa.emit(view)
        length = (len_address, struct.pack("=i", len(data)))
        self._write(n, *(((address, data[:room]), length) if room else (length,)))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task we keep a reference to until it ends (the loop keeps only weak ones)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def wait_begins(self, c: Container, n: notify.Notification,
                    interrupt: Callable[[], None] | None) -> None:
        """A call we hold. `interrupt`, if any, answers it as a signal would (EINTR)
        and stops its waiter."""
        if n.id not in self.held:  # (a call can pass from one waiter to the next)
            c.in_flight += 1
        self.held[n.id] = (c, n, interrupt)

    def wait_ends(self, c: Container, n: notify.Notification) -> None:
        if self.held.pop(n.id, None) is not None:
            c.in_flight -= 1
            where = self._slots.pop(n.id, None)
            if where is not None:
                where[0].inflight.release(where[1])

    def interrupt_signalled(self) -> None:
        """A held caller with a caught signal pending gets EINTR, as a blocking call
        would (the filter's WAIT_KILLABLE_RECV keeps signals from doing it, which
        spares Go's SIGURG storms but would make a server in accept() deaf to ^C)."""
        for c, n, interrupt in list(self.held.values()):
            if interrupt is not None and caught_signal_pending(n.pid):
                self.stats["interrupted"] += 1
                try:
                    interrupt()
                except (ProcessLookupError, Fail):
                    pass
                self.wait_ends(c, n)

    def container_by_id(self, container: str) -> Container | None:
        return next((c for c in self.containers.values() if c.state.container == container),
                    None)
