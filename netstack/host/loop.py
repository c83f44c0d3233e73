"""The small event loop the stack runs on when nothing needs asyncio: one epoll for
readers, a heap of timers, signals through a wakeup fd.

The runtime asks a loop for little: readers on a few fds (the TAP, its own epoll of
host sockets, a pidfd), callbacks soon and later, signal handlers, run and stop.
uvloop gives all that too, but importing it means importing asyncio, and asyncio
imports ssl: ~40 ms of every start and ~10 MiB of resident memory (libcrypto's
tables among it). So without --directory (whose client is asyncio streams) the
runtime runs on this loop; with it, on uvloop.

The wait itself is pluggable (`set_poll`): with the C flow path, the runtime waits in
C (csrc/loop.c), which serves the TAP and host sockets of flows C holds and returns
only the events Python must see; host sockets then live in this loop's epoll (`epoll`).

Same contract as asyncio's for what the runtime uses: callbacks run in the order they
were scheduled; a reader fires while its fd is readable (level-triggered); an
exception in a callback is logged and the loop goes on. Not here: writers,
coroutines, futures, executors, child watchers.
"""

from __future__ import annotations

import heapq
import itertools
import os
import select
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from netstack.log import get_logger

log = get_logger(__name__)

_READ_EVENTS = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR


class EventHandler(Protocol):
    """A host socket's owner on the runtime's epoll (Runtime.register): called with
    the epoll events and the time."""

    def on_events(self, events: int, now: float) -> None: ...


class Handle:
    """A scheduled callback; cancel() keeps it from running."""

    __slots__ = ("callback", "args", "cancelled")

    def __init__(self, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EpollLoop:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._readers: dict[int, Handle] = {}
        self._ready: deque[Handle] = deque()
        self._timers: list[tuple[float, int, Handle]] = []
        self._order = itertools.count()  # equal deadlines run in the order scheduled
        self._signals: dict[int, Handle] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._stopping = False
        self._closed = False
        self.time = time.monotonic
        self._poll: Callable[[float], list[tuple[int, int]]] = self._epoll.poll

    @property
    def epoll(self) -> select.epoll:
        """The loop's epoll: readers are registered in it (data = the fd)."""
        return self._epoll

    def set_poll(self, poll: Callable[[float], list[tuple[int, int]]] | None) -> None:
        """Wait with poll(timeout) instead of epoll.poll: timeout in seconds (-1: no
        limit), returns (fd, events) of readers ready. None: back to epoll.poll."""
        self._poll = self._epoll.poll if poll is None else poll

    # ------------------------------------------------------------ scheduling
    def call_soon(self, callback: Callable[..., Any], *args: Any) -> Handle:
        h = Handle(callback, args)
        self._ready.append(h)
        return h

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Handle:
        return self.call_at(time.monotonic() + delay, callback, *args)

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Handle:
        h = Handle(callback, args)
        heapq.heappush(self._timers, (when, next(self._order), h))
        return h

    # --------------------------------------------------------------- readers
    def add_reader(self, fd: int, callback: Callable[..., Any], *args: Any) -> None:
        if fd in self._readers:
            self._epoll.modify(fd, _READ_EVENTS)
        else:
            self._epoll.register(fd, _READ_EVENTS)
        self._readers[fd] = Handle(callback, args)

    def remove_reader(self, fd: int) -> bool:
        if self._readers.pop(fd, None) is None:
            return False
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass  # closed already: the kernel dropped it from the epoll
        return True

    # --------------------------------------------------------------- signals
    def add_signal_handler(self, sig: int, callback: Callable[..., Any], *args: Any) -> None:
        """callback runs in the loop, not in the signal handler; the handler only makes
        the interpreter write the signal number to our wakeup pipe."""
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self._signals[sig] = Handle(callback, args)
        signal.signal(sig, _no_op)
        signal.siginterrupt(sig, False)

    def _on_wakeup(self) -> None:
        try:
            data = os.read(self._wake_r, 4096)
        except (BlockingIOError, InterruptedError):
            return
        for sig in data:
            h = self._signals.get(sig)
            if h is not None:
                self._ready.append(h)

    # ------------------------------------------------------------------ run
    def stop(self) -> None:
        self._stopping = True

    def is_closed(self) -> bool:
        return self._closed

    def run_forever(self) -> None:
        self._stopping = False
        try:
            while not self._stopping:
                self._run_once()
        finally:
            self._stopping = False

    def _run_once(self) -> None:
        timeout = 0.0
        if not self._ready:
            while self._timers and self._timers[0][2].cancelled:
                heapq.heappop(self._timers)
            timeout = -1.0  # nothing due: wait for a reader or a signal
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
        for fd, _events in self._poll(timeout):
            if fd == self._wake_r:
                self._on_wakeup()
                continue
            h = self._readers.get(fd)
            if h is not None:
                self._ready.append(h)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            h = heapq.heappop(self._timers)[2]
            if not h.cancelled:
                self._ready.append(h)
        # only what is ready now: callbacks scheduled by these run on the next turn, and
        # stop() ends the loop after this one (as asyncio's)
        for _ in range(len(self._ready)):
            h = self._ready.popleft()
            if h.cancelled:
                continue
            try:
                h.callback(*h.args)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                log.exception("Exception in callback %r", h.callback)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sig in self._signals:
            signal.signal(sig, signal.SIG_DFL)
        if self._signals:
            signal.set_wakeup_fd(-1)
        self._signals.clear()
        self._readers.clear()
        self._ready.clear()
        self._timers.clear()
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def _no_op(signum: int, frame: object) -> None:
    pass
