"""The directory's decisions (sans-I/O; every call takes `now`): names and their VIPs,
who may register a name, which instance a client reaches, and the view netstack's TAP
path and DNS follow.

Policy (AppSwitch's rule): a client reaches an instance when they share at least one
label (a k=v pair); no labels means zone=default. A name belongs to the uid that first
registered it; others cannot add instances to it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from netstack.directory.store import Instance, NameRecord, Store

DEFAULT_LABELS = {"zone": "default"}
RESERVATION_S = 60.0
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9_.\-]{0,63}$")


class Refused(Exception):
    """A registration the directory will not take (owner, limit, bad name)."""


class Pick(Enum):
    UNKNOWN = "unknown"  # not a VIP of any name
    NOT_SERVED = "not-served"  # a name nobody serves on that port yet
    DENIED = "denied"  # served, but no instance shares a label with the client


def parse_labels(text: str) -> dict[str, str]:
    """`k=v,k2=v2` or `k=v;k2=v2` (annotations, --label; podman's --annotation splits at
    commas, so it needs the semicolons): a clear error for anything else."""
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.replace(";", ",").split(","))):
        key, sep, value = part.partition("=")
        if not sep or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise ValueError(f"bad label {part!r} (want key=value)")
        labels[key] = value
    return labels


def effective_labels(labels: dict[str, str]) -> dict[str, str]:
    return labels or DEFAULT_LABELS


def allowed(client: dict[str, str], server: dict[str, str]) -> bool:
    client, server = effective_labels(client), effective_labels(server)
    return any(server.get(k) == v for k, v in client.items())


@dataclass(frozen=True)
class Limits:
    instances_per_owner: int = 1024
    instances_per_container: int = 64
    names: int = 16384


class Directory:
    def __init__(self, store: Store, domain: str = "netstack.internal",
                 limits: Limits | None = None) -> None:
        self.store = store
        self.domain = domain.strip(".").lower()
        self.limits = limits or Limits()
        self.changed: list[Callable[[], None]] = []  # called after every change
        self._rr: dict[tuple[bytes, int], int] = {}
        self._by_cookie: dict[int, Instance] = {}
        store.changed.append(self._notify)  # other hosts' changes

    # ---------------------------------------------------------------- names
    def canonical(self, name: str) -> str | None:
        """`Web.` or `web.netstack.internal` -> `web`; None if not a valid name."""
        name = name.strip().rstrip(".").lower()
        suffix = "." + self.domain
        if name.endswith(suffix):
            name = name[: -len(suffix)]
        if not name or len(name) > 200 or name == self.domain:
            return None
        if not all(_LABEL.match(part) for part in name.split(".")):
            return None
        return name

    def resolve(self, name: str, now: float) -> NameRecord | None:
        """The record for a name, reserving VIPs for one nobody serves yet."""
        canonical = self.canonical(name)
        if canonical is None:
            return None
        rec = self.store.name(canonical)
        if rec is None:
            if len(self.store.records()) >= self.limits.names:
                return None
            rec = self.store.reserve(canonical, now + RESERVATION_S)
            self._notify()
        elif not rec.instances:
            self.store.extend(rec, now + RESERVATION_S)
        return rec

    async def settle(self, name: str, now: float, timeout: float = 0.5) -> NameRecord | None:
        """resolve, once the name's VIPs are final (a shared store agreed on them; an
        unreachable one: None after timeout, well within the 1 s netstack's DNS waits)."""
        rec = self.resolve(name, now)
        if rec is None:
            return None
        return await self.store.settle(rec.name, timeout)

    # -------------------------------------------------------- registrations
    def register(self, inst: Instance, now: float) -> NameRecord:
        canonical = self.canonical(inst.name)
        if canonical is None:
            raise Refused(f"invalid name {inst.name!r}")
        inst.name = canonical
        existing = self.store.name(canonical)
        if existing is not None and existing.owner is not None and existing.owner != inst.owner:
            raise Refused(f"name {canonical!r} is held by another owner")
        owned = sum(1 for i in self._by_cookie.values() if i.owner == inst.owner)
        if owned >= self.limits.instances_per_owner:
            raise Refused("too many registrations for this owner")
        mine = sum(1 for i in self._by_cookie.values() if i.container == inst.container)
        if mine >= self.limits.instances_per_container:
            raise Refused("too many registrations for this container")
        rec = existing or self.store.reserve(canonical, now + RESERVATION_S)
        rec.owner = inst.owner
        self.store.add(rec, inst)
        self._by_cookie[inst.cookie] = inst
        self._notify()
        return rec

    def unregister(self, cookie: int, now: float) -> Instance | None:
        inst = self._by_cookie.pop(cookie, None)
        if inst is None:
            return None
        rec = self.store.name(inst.name)
        if rec is not None:
            self.store.remove(rec, inst, now + RESERVATION_S)
        self._notify()
        return inst

    def instances(self) -> list[Instance]:
        return list(self._by_cookie.values())

    def expire(self, now: float) -> None:
        """Forget names with no instance whose reservation ran out."""
        gone = [r.name for r in self.store.records() if not r.instances and r.expires <= now]
        for name in gone:
            self.store.drop(name)
            self._rr = {k: v for k, v in self._rr.items() if self.store.by_vip(k[0])}
        if gone:
            self._notify()

    # ------------------------------------------------------------- lookups
    def is_vip(self, ip: bytes) -> bool:
        if len(ip) == 4:
            return ipaddress.IPv4Address(ip) in self.store.block
        if len(ip) == 16:
            return ipaddress.IPv6Address(ip) in self.store.block6
        return False

    def pick(self, vip: bytes, port: int, client_labels: dict[str, str]) -> Instance | Pick:
        """The instance a new connection from a client with these labels goes to:
        round robin over the allowed ones on this host, or, when none is, over the
        allowed ones on other hosts (every instance in the store is alive: another
        host's goes with its lease, ours when its listener closes)."""
        rec = self.store.by_vip(vip)
        if rec is None:
            return Pick.UNKNOWN
        on_port = [i for i in rec.instances if i.port == port]
        if not on_port:
            return Pick.NOT_SERVED
        permitted = [i for i in on_port if allowed(client_labels, i.labels)]
        if not permitted:
            return Pick.DENIED
        local = [i for i in permitted if not i.node]
        permitted = local or permitted
        key = (vip, port)
        n = self._rr.get(key, 0)
        self._rr[key] = n + 1
        return permitted[n % len(permitted)]

    def record_for(self, vip: bytes) -> NameRecord | None:
        return self.store.by_vip(vip)

    # ---------------------------------------------------------------- view
    def view(self) -> dict[str, object]:
        block, block6 = self.store.block, self.store.block6
        services = []
        for rec in sorted(self.store.records(), key=lambda r: r.name):
            services.append({
                "name": rec.name,
                "vip": str(ipaddress.IPv4Address(rec.vip)),
                "vip6": str(ipaddress.IPv6Address(rec.vip6)),
                "instances": [
                    {"port": i.port, "host": i.host, "host_port": i.host_port,
                     "labels": dict(i.labels), "node": i.node or self.store.node,
                     "local": not i.node}
                    for i in rec.instances
                ],
            })
        return {"domain": self.domain, "vip_cidr": str(block), "vip6_cidr": str(block6),
                "services": services}

    def _notify(self) -> None:
        for callback in list(self.changed):
            callback()
