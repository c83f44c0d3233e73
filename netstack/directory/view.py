"""The directory as one client sees it: a `{"view": ...}` message from netstackd's
`watch`, parsed into lookups by name and by VIP, the label policy and round-robin
choice among a service's instances (sans-I/O).

A view is not changed once parsed; netstackd sends a whole new one after every change.
Only the round-robin positions outlive a view (`View.parse(msg, previous)` carries
them over), so a client going through the same VIP keeps rotating across updates.

Names: `web`, `web.`, `web.netstack.internal` and `WEB.NETSTACK.INTERNAL.` are the
same name (the domain is the view's). Policy (docs/directory-protocol.md): a client
may reach an instance when they share at least one `k=v` label; a client without
labels has zone=default. Instances on this host (`local`) go first; other hosts'
only when no local one is allowed. The view does no I/O and knows nothing of sockets.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_DOMAIN = "netstack.internal"
DEFAULT_VIP_CIDR = "198.18.0.0/16"
DEFAULT_VIP6_CIDR = "fd4e:5344::/64"
DEFAULT_LABELS: Mapping[str, str] = {"zone": "default"}

# one DNS label: what netstackd accepts as a service name
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")

Labels = Mapping[str, str]


class ViewError(ValueError):
    """A view message that does not follow the protocol."""


@dataclass(frozen=True)
class Instance:
    port: int
    host: str
    host_port: int
    labels: Labels
    node: str = ""  # the daemon (host) that registered it
    local: bool = True  # registered by the daemon this view comes from


@dataclass(frozen=True)
class Service:
    name: str
    vip: bytes  # 4 bytes
    vip6: bytes  # 16 bytes
    instances: tuple[Instance, ...]

    def on_port(self, port: int) -> list[Instance]:
        return [i for i in self.instances if i.port == port]


class Route(enum.Enum):
    """What a connect to (vip, port) meets besides an instance."""

    UNKNOWN = "unknown"  # no service has that VIP
    WAIT = "wait"  # the service exists, nothing serves that port yet
    DENIED = "denied"  # instances exist, none shares a label with the client


def allowed(client_labels: Labels, instance_labels: Labels) -> bool:
    """The policy: at least one shared k=v pair; no client labels means zone=default."""
    client = client_labels or DEFAULT_LABELS
    return any(instance_labels.get(k) == v for k, v in client.items())


def _network(text: Any, version: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        net = ipaddress.ip_network(str(text), strict=False)
    except ValueError:
        raise ViewError(f"bad VIP block {text!r}") from None
    if net.version != version:
        raise ViewError(f"VIP block {text!r} is not IPv{version}")
    return net


def _address(text: Any, version: int) -> bytes:
    try:
        ip = ipaddress.ip_address(str(text))
    except ValueError:
        raise ViewError(f"bad address {text!r}") from None
    if ip.version != version:
        raise ViewError(f"address {text!r} is not IPv{version}")
    return ip.packed


def _port(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise ViewError(f"bad port {value!r}")
    return value


def _instance(obj: Any) -> Instance:
    if not isinstance(obj, dict):
        raise ViewError("an instance is not an object")
    labels = obj.get("labels", {})
    if not isinstance(labels, dict):
        raise ViewError("instance labels are not an object")
    host = obj.get("host")
    if not isinstance(host, str):
        raise ViewError("instance host is not a string")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ViewError(f"instance host {host!r} is not an address") from None
    return Instance(
        port=_port(obj.get("port")),
        host=host,
        host_port=_port(obj.get("host_port")),
        labels={str(k): str(v) for k, v in labels.items()},
        node=str(obj.get("node", "")),
        local=obj.get("local", True) is not False,
    )


def _service(obj: Any) -> Service:
    if not isinstance(obj, dict):
        raise ViewError("a service is not an object")
    name = obj.get("name")
    if not isinstance(name, str) or not _LABEL.fullmatch(name.lower()):
        raise ViewError(f"bad service name {name!r}")
    instances = obj.get("instances", [])
    if not isinstance(instances, list):
        raise ViewError("instances is not a list")
    return Service(
        name=name.lower(),
        vip=_address(obj.get("vip"), 4),
        vip6=_address(obj.get("vip6"), 6),
        instances=tuple(_instance(i) for i in instances),
    )


@dataclass
class View:
    domain: str = DEFAULT_DOMAIN
    vip_block: ipaddress.IPv4Network = ipaddress.IPv4Network(DEFAULT_VIP_CIDR)
    vip6_block: ipaddress.IPv6Network = ipaddress.IPv6Network(DEFAULT_VIP6_CIDR)
    services: tuple[Service, ...] = ()
    # next round-robin position per (vip, port), carried from view to view
    turns: dict[tuple[bytes, int], int] = field(default_factory=dict)
    _by_name: dict[str, Service] = field(init=False, repr=False)
    _by_vip: dict[bytes, Service] = field(init=False, repr=False)
    _block: tuple[int, int] = field(init=False, repr=False)
    _block6: tuple[int, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.domain = self.domain.lower().strip(".")
        self._by_name = {s.name: s for s in self.services}
        self._by_vip = {}
        for s in self.services:
            self._by_vip[s.vip] = s
            self._by_vip[s.vip6] = s
        self._block = (int(self.vip_block.network_address), int(self.vip_block.netmask))
        self._block6 = (int(self.vip6_block.network_address), int(self.vip6_block.netmask))

    @classmethod
    def parse(cls, msg: Any, previous: View | None = None) -> View:
        """A view from a decoded `{"view": {...}}` line; raises ViewError."""
        if not isinstance(msg, dict) or not isinstance(msg.get("view"), dict):
            raise ViewError("not a view message")
        body = msg["view"]
        domain = body.get("domain", DEFAULT_DOMAIN)
        if not isinstance(domain, str) or not domain.strip("."):
            raise ViewError(f"bad domain {domain!r}")
        services = body.get("services", [])
        if not isinstance(services, list):
            raise ViewError("services is not a list")
        block = _network(body.get("vip_cidr", DEFAULT_VIP_CIDR), 4)
        block6 = _network(body.get("vip6_cidr", DEFAULT_VIP6_CIDR), 6)
        assert isinstance(block, ipaddress.IPv4Network)
        assert isinstance(block6, ipaddress.IPv6Network)
        parsed = tuple(_service(s) for s in services)
        vips = {s.vip for s in parsed}
        turns = (
            {k: t for k, t in previous.turns.items() if k[0] in vips}
            if previous is not None
            else {}
        )
        return cls(domain=domain, vip_block=block, vip6_block=block6, services=parsed, turns=turns)

    # ------------------------------------------------------------------ names
    def service_name(self, name: str) -> str | None:
        """The service label of a name in the directory's namespace (`web`, `web.`,
        `web.<domain>`, any case), or None for a name outside it."""
        name = name.lower().rstrip(".")
        suffix = "." + self.domain
        if name.endswith(suffix):
            name = name[: -len(suffix)]
        elif "." in name:
            return None
        return name if _LABEL.fullmatch(name) else None

    def under_domain(self, name: str) -> bool:
        """`x.<domain>` (any case, trailing dot or not): the directory answers for it."""
        return name.lower().rstrip(".").endswith("." + self.domain)

    def lookup(self, name: str) -> Service | None:
        label = self.service_name(name)
        return self._by_name.get(label) if label is not None else None

    # ------------------------------------------------------------------- VIPs
    def in_vip_block(self, ip: bytes) -> bool:
        """ip (4 or 16 bytes) in a VIP block; on the per-datagram path, so integers."""
        if len(ip) == 4:
            net, mask = self._block
        elif len(ip) == 16:
            net, mask = self._block6
        else:
            return False
        return int.from_bytes(ip, "big") & mask == net

    def by_vip(self, ip: bytes) -> Service | None:
        return self._by_vip.get(ip)

    def instances(self, vip: bytes, port: int) -> list[Instance]:
        service = self._by_vip.get(vip)
        return service.on_port(port) if service is not None else []

    def route(self, vip: bytes, port: int, client_labels: Labels) -> Instance | Route:
        """The instance a connect to (vip, port) goes to, taking turns among the
        allowed ones; or why there is none."""
        service = self._by_vip.get(vip)
        if service is None:
            return Route.UNKNOWN
        candidates = service.on_port(port)
        if not candidates:
            return Route.WAIT
        ok = [i for i in candidates if allowed(client_labels, i.labels)]
        if not ok:
            return Route.DENIED
        ok = [i for i in ok if i.local] or ok  # this host's first (as netstackd picks)
        key = (service.vip, port)  # v4 and v6 share the rotation
        turn = self.turns.get(key, 0)
        self.turns[key] = turn + 1
        return ok[turn % len(ok)]
