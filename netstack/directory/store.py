"""Where the directory's records live, behind one small interface.

`MemoryStore` is the embedded default (one host, nothing else to run); `EtcdStore`
(etcdstore.py) shares the records between hosts. No directory logic knows which it has.
Records: a name with its VIPs and owner, and the instances that serve it.

Reads (`name`, `by_vip`, `records`) answer from a local view and never wait. Writes
(`reserve`, `add`, `remove`, `extend`, `drop`) change the view at once; a shared store
carries them to the other hosts later (retrying while it is unreachable), and tells the
directory about the other hosts' changes through `changed`. `settle` waits until a
name's VIPs are final (a shared store may have to agree with the other hosts first).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Instance:
    """One listening socket that serves a name on a port."""

    name: str
    port: int  # the port clients dial on the VIP (what the server bound)
    host: str  # where it really listens on the host
    host_port: int
    labels: dict[str, str]
    owner: int  # uid of whoever registered it (owns the name)
    container: str
    pid: int
    cookie: int  # SO_COOKIE of the host listening socket
    since: float
    node: str = ""  # the daemon (host) that registered it; "" for this one

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "port": self.port,
            "host": self.host,
            "host_port": self.host_port,
            "labels": dict(self.labels),
            "owner": self.owner,
            "container": self.container,
            "pid": self.pid,
            "since": self.since,
        }

    def listing(self, here: str) -> dict[str, object]:
        """to_json plus where it lives (here: this daemon's node name)."""
        return {**self.to_json(), "node": self.node or here, "local": not self.node}


@dataclass
class NameRecord:
    name: str
    vip: bytes
    vip6: bytes
    owner: int | None = None  # set by the first registration; None while only reserved
    expires: float = 0.0  # when it has no instance: the time its reservation ends
    instances: list[Instance] = field(default_factory=list)


class Store(Protocol):
    block: ipaddress.IPv4Network
    block6: ipaddress.IPv6Network
    changed: list[Callable[[], None]]  # called after another host's changes reached the view
    stats: dict[str, int]  # the store's own counters (the API's stats show them)
    node: str  # this daemon's name (instances registered here have node "")

    def hosts(self) -> list[dict[str, object]]:
        """The live daemons: {"node", "addr", "pid", "since", "local"}, this one first."""
        ...

    def name(self, name: str) -> NameRecord | None: ...

    def by_vip(self, ip: bytes) -> NameRecord | None: ...

    def records(self) -> list[NameRecord]: ...

    def reserve(self, name: str, expires: float) -> NameRecord:
        """The record for name, created with fresh VIPs if there is none."""
        ...

    def add(self, rec: NameRecord, inst: Instance) -> None:
        """inst (registered here) serves rec; rec.owner is already set."""
        ...

    def remove(self, rec: NameRecord, inst: Instance, expires: float) -> None:
        """inst no longer serves rec; if none is left, the name is reserved until expires."""
        ...

    def extend(self, rec: NameRecord, expires: float) -> None:
        """Keep an unserved name's reservation at least until expires."""
        ...

    def drop(self, name: str) -> None:
        """Forget a name (its VIPs may be given out again later)."""
        ...

    async def settle(self, name: str, timeout: float) -> NameRecord | None:
        """The record for name once its VIPs are final (None: no such name, or no
        agreement within timeout)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class VipExhausted(Exception):
    pass


class MemoryStore:
    """Everything in this process. VIPs are handed out in order, a freed one only once
    the block is used up, so a VIP a client still caches points at nothing for a while
    rather than at a new service."""

    def __init__(self, vip_cidr: str, vip6_cidr: str, node: str = "",
                 host_info: dict[str, object] | None = None) -> None:
        self.node = node
        self.host_info = {**(host_info or {}), "since": time.time()}
        self.block = ipaddress.IPv4Network(vip_cidr)
        self.block6 = ipaddress.IPv6Network(vip6_cidr)
        self._names: dict[str, NameRecord] = {}
        self._vips: dict[bytes, NameRecord] = {}
        self._next = 1
        self._freed: list[int] = []
        self._capacity = min(self.block.num_addresses, self.block6.num_addresses) - 2
        self.changed: list[Callable[[], None]] = []  # (no other hosts)
        self.stats: dict[str, int] = {}

    def name(self, name: str) -> NameRecord | None:
        return self._names.get(name)

    def hosts(self) -> list[dict[str, object]]:
        return [{"node": self.node, **self.host_info, "local": True}]

    def reserve(self, name: str, expires: float) -> NameRecord:
        rec = self._names.get(name)
        if rec is not None:
            return rec
        if self._next <= self._capacity:
            index = self._next
            self._next += 1
        elif self._freed:
            index = self._freed.pop(0)
        else:
            raise VipExhausted(str(self.block))
        vip = (self.block.network_address + index).packed
        vip6 = (self.block6.network_address + index).packed
        rec = NameRecord(name, vip, vip6, expires=expires)
        self._names[name] = rec
        self._vips[vip] = rec
        self._vips[vip6] = rec
        return rec

    def by_vip(self, ip: bytes) -> NameRecord | None:
        return self._vips.get(ip)

    def records(self) -> list[NameRecord]:
        return list(self._names.values())

    def drop(self, name: str) -> None:
        rec = self._names.pop(name, None)
        if rec is None:
            return
        self._vips.pop(rec.vip, None)
        self._vips.pop(rec.vip6, None)
        self._freed.append(int.from_bytes(rec.vip, "big") - int(self.block.network_address))

    def add(self, rec: NameRecord, inst: Instance) -> None:
        rec.instances.append(inst)

    def remove(self, rec: NameRecord, inst: Instance, expires: float) -> None:
        rec.instances = [i for i in rec.instances if i is not inst]
        if not rec.instances:
            rec.expires = expires

    def extend(self, rec: NameRecord, expires: float) -> None:
        rec.expires = max(rec.expires, expires)

    async def settle(self, name: str, timeout: float) -> NameRecord | None:
        return self._names.get(name)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass
