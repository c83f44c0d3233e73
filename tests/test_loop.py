"""host/loop.py, the runtime's loop without asyncio: order of callbacks, timers and
their cancellation, level-triggered readers, signals, errors in callbacks."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator

import pytest

from netstack.host.loop import EpollLoop


@pytest.fixture
def loop() -> Iterator[EpollLoop]:
    lp = EpollLoop()
    yield lp
    lp.close()


def test_soon_runs_in_order_and_stop_ends_after_the_turn(loop: EpollLoop) -> None:
    ran: list[int] = []
    loop.call_soon(ran.append, 1)
    loop.call_soon(loop.stop)
    loop.call_soon(ran.append, 2)  # same turn as stop(): still runs, as in asyncio
    loop.run_forever()
    assert ran == [1, 2]


def test_timers_run_by_deadline_and_cancelled_ones_do_not(loop: EpollLoop) -> None:
    ran: list[str] = []
    loop.call_later(0.03, ran.append, "late")
    loop.call_later(0.01, ran.append, "early")
    loop.call_later(0.02, ran.append, "cancelled").cancel()
    loop.call_later(0.04, loop.stop)
    loop.run_forever()
    assert ran == ["early", "late"]


def test_reader_fires_while_readable_and_not_after_removal(loop: EpollLoop) -> None:
    r, w = os.pipe()
    calls = []

    def on_readable() -> None:
        calls.append(1)
        if len(calls) == 3:  # level-triggered: unread data fires again
            assert os.read(r, 10) == b"x"
            loop.remove_reader(r)
            loop.call_later(0.02, loop.stop)

    loop.add_reader(r, on_readable)
    os.write(w, b"x")
    loop.run_forever()
    os.write(w, b"y")
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert len(calls) == 3
    os.close(r)
    os.close(w)


def test_signal_handler_runs_in_the_loop(loop: EpollLoop) -> None:
    got: list[int] = []

    def on_signal(code: int) -> None:
        got.append(code)
        loop.stop()

    loop.add_signal_handler(signal.SIGHUP, on_signal, 7)
    loop.call_later(0.01, os.kill, os.getpid(), signal.SIGHUP)
    loop.call_later(5, loop.stop)  # a missed signal fails below, not by hanging
    loop.run_forever()
    assert got == [7]


def test_an_error_in_a_callback_is_logged_and_the_loop_goes_on(
    loop: EpollLoop, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[int] = []
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(ran.append, 1)
    loop.call_later(0.01, loop.stop)
    with caplog.at_level(logging.ERROR):
        loop.run_forever()
    assert ran == [1]
    assert "Exception in callback" in caplog.text
