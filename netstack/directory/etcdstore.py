"""The directory in etcd, shared by the netstackd of every host (`--store etcd://...`).

The key layout is in netstack.directory.etcdkeys, what INDEX means in
netstack.directory.etcdview. A name and its VIP key are created together in one
transaction that fails if either exists: two daemons never hand out one VIP twice, and
two that reserve one name at once agree on the first writer's VIP. Instance and host
keys hang on the daemon's one lease (kept alive on one stream, revoked at a clean stop),
so a dead host's services vanish with its lease. Name keys hang on no lease: a name
keeps its VIP while any instance (of any host) lives, and once none does, any daemon
deletes it when its reservation has run out, guarded by the name key's mod revision
(registering an instance rewrites the name key, so a registration racing with the
deletion wins or starts over).

The view (netstack.directory.etcdview, no I/O): everything under PREFIX, read once and
then followed by a watch; after a broken stream the watch resumes at the next revision,
or reads everything again when etcd compacted that history away. The syscall path reads
only the view. Writes change the view at once and go to etcd in order through one queue,
retried while etcd is away. This module is the I/O around the view: the watch feeding
it, the lease, the write queue and the claims.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import json
import time
from collections.abc import Callable
from typing import Any

from netstack.directory import etcd
from netstack.directory.etcdkeys import DEFAULT_PREFIX, Keys, instance_value, reachable
from netstack.directory.etcdview import EtcdView
from netstack.directory.store import Instance, NameRecord
from netstack.log import get_logger

log = get_logger("netstackd.etcd")

DEFAULT_TTL = 10
SYNC_WAIT_S = 5.0
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 2.0
CLAIM_ATTEMPTS = 32
BATCH_OPS = 120  # operations in one transaction (etcd's --max-txn-ops is 128 by default)


class EtcdStore:
    def __init__(self, client: etcd.Client, vip_cidr: str, vip6_cidr: str, node: str,
                 ttl: int = DEFAULT_TTL, prefix: str = DEFAULT_PREFIX,
                 reservation: float = 60.0, host_info: dict[str, Any] | None = None) -> None:
        self.client = client
        self.block = ipaddress.IPv4Network(vip_cidr)
        self.block6 = ipaddress.IPv6Network(vip6_cidr)
        self.node = node
        self.ttl = ttl
        self.keys = Keys(prefix)
        self.reservation = reservation
        self.host_info = host_info or {}
        self.changed: list[Callable[[], None]] = []
        self.stats: dict[str, int] = {k: 0 for k in (
            "etcd_resyncs", "etcd_compacted", "etcd_watch_restarts", "etcd_leases",
            "etcd_lease_lost", "etcd_retries", "etcd_claims", "etcd_claim_conflicts",
            "etcd_writes", "etcd_batches", "etcd_pending_writes")}
        self.view = EtcdView(self.block, self.block6, node, self.keys, reservation)
        self.capacity = self.view.capacity
        self._revision = 0  # the view's: the last one applied
        # machinery
        self._ops: collections.deque[tuple[Any, ...]] = collections.deque()
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._synced = asyncio.Event()
        self._lease = 0
        self._lease_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._single = 0  # ops to write one by one (after a batch that failed)
        self._down = False  # (for the log: one line per outage)
        self._written: set[bytes] = set()  # our instance keys etcd has (as we know)
        self._since = time.time()

    # ------------------------------------------------------------ reads
    def name(self, name: str) -> NameRecord | None:
        return self.view.name(name)

    def by_vip(self, ip: bytes) -> NameRecord | None:
        return self.view.by_vip(ip)

    def records(self) -> list[NameRecord]:
        return self.view.records()

    def hosts(self) -> list[dict[str, Any]]:
        """Every daemon whose host key lives (its lease), this one first (also while
        etcd is away or its key is not written yet)."""
        mine = {"node": self.node, **self.host_info, "since": self._since,
                **self.view.hosts.get(self.node, {}), "local": True}
        others = [{"node": n, **v, "local": False} for n, v in sorted(self.view.hosts.items())
                  if n != self.node]
        return [mine, *others]

    # ----------------------------------------------------------- writes
    def reserve(self, name: str, expires: float) -> NameRecord:
        rec = self.view.names.get(name)
        if rec is not None:
            return rec
        rec = self.view.reserve(name, expires)
        self._queue(("claim", name))
        return rec

    def add(self, rec: NameRecord, inst: Instance) -> None:
        rec.instances.append(inst)
        key = self.keys.instance(rec.name, self.node, inst.cookie)
        self.view.local[key] = inst
        self._queue(("put", key, inst))

    def remove(self, rec: NameRecord, inst: Instance, expires: float) -> None:
        rec.instances = [i for i in rec.instances if i is not inst]
        if not rec.instances:
            rec.expires = max(rec.expires, expires)
        key = self.keys.instance(rec.name, self.node, inst.cookie)
        if self.view.local.get(key) is inst:
            del self.view.local[key]
            self._queue(("delete", key))

    def extend(self, rec: NameRecord, expires: float) -> None:
        rec.expires = max(rec.expires, expires)
        stored = self.view.stored.get(rec.name)
        # write only once half the stored reservation is used up
        if stored is not None and stored[1] < expires - self.reservation / 2:
            self.view.stored[rec.name] = (stored[0], expires)
            self._queue(("touch", rec.name))

    def drop(self, name: str) -> None:
        rec = self.view.names.pop(name, None)
        if rec is None:
            return
        if any(i.node == "" for i in rec.instances):  # (the directory never does this)
            self.view.names[name] = rec
            return
        self.view.unindex(rec)
        index = self.view.index.pop(name, None)
        stored = self.view.stored.pop(name, None)
        if name in self.view.pending:
            self.view.pending.discard(name)
        elif stored is not None and index is not None:
            self._queue(("drop", name, stored[0], index))
        self._pulse()

    async def settle(self, name: str, timeout: float) -> NameRecord | None:
        deadline = time.monotonic() + timeout
        while True:
            rec = self.view.names.get(name)
            if rec is None or name not in self.view.pending:
                return rec
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)

    # -------------------------------------------------------- lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        addr = str(self.host_info.get("addr", ""))
        if addr and not reachable(addr):
            log.warning("etcd: this host publishes its services on %s: other hosts cannot "
                        "reach them (set --publish-addr)", addr)
        self._tasks = [loop.create_task(self._lease_loop()),
                       loop.create_task(self._watch_loop()),
                       loop.create_task(self._writer())]
        try:
            await asyncio.wait_for(self._synced.wait(), SYNC_WAIT_S)
        except TimeoutError:
            log.warning("etcd: no answer yet; starting with an empty view (retrying)")

    async def close(self) -> None:
        """A clean stop: revoke the lease (every key of this host goes at once)."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._lease:
            try:
                await asyncio.wait_for(self.client.revoke(self._lease), 3)
                log.info("etcd: revoked lease %x", self._lease)
            except (etcd.Unavailable, TimeoutError) as e:
                log.warning("etcd: cannot revoke the lease (%s): it expires in %d s", e,
                            self.ttl)
        await self.client.close()

    # ------------------------------------------------------------ view
    def _apply(self, event: etcd.Event) -> None:
        for op in self.view.apply(event, time.time()):
            self._queue(op)

    def _rebuild(self, revision: int, kvs: list[etcd.KV]) -> None:
        """The view from a full read (start, or history compacted away)."""
        writes, mine = self.view.rebuild(kvs, time.time(), leased=bool(self._lease))
        self._written = mine
        for op in writes:
            self._queue(op)
        self._revision = revision

    def _notify(self) -> None:
        self._pulse()
        for callback in list(self.changed):
            callback()

    def _pulse(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    # ----------------------------------------------------------- watch
    async def _watch_loop(self) -> None:
        backoff = BACKOFF_MIN_S
        need_read = self._revision == 0  # else: resume where the last stream stopped
        while not self._closing:
            try:
                if need_read:
                    revision, kvs = await self.client.get_prefix(self.keys.prefix)
                    self._rebuild(revision, kvs)
                    self.stats["etcd_resyncs"] += 1
                    need_read = False
                    self._synced.set()
                    self._notify()
                async for _rev, events in self.client.watch(self.keys.prefix,
                                                            self._revision + 1):
                    backoff = BACKOFF_MIN_S
                    if self._down:
                        log.warning("etcd: reachable again (revision %d)", self._revision)
                        self._down = False
                    for event in events:
                        self._apply(event)
                        self._revision = max(self._revision, event.kv.mod_revision)
                    if events:
                        self._notify()
            except etcd.Compacted as e:
                log.info("etcd: %s: reading everything again", e)
                self.stats["etcd_compacted"] += 1
                need_read = True
            except etcd.Unavailable as e:
                log.info("etcd: watch from revision %d: %s", self._revision + 1, e)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("etcd: watch")
            self.stats["etcd_watch_restarts"] += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    # ----------------------------------------------------------- lease
    async def _lease_loop(self) -> None:
        backoff = BACKOFF_MIN_S
        while not self._closing:
            try:
                if not self._lease:
                    self._lease = await self.client.grant(self.ttl)
                    self.stats["etcd_leases"] += 1
                    log.info("etcd: lease %x (TTL %d s) for node %s", self._lease, self.ttl,
                             self.node)
                    self._republish()
                    self._lease_ready.set()
                backoff = BACKOFF_MIN_S
                await self.client.keepalive(self._lease, max(self.ttl / 3, 0.5))
            except etcd.LeaseLost as e:
                log.warning("etcd: %s expired: publishing this host's services again", e)
                self.stats["etcd_lease_lost"] += 1
                self._lease = 0
                self._lease_ready.clear()
                continue
            except etcd.Unavailable as e:
                if not self._down:
                    log.warning("etcd: unreachable (%s): retrying; lookups use the view", e)
                    self._down = True
                else:
                    log.debug("etcd: still unreachable: %s", e)
                with contextlib.suppress(Exception):
                    await self.client.reconnect()  # every stream restarts on a new channel
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("etcd: lease")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _republish(self) -> None:
        """A new lease: the host key and every local instance hang on it now."""
        self._queue(("host",))
        for key, inst in self.view.local.items():
            self._queue(("put", key, inst))

    # ---------------------------------------------------------- writes
    def _queue(self, op: tuple[Any, ...]) -> None:
        """Add a write; while etcd is away the queue holds no more than the state that
        changed: a put not done yet and then its delete cancel out, repeats are one."""
        if op[0] == "delete":
            queued = [o for o in self._ops if o[0] == "put" and o[1] == op[1]]
            for o in queued:
                self._ops.remove(o)
            if queued and op[1] not in self._written:
                self.stats["etcd_pending_writes"] = len(self._ops)
                return
        elif op[0] != "drop" and op in self._ops:
            return
        self._ops.append(op)
        self.stats["etcd_pending_writes"] = len(self._ops)
        self._wake.set()

    async def _writer(self) -> None:
        backoff = BACKOFF_MIN_S
        while not self._closing:
            if not self._ops:
                self._wake.clear()
                self.stats["etcd_pending_writes"] = 0
                await self._wake.wait()
                continue
            op = self._ops.popleft()
            batch = self._batch(op) if self._single == 0 else []
            self._single = max(self._single - 1, 0)
            try:
                if batch:
                    if not await self._put_many(batch):  # a name went: one by one
                        self._ops.extendleft(reversed(batch))
                        self._single = len(batch)
                        continue
                    self.stats["etcd_writes"] += len(batch)
                    self.stats["etcd_batches"] += 1
                else:
                    await self._write(op)
                    self.stats["etcd_writes"] += 1
                backoff = BACKOFF_MIN_S
            except (etcd.Unavailable, TimeoutError) as e:
                if batch:
                    self._ops.extendleft(reversed(batch[1:]))
                self._ops.appendleft(op)
                self.stats["etcd_retries"] += 1
                log.debug("etcd: %s: %s (retrying)", op[0], e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("etcd: write %s", op[0])
            self.stats["etcd_pending_writes"] = len(self._ops)

    def _ready_put(self, op: tuple[Any, ...]) -> bool:
        """A put that needs nothing else first (its name is agreed, it is still ours)."""
        if op[0] != "put":
            return False
        inst: Instance = op[2]
        return (self.view.local.get(op[1]) is inst and inst.name in self.view.names
                and inst.name not in self.view.pending)

    def _batch(self, op: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """op and the ready puts queued right after it, for one transaction (a burst of
        registrations costs one etcd round trip per BATCH_OPS, not one each); [] when op
        goes alone."""
        if not self._ready_put(op) or not self._ops or not self._ready_put(self._ops[0]):
            return []
        batch, names, keys = [op], {op[2].name}, {op[1]}
        while self._ops and self._ready_put(self._ops[0]):
            nxt = self._ops[0]
            if nxt[1] in keys or len(batch) + len(names | {nxt[2].name}) > BATCH_OPS:
                break
            names.add(nxt[2].name)
            keys.add(nxt[1])
            batch.append(self._ops.popleft())
        return batch

    async def _put_many(self, batch: list[tuple[Any, ...]]) -> bool:
        """Ready puts in one transaction: every name key must still exist (and is
        rewritten, as a single put does); False if one does not (nothing written)."""
        lease = await self._leased()
        names = sorted({op[2].name for op in batch})
        compares = [("version", self.keys.name(n), ">", 0) for n in names]
        puts: list[tuple[Any, ...]] = [
            ("put", self.keys.name(n), self._name_value(self.view.names[n]), 0) for n in names]
        puts += [("put", op[1], instance_value(op[2], self.node), lease) for op in batch]
        ok, _ = await self.client.txn(compares, puts)
        if ok:
            self._written.update(op[1] for op in batch)
        return ok

    async def _leased(self) -> int:
        await asyncio.wait_for(self._lease_ready.wait(), self.ttl)
        return self._lease

    def _name_value(self, rec: NameRecord) -> bytes:
        return json.dumps({"vip": self.view.index[rec.name], "owner": rec.owner,
                           "expires": rec.expires}, separators=(",", ":")).encode()

    async def _write(self, op: tuple[Any, ...]) -> None:
        kind = op[0]
        if kind == "claim":
            await self._claim(op[1])
        elif kind == "put":
            key: bytes = op[1]
            inst: Instance = op[2]
            if self.view.local.get(key) is not inst:
                return  # gone meanwhile
            rec = self.view.names.get(inst.name)
            if rec is None:
                return
            if inst.name in self.view.pending:  # its claim has to come first
                self._ops.appendleft(op)
                self._ops.appendleft(("claim", inst.name))
                return
            lease = await self._leased()
            nk = self.keys.name(inst.name)
            ok, _ = await self.client.txn(
                [("version", nk, ">", 0)],
                [("put", nk, self._name_value(rec), 0),
                 ("put", key, instance_value(inst, self.node), lease)])
            if ok:
                self._written.add(key)
            else:  # the name went away under us: claim it again, then this
                self.view.pending.add(inst.name)
                self._ops.appendleft(op)
                self._ops.appendleft(("claim", inst.name))
        elif kind == "delete":
            if op[1] in self.view.local:
                return  # registered again meanwhile
            await self.client.txn([], [("delete", op[1])])
            self._written.discard(op[1])
        elif kind == "touch":
            rec = self.view.names.get(op[1])
            if rec is None or op[1] in self.view.pending:
                return
            nk = self.keys.name(op[1])
            await self.client.txn([("version", nk, ">", 0)],
                                  [("put", nk, self._name_value(rec), 0)])
        elif kind == "drop":
            name, mod_revision, index = op[1], op[2], op[3]
            nk = self.keys.name(name)
            ok, found = await self.client.txn(
                [("mod", nk, "==", mod_revision)],
                [("delete", nk), ("delete", self.keys.vip(index))], [("get", nk)])
            if not ok and found and name not in self.view.names:
                self.view.apply_name(name, found[0].value, found[0].mod_revision)  # it lives on
                self._notify()
        elif kind == "host":
            lease = await self._leased()
            value = json.dumps({**self.host_info, "since": self._since}).encode()
            await self.client.txn([], [("put", self.keys.host(self.node), value, lease)])

    async def _claim(self, name: str) -> None:
        """A VIP for name that no other name has, agreed with etcd."""
        for _ in range(CLAIM_ATTEMPTS):
            rec = self.view.names.get(name)
            if rec is None or name not in self.view.pending:
                return
            index = self.view.index[name]
            owner = [n for n, i in self.view.index.items() if i == index and n != name]
            if owner or index in self.view.taken:
                self.view.set_index(rec, self.view.free_index_besides(index))
                index = self.view.index[name]
            nk, vk = self.keys.name(name), self.keys.vip(index)
            self.stats["etcd_claims"] += 1
            ok, found = await self.client.txn(
                [("create", nk, "==", 0), ("create", vk, "==", 0)],
                [("put", nk, self._name_value(rec), 0), ("put", vk, name.encode(), 0)],
                [("get", nk)])
            if ok:
                self.view.pending.discard(name)
                self._notify()
                return
            self.stats["etcd_claim_conflicts"] += 1
            if found:  # another daemon reserved the name first: its VIP it is
                self.view.apply_name(name, found[0].value, found[0].mod_revision)
                self._notify()
                return
            self.view.taken.add(index)  # that VIP went to a name we have not seen yet
        log.warning("etcd: no VIP for %r after %d attempts", name, CLAIM_ATTEMPTS)
        raise etcd.Unavailable("no VIP agreed")  # (the writer backs off and tries again)
