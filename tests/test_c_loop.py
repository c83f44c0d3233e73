"""csrc/loop.c, the loop's wait in C (ns_loop) under EpollLoop: events of fds C does
not own reach Python, timers fire on time while C waits, a signal's handler runs
promptly, a failing TAP ends the wait with an error. The TAP here is a datagram
socket (one read, one frame); e2e tests cover real traffic."""

from __future__ import annotations

import math
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from netstack.host.loop import EpollLoop
from netstack.tcp import fastpath
from netstack.tcp.fastpath import FastPath, FlowPathError

pytestmark = pytest.mark.skipif(not fastpath.available(), reason="C extension not built")


class Rig:
    def __init__(self, spin: float) -> None:
        self.guest, self.tap = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.tap.setblocking(False)
        self.rx = bytearray(65536 + 64)
        self.fast = FastPath(self.tap.fileno(), False, self.rx, b"\x02" * 6, b"\x03" * 6, 16)
        self.fast.use_loop()
        self.fast.ctx.spin = spin
        self.loop = EpollLoop()
        self.frames: list[bytes] = []
        self.loop.add_reader(self.tap.fileno(), lambda: None)  # C serves it
        self.loop.set_poll(self.poll)

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        """The runtime's _poll_c, less the stack: frames for Python are kept."""
        deadline = math.inf if timeout < 0 else time.monotonic() + timeout
        n = self.fast.loop(self.loop.epoll.fileno(), deadline)
        while 0 < n < fastpath.PYTHON_WORK:
            self.frames.append(bytes(self.rx[:n]))
            n = self.fast.rx_next(time.monotonic())
        return self.fast.events()

    def close(self) -> None:
        self.loop.close()
        self.fast.close()
        self.guest.close()
        self.tap.close()


@pytest.fixture(params=[0.0, 0.001], ids=["sleeps", "spins"])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    """Without and with the poll that does not sleep after an event (1 ms here)."""
    r = Rig(float(request.param))
    yield r
    r.close()


def test_events_of_fds_c_does_not_own_reach_python(rig: Rig) -> None:
    r, w = os.pipe()
    got: list[bytes] = []

    def on_readable() -> None:
        got.append(os.read(r, 10))
        rig.loop.stop()

    rig.loop.add_reader(r, on_readable)
    os.write(w, b"x")
    rig.loop.call_later(5, rig.loop.stop)  # a lost event fails below, not by hanging
    rig.loop.run_forever()
    assert got == [b"x"]
    # and straight from C: listed with its events
    os.write(w, b"y")
    assert rig.fast.loop(rig.loop.epoll.fileno(), time.monotonic() + 5) == 0
    assert rig.fast.events() == [(r, select.EPOLLIN)]
    os.close(r)
    os.close(w)


def test_a_frame_c_does_not_take_reaches_python(rig: Rig) -> None:
    rig.guest.send(b"\xff" * 60)  # no TCP flow of C's: Python's
    rig.loop.call_later(0.05, rig.loop.stop)
    rig.loop.run_forever()
    assert len(rig.frames) == 1
    assert rig.frames[0][10:70] == b"\xff" * 60  # after the virtio-net header room


def test_a_lone_frame_for_python_does_not_make_frames_come_one_per_wakeup(rig: Rig) -> None:
    # lone mode (one frame per wakeup, no read that finds the TAP empty) is for a
    # wakeup that found one frame; a batch that stopped at a first frame for Python
    # says nothing of what is queued (DNS queries, 32 in flight, came one per wakeup:
    # 27k against 42k queries/s)
    rig.guest.send(b"\xff" * 60)
    rig.loop.call_later(0.05, rig.loop.stop)
    rig.loop.run_forever()
    assert rig.frames and rig.fast.ctx.rx_lone == 0


def test_timers_fire_on_time_while_c_waits(rig: Rig) -> None:
    fired: list[float] = []
    t0 = time.monotonic()
    for delay in (0.03, 0.06):
        rig.loop.call_later(delay, lambda: fired.append(time.monotonic() - t0))
    rig.loop.call_later(0.09, rig.loop.stop)
    rig.loop.run_forever()
    assert len(fired) == 2
    assert 0.03 <= fired[0] < 0.03 + 0.05
    assert 0.06 <= fired[1] < 0.06 + 0.05
    assert time.monotonic() - t0 < 0.5


def test_a_signal_during_the_c_wait_runs_its_handler_promptly(rig: Rig) -> None:
    ran: list[float] = []

    def on_signal() -> None:
        ran.append(time.monotonic())
        rig.loop.stop()

    rig.loop.add_signal_handler(signal.SIGUSR1, on_signal)
    rig.loop.call_later(10, rig.loop.stop)  # a lost signal fails below, not by hanging
    sent: list[float] = []

    def send() -> None:
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGUSR1)

    threading.Timer(0.05, send).start()
    rig.loop.run_forever()  # no timer due: C waits with no deadline but the 10 s one
    assert ran and ran[0] - sent[0] < 0.5


def test_a_failing_tap_ends_the_wait_with_an_error() -> None:
    r, w = os.pipe()
    rx = bytearray(65536 + 64)
    fast = FastPath(w, False, rx, b"\x02" * 6, b"\x03" * 6, 16)  # reads on it fail
    fast.use_loop()
    ep = select.epoll()
    ep.register(w, select.EPOLLIN)
    os.close(r)  # the write end reports an error: C reads it, which fails
    try:
        with pytest.raises(FlowPathError):
            fast.loop(ep.fileno(), time.monotonic() + 5)
    finally:
        ep.close()
        fast.close()
        os.close(w)


def test_the_wait_ends_at_the_deadline(rig: Rig) -> None:
    t0 = time.monotonic()
    assert rig.fast.loop(rig.loop.epoll.fileno(), t0 + 0.03) == 0
    assert rig.fast.events() == []
    assert 0.03 <= time.monotonic() - t0 < 0.3
