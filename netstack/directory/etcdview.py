"""The local mirror of the directory's keys in etcd (the view EtcdStore answers lookups
from), sans-I/O: it takes the watch's key events and full reads, and answers lookups by
name and by VIP. No asyncio, no etcd client; the caller passes the time (`now`).

INDEX (etcdkeys) is a VIP's offset in both blocks: the IPv4 and the IPv6 VIP of a name
share it, so every daemon must run with the same --vip-cidr and --vip6-cidr (a record
outside the block is ignored). A name reserved here has a tentative INDEX (`pending`)
until EtcdStore's claim agrees with etcd; a record of another name that takes that
INDEX moves ours to a free one. Other hosts' instances come from their keys; this
daemon's (`local`) are the truth here, whatever etcd says. When etcd lost something of
ours (a name deleted under a live local instance, our instance keys missing from a full
read), `apply` and `rebuild` return the writes that put it back, for the store to queue.
"""

from __future__ import annotations

import ipaddress
import json
from typing import TYPE_CHECKING, Any

from netstack.directory.etcdkeys import Keys, parse_instance, reachable
from netstack.directory.store import Instance, NameRecord, VipExhausted
from netstack.log import get_logger

if TYPE_CHECKING:
    from netstack.directory.etcd import KV, Event

log = get_logger("netstackd.etcd")


class EtcdView:
    def __init__(
        self,
        block: ipaddress.IPv4Network,
        block6: ipaddress.IPv6Network,
        node: str,
        keys: Keys,
        reservation: float,
    ) -> None:
        self.block = block
        self.block6 = block6
        self.capacity = min(block.num_addresses, block6.num_addresses) - 2
        self.node = node
        self.keys = keys
        self.reservation = reservation
        self.names: dict[str, NameRecord] = {}
        self.vips: dict[bytes, NameRecord] = {}
        self.index: dict[str, int] = {}  # name -> VIP index
        self.stored: dict[str, tuple[int, float]] = {}  # name -> (mod revision, expires)
        self.remote: dict[bytes, Instance] = {}  # other daemons' instances by key
        self.local: dict[bytes, Instance] = {}  # ours by key
        self.pending: set[str] = set()  # reserved here, VIP not agreed with etcd yet
        self.taken: set[int] = set()  # indices etcd refused us (a name we have not seen)
        self.hosts: dict[str, dict[str, Any]] = {}  # node -> its host key's value
        self.unreachable_nodes: set[str] = set()

    # ------------------------------------------------------------ reads
    def name(self, name: str) -> NameRecord | None:
        return self.names.get(name)

    def by_vip(self, ip: bytes) -> NameRecord | None:
        return self.vips.get(ip)

    def records(self) -> list[NameRecord]:
        return list(self.names.values())

    # ----------------------------------------------------------- writes
    def reserve(self, name: str, expires: float) -> NameRecord:
        """A new name here, its VIP tentative (pending) until the store's claim agrees
        with etcd."""
        rec = NameRecord(name, b"", b"", expires=expires)
        self.set_index(rec, self.free_index())
        self.names[name] = rec
        self.pending.add(name)
        return rec

    # ---------------------------------------------------------- indices
    def set_index(self, rec: NameRecord, index: int) -> None:
        self.unindex(rec)
        rec.vip, rec.vip6 = self._vips_of(index)
        self.index[rec.name] = index
        self.vips[rec.vip] = rec
        self.vips[rec.vip6] = rec

    def unindex(self, rec: NameRecord) -> None:
        for ip in (rec.vip, rec.vip6):
            if ip and self.vips.get(ip) is rec:
                del self.vips[ip]

    def free_index(self) -> int:
        used = set(self.index.values()) | self.taken
        start = max(used, default=0) + 1
        if start <= self.capacity:
            return start
        for index in range(1, self.capacity + 1):  # wrapped: the lowest free one
            if index not in used:
                return index
        raise VipExhausted(str(self.block))

    def free_index_besides(self, index: int) -> int:
        self.taken.add(index)
        try:
            return self.free_index()
        finally:
            self.taken.discard(index)

    def _vips_of(self, index: int) -> tuple[bytes, bytes]:
        return (
            (self.block.network_address + index).packed,
            (self.block6.network_address + index).packed,
        )

    # ----------------------------------------------------- key events
    def apply(self, event: Event, now: float) -> list[tuple[Any, ...]]:
        """One watch event; returns the writes it calls for (in order, for the store's
        queue): a name deleted under a live local instance is claimed again."""
        parsed = self.keys.parse(event.kv.key)
        if parsed is None:
            return []
        put = event.kind == "put"
        if parsed[0] == "name":
            if put:
                self.apply_name(parsed[1], event.kv.value, event.kv.mod_revision)
            else:
                return self._remove_name(parsed[1])
        elif parsed[0] == "inst":
            self._apply_instance(event.kv.key, parsed[2], event.kv.value if put else None, now)
        elif parsed[0] == "host":
            self._apply_host(parsed[1], event.kv.value if put else None)
        return []

    def rebuild(
        self, kvs: list[KV], now: float, leased: bool
    ) -> tuple[list[tuple[Any, ...]], set[bytes]]:
        """The view from a full read (start, or history compacted away). Returns the
        writes it calls for (in order, for the store's queue: names deleted under a live
        local instance claimed again; with `leased`, our instances etcd lost while our
        lease lived written again) and the keys of our instances that etcd has."""
        writes: list[tuple[Any, ...]] = []
        names = {}
        self.remote.clear()
        self.hosts.clear()
        mine: set[bytes] = set()
        for kv in kvs:
            parsed = self.keys.parse(kv.key)
            if parsed is None:
                continue
            if parsed[0] == "host":
                self._apply_host(parsed[1], kv.value)
            elif parsed[0] == "name":
                names[parsed[1]] = kv
            elif parsed[0] == "inst":
                if parsed[2] == self.node:
                    mine.add(kv.key)
                else:
                    self._apply_instance(kv.key, parsed[2], kv.value, now)
        for name in list(self.names):
            if name not in names:
                writes += self._remove_name(name)
        for name, kv in names.items():
            self.apply_name(name, kv.value, kv.mod_revision)
        for name in self.names:
            self.names[name].instances = self._instances_of(name)
        if leased:  # ours that etcd lost (while our lease lived): write them again
            for key, inst in self.local.items():
                if key not in mine:
                    writes.append(("put", key, inst))
        return writes, mine

    def apply_name(self, name: str, value: bytes, mod_revision: int) -> None:
        try:
            d = json.loads(value)
            index = int(d["vip"])
            owner = d.get("owner")
            expires = float(d.get("expires") or 0.0)
        except (ValueError, KeyError, TypeError):
            log.warning("etcd: ignoring a bad record for %r", name)
            return
        if not 0 < index <= self.capacity:
            log.warning("etcd: %r has a VIP outside our block (same --vip-cidr everywhere?)", name)
            return
        rec = self.names.get(name)
        if rec is None:
            rec = NameRecord(name, b"", b"", expires=expires)
            self.names[name] = rec
        if self.index.get(name) != index or not rec.vip:
            for other, i in list(self.index.items()):  # a tentative VIP of ours it took
                if i == index and other != name and other in self.pending:
                    self.set_index(self.names[other], self.free_index_besides(index))
            self.set_index(rec, index)
        self.taken.discard(index)
        self.pending.discard(name)
        if owner is not None:
            rec.owner = int(owner)
        rec.expires = max(rec.expires, expires)
        self.stored[name] = (mod_revision, expires)
        rec.instances = self._instances_of(name)

    def _remove_name(self, name: str) -> list[tuple[Any, ...]]:
        writes: list[tuple[Any, ...]] = []
        self.stored.pop(name, None)
        rec = self.names.get(name)
        if rec is None:
            return writes
        if any(i.node == "" for i in rec.instances) or name in self.pending:
            # deleted under a live local instance (etcd lost data?): claim it again
            if name not in self.pending:
                self.pending.add(name)
                writes.append(("claim", name))
                for key, inst in self.local.items():
                    if inst.name == name:
                        writes.append(("put", key, inst))
            return writes
        self.unindex(rec)
        del self.names[name]
        self.index.pop(name, None)
        return writes

    def _apply_instance(self, key: bytes, node: str, value: bytes | None, now: float) -> None:
        if node == self.node:
            return  # ours: the local view is the truth (lease loss is handled there)
        gone = self.remote.pop(key, None)
        if value is not None:
            try:
                inst = parse_instance(value)
            except (ValueError, KeyError, TypeError):
                log.warning("etcd: ignoring a bad instance at %r", key)
                return
            if not reachable(inst.host):
                if node not in self.unreachable_nodes:
                    self.unreachable_nodes.add(node)
                    log.warning(
                        "etcd: node %s publishes on %s, which no other host can "
                        "reach: ignoring its services (its --publish-addr?)",
                        node,
                        inst.host,
                    )
                return
            self.remote[key] = inst
            name = inst.name
        elif gone is not None:
            name = gone.name
        else:
            return
        rec = self.names.get(name)
        if rec is not None:
            rec.instances = self._instances_of(name)
            if not rec.instances:
                rec.expires = max(rec.expires, now + self.reservation)

    def _apply_host(self, node: str, value: bytes | None) -> None:
        if value is None:
            self.hosts.pop(node, None)
            return
        try:
            d = json.loads(value)
            self.hosts[node] = {
                "addr": str(d.get("addr", "")),
                "pid": int(d.get("pid", 0)),
                "since": float(d.get("since", 0.0)),
            }
        except (ValueError, TypeError, AttributeError):
            log.warning("etcd: ignoring a bad host record for %r", node)

    def _instances_of(self, name: str) -> list[Instance]:
        local = [i for k, i in self.local.items() if i.name == name]
        remote = [i for k, i in sorted((k, i) for k, i in self.remote.items() if i.name == name)]
        return local + remote
