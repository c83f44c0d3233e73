"""An in-process stand-in for etcd behind netstack.directory.etcd.Client: revisions,
transactions, leases (expired by hand), a watch with history and compaction, and an
off switch. Enough for EtcdStore's unit tests; the e2e tests use a real etcd."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from netstack.directory import etcd


@dataclass
class _Entry:
    value: bytes
    create: int
    mod: int
    version: int
    lease: int


class FakeEtcd:
    def __init__(self) -> None:
        self.kv: dict[bytes, _Entry] = {}
        self.revision = 1
        self.compacted = 0
        self.history: list[tuple[int, etcd.Event]] = []
        self.leases: dict[int, set[bytes]] = {}
        self.up = True
        self._next_lease = 0x1000
        self.generation = 0  # bumped to break every stream

    def check(self) -> None:
        if not self.up:
            raise etcd.Unavailable("fake etcd is down")

    def _event(self, kind: str, key: bytes, e: _Entry | None) -> None:
        kv = etcd.KV(key, e.value if e else b"", self.revision, e.lease if e else 0)
        self.history.append((self.revision, etcd.Event(kind, kv)))

    def _put(self, key: bytes, value: bytes, lease: int) -> None:
        if lease and lease not in self.leases:
            raise etcd.Unavailable("NOT_FOUND: requested lease not found")
        old = self.kv.get(key)
        if old is not None and old.lease:
            self.leases.get(old.lease, set()).discard(key)
        e = _Entry(value, old.create if old else self.revision, self.revision,
                   (old.version if old else 0) + 1, lease)
        self.kv[key] = e
        if lease:
            self.leases[lease].add(key)
        self._event("put", key, e)

    def _delete(self, key: bytes) -> bool:
        e = self.kv.pop(key, None)
        if e is None:
            return False
        if e.lease:
            self.leases.get(e.lease, set()).discard(key)
        self._event("delete", key, None)
        return True

    def expire(self, lease: int) -> None:
        """The lease ran out: its keys go, in one revision."""
        keys = self.leases.pop(lease, set())
        if keys:
            self.revision += 1
            for key in sorted(keys):
                self._delete(key)

    def compact(self) -> None:
        self.compacted = self.revision
        self.history = [h for h in self.history if h[0] > self.compacted]

    def break_streams(self) -> None:
        self.generation += 1


class FakeClient:
    def __init__(self, server: FakeEtcd) -> None:
        self.s = server

    async def reconnect(self) -> None:
        await asyncio.sleep(0)

    async def close(self) -> None:
        pass

    async def grant(self, ttl: int) -> int:
        self.s.check()
        self.s._next_lease += 1
        self.s.leases[self.s._next_lease] = set()
        return self.s._next_lease

    async def revoke(self, lease: int) -> None:
        self.s.check()
        self.s.expire(lease)

    async def keepalive(self, lease: int, interval: float) -> None:
        generation = self.s.generation
        while True:
            self.s.check()
            if lease not in self.s.leases:
                raise etcd.LeaseLost(f"lease {lease:x}")
            if self.s.generation != generation:
                raise etcd.Unavailable("stream broken")
            await asyncio.sleep(min(interval, 0.01))

    async def get_prefix(self, prefix: bytes) -> tuple[int, list[etcd.KV]]:
        self.s.check()
        return self.s.revision, [etcd.KV(k, e.value, e.mod, e.lease)
                                 for k, e in sorted(self.s.kv.items()) if k.startswith(prefix)]

    def _compare(self, c: etcd.Compare) -> bool:
        what, key, op, value = c
        e = self.s.kv.get(key)
        have = 0 if e is None else {"create": e.create, "version": e.version,
                                    "mod": e.mod}[what]
        return {"==": have == value, "!=": have != value, ">": have > value,
                "<": have < value}[op]

    async def txn(self, compare: Sequence[etcd.Compare], success: Sequence[etcd.Op],
                  failure: Sequence[etcd.Op] = ()) -> tuple[bool, list[etcd.KV]]:
        self.s.check()
        await asyncio.sleep(0)  # let racing daemons interleave
        ok = all(self._compare(c) for c in compare)
        ops = success if ok else failure
        found: list[etcd.KV] = []
        writes = [o for o in ops if o[0] in ("put", "delete")]
        if writes:
            self.s.revision += 1
        for o in ops:
            if o[0] == "put":
                self.s._put(o[1], o[2], o[3])
            elif o[0] == "delete":
                self.s._delete(o[1])
            else:
                e = self.s.kv.get(o[1])
                if e is not None:
                    found.append(etcd.KV(o[1], e.value, e.mod, e.lease))
        return ok, found

    async def watch(self, prefix: bytes,
                    start_revision: int) -> AsyncIterator[tuple[int, list[etcd.Event]]]:
        self.s.check()
        if start_revision <= self.s.compacted:
            raise etcd.Compacted(self.s.compacted)
        generation = self.s.generation
        next_rev = start_revision
        yield self.s.revision, []
        while True:
            if self.s.generation != generation or not self.s.up:
                raise etcd.Unavailable("stream broken")
            batch = [ev for rev, ev in self.s.history
                     if rev >= next_rev and ev.kv.key.startswith(prefix)]
            if batch:
                next_rev = self.s.revision + 1
                yield self.s.revision, batch
                continue
            await asyncio.sleep(0.005)
