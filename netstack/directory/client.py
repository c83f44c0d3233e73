"""netstackd's API socket as a client on the event loop: one `watch` connection kept
open for the newest view, and `resolve` requests.

The protocol is docs/directory-protocol.md: one JSON request per connection; `watch`
keeps its connection open and streams whole views, one JSON line each. When
netstackd is absent or goes away, the watch reconnects with a growing pause (0.1 s
doubling up to 5 s) and the last view stays in use meanwhile (or none, before the
first). `resolve` gives up after a second. A VIP that `resolve` gave out is
"awaited" until a view shows it: the answer and the view that holds the new name
come on different connections, and a guest that connects at once must not be
refused in between. Nothing here blocks the loop; nothing here knows about packets.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import Callable
from typing import Any

from netstack.directory.view import View, ViewError
from netstack.log import get_logger

log = get_logger(__name__)

RESOLVE_TIMEOUT = 1.0
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
FIRST_VIEW_TIMEOUT = 5.0
LINE_LIMIT = 16 << 20  # a view is one line; tables are small, but not tiny
AWAIT_FOR = 60.0  # netstackd keeps a reservation this long (docs/directory-protocol.md)


class DirectoryClient:
    def __init__(
        self,
        path: str,
        on_view: Callable[[View], None] | None = None,
        resolve_timeout: float = RESOLVE_TIMEOUT,
    ) -> None:
        self.path = path
        self.on_view = on_view
        self.resolve_timeout = resolve_timeout
        self.view: View | None = None
        self._awaited: dict[bytes, float] = {}  # VIP from resolve -> when, until a view has it
        self.connected = False  # the watch connection is up
        self._watch: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ watch
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Keep a watch open from now on (the loop may not be running yet)."""
        self._watch = loop.create_task(self.watch_forever())

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        for task in list(self._tasks):
            task.cancel()

    async def watch_forever(self) -> None:
        pause = BACKOFF_FIRST
        while True:
            try:
                await self._watch_once()
            except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                log.debug("directory %s: %s", self.path, e)
            if self.connected:
                log.info("directory %s: watch lost; keeping the last view", self.path)
                pause = BACKOFF_FIRST  # it worked for a while: retry soon
            self.connected = False
            await asyncio.sleep(pause)
            pause = min(pause * 2, BACKOFF_MAX)

    async def _watch_once(self) -> None:
        """One watch connection, until it ends."""
        reader, writer = await asyncio.open_unix_connection(self.path, limit=LINE_LIMIT)
        try:
            writer.write(b'{"execute": "watch", "arguments": {}}\n')
            await writer.drain()
            timeout: float | None = FIRST_VIEW_TIMEOUT  # a netstackd that never answers is left
            while line := await asyncio.wait_for(reader.readline(), timeout):
                timeout = None
                try:
                    msg = json.loads(line)
                    view = View.parse(msg, self.view)
                except (ValueError, ViewError) as e:
                    log.warning("directory %s: bad view ignored: %s", self.path, e)
                    continue
                if not self.connected:
                    log.info("directory %s: watching", self.path)
                self.connected = True
                self.view = view
                for vip in [v for v in self._awaited if view.by_vip(v) is not None]:
                    del self._awaited[vip]
                if self.on_view is not None:
                    try:
                        self.on_view(view)
                    except Exception:  # a bug there must not end the watch
                        log.exception("directory %s: view handler failed", self.path)
        finally:
            writer.close()

    # ---------------------------------------------------------------- resolve
    async def resolve(self, name: str) -> tuple[bytes, bytes] | None:
        """netstackd's (vip, vip6) for name, packed (reserving them if nobody serves
        the name yet); None when netstackd is unreachable, slow or says no."""
        try:
            reply = await asyncio.wait_for(
                self.request("resolve", {"name": name}), self.resolve_timeout
            )
        except (TimeoutError, OSError, ValueError) as e:
            log.info("directory %s: resolve %r: %s", self.path, name, e or type(e).__name__)
            return None
        ret = reply.get("return")
        if not isinstance(ret, dict):
            log.info("directory %s: resolve %r: %s", self.path, name, reply.get("error"))
            return None
        try:
            vip = ipaddress.IPv4Address(ret["vip"]).packed
            vip6 = ipaddress.IPv6Address(ret["vip6"]).packed
        except (KeyError, TypeError, ValueError):
            log.warning("directory %s: resolve %r: bad reply %r", self.path, name, ret)
            return None
        if self.view is None or self.view.by_vip(vip) is None:
            now = time.monotonic()
            for old in [v for v, t in self._awaited.items() if now - t > AWAIT_FOR]:
                del self._awaited[old]
            self._awaited[vip] = self._awaited[vip6] = now
        return vip, vip6

    def awaited(self, vip: bytes) -> bool:
        """vip came from resolve and no view has shown it yet."""
        return vip in self._awaited

    def resolve_then(self, name: str, done: Callable[[tuple[bytes, bytes] | None], None]) -> None:
        """resolve(name), then done(answer) in the loop."""
        task = asyncio.get_event_loop().create_task(self.resolve(name))
        self._tasks.add(task)

        def finished(t: asyncio.Task[tuple[bytes, bytes] | None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled():
                done(t.result())

        task.add_done_callback(finished)

    async def request(self, command: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """One request, one reply (a dict with "return" or "error")."""
        reader, writer = await asyncio.open_unix_connection(self.path)
        try:
            msg = {"execute": command, "arguments": arguments}
            writer.write(json.dumps(msg).encode() + b"\n")
            await writer.drain()
            writer.write_eof()
            data = await reader.read()
        finally:
            writer.close()
        reply = json.loads(data)
        if not isinstance(reply, dict):
            raise ValueError(f"reply is not an object: {data[:80]!r}")
        return reply
