"""The directory client against a fake netstackd: the watch follows every view,
survives netstackd going away and coming back, and resolve answers or gives up fast."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from netstack.directory import client as client_module
from netstack.directory.client import DirectoryClient
from netstack.directory.view import View
from tests.directory.test_view import ip
from tests.helpers.fake_netstackd import FakeNetstackd


async def until(what: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_the_watch_follows_every_view(tmp_path: Path) -> None:
    sock = tmp_path / "d.sock"
    views: list[View] = []

    async def main() -> None:
        with FakeNetstackd(sock) as fake:
            client = DirectoryClient(str(sock), on_view=views.append)
            client.start(asyncio.get_running_loop())
            await until(lambda: client.view is not None)
            assert client.view is not None and client.view.services == ()
            fake.add_instance("web", 8080, "127.0.0.1", 40123)
            await until(lambda: client.view is not None and client.view.lookup("web") is not None)
            client.close()

    asyncio.run(main())
    assert len(views) >= 2
    assert [i.host_port for i in views[-1].instances(ip("198.18.0.1"), 8080)] == [40123]


def test_the_watch_waits_for_netstackd_and_keeps_the_last_view_meanwhile(tmp_path: Path) -> None:
    sock = tmp_path / "d.sock"

    async def main() -> None:
        client = DirectoryClient(str(sock))
        client.start(asyncio.get_running_loop())
        await asyncio.sleep(0.3)  # nobody there: a few failed attempts, no view
        assert client.view is None and not client.connected
        fake = FakeNetstackd(sock).start()
        try:
            fake.add_instance("web", 8080, "127.0.0.1", 40123)
            await until(lambda: client.view is not None and client.view.lookup("web") is not None)
        finally:
            fake.close()
        await until(lambda: not client.connected)
        assert client.view is not None and client.view.lookup("web") is not None  # kept
        fake = FakeNetstackd(sock).start()  # netstackd restarts (with an empty table)
        try:
            fake.add_instance("db", 5432, "127.0.0.1", 6000)
            await until(lambda: client.view is not None and client.view.lookup("db") is not None)
        finally:
            fake.close()
            client.close()

    asyncio.run(main())


def test_resolve_answers_with_packed_vips(tmp_path: Path) -> None:
    sock = tmp_path / "d.sock"

    async def main() -> None:
        with FakeNetstackd(sock) as fake:
            client = DirectoryClient(str(sock))
            assert await client.resolve("New.netstack.internal.") == (
                ip("198.18.0.1"),
                ip("fd4e:5344::1"),
            )
            assert await client.resolve("bad name") is None  # an error reply
            assert fake.requests[0] == {
                "execute": "resolve",
                "arguments": {"name": "New.netstack.internal."},
            }

    asyncio.run(main())


def test_a_resolved_vip_is_awaited_until_a_view_shows_it(tmp_path: Path) -> None:
    sock = tmp_path / "d.sock"

    async def main() -> None:
        with FakeNetstackd(sock) as fake:
            client = DirectoryClient(str(sock))
            assert await client.resolve("db") == (ip("198.18.0.1"), ip("fd4e:5344::1"))
            assert client.awaited(ip("198.18.0.1")) and client.awaited(ip("fd4e:5344::1"))
            client.start(asyncio.get_running_loop())
            await until(lambda: client.view is not None and client.view.lookup("db") is not None)
            assert not client.awaited(ip("198.18.0.1")) and not client.awaited(ip("fd4e:5344::1"))
            assert fake.services["db"]["instances"] == []
            client.close()

    asyncio.run(main())


def test_resolve_gives_up_fast_without_netstackd_and_after_its_timeout(tmp_path: Path) -> None:
    sock = tmp_path / "d.sock"

    async def main() -> None:
        client = DirectoryClient(str(sock), resolve_timeout=0.3)
        t0 = time.monotonic()
        assert await client.resolve("web") is None
        assert time.monotonic() - t0 < 0.2  # nobody listens: at once
        with FakeNetstackd(sock) as fake:
            fake.resolve_delay = 2.0
            t0 = time.monotonic()
            assert await client.resolve("web") is None
            assert 0.25 < time.monotonic() - t0 < 1.5

    asyncio.run(main())


def test_resolve_then_calls_back_in_the_loop(tmp_path: Path) -> None:
    sock = tmp_path / "d.sock"
    answers: list[tuple[bytes, bytes] | None] = []

    async def main() -> None:
        with FakeNetstackd(sock):
            client = DirectoryClient(str(sock))
            client.resolve_then("web", answers.append)
            await until(lambda: bool(answers))

    asyncio.run(main())
    assert answers == [(ip("198.18.0.1"), ip("fd4e:5344::1"))]


def test_a_netstackd_that_never_answers_the_watch_is_left_and_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "FIRST_VIEW_TIMEOUT", 0.2)
    path = str(tmp_path / "hung.sock")

    async def main() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as hung:
            hung.bind(path)
            hung.listen(8)
            hung.setblocking(False)
            client = DirectoryClient(path)
            client.start(asyncio.get_running_loop())
            accepted: list[socket.socket] = []

            def take() -> bool:
                try:
                    accepted.append(hung.accept()[0])
                except BlockingIOError:
                    pass
                return len(accepted) >= 2

            await until(take)  # a second watch: the first was given up
            assert client.view is None and not client.connected
            client.close()
            for s in accepted:
                s.close()

    asyncio.run(main())
