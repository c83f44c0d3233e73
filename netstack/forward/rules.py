"""Forwarding rules: validation of add_hostfwd arguments (strict where slirp4netns is
sloppy: ports 1-65535, guest_addr inside the network, proto required) and the set of
active rules with their ids (from 1, never reused)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, NamedTuple, Protocol

from netstack.stack.config import DNS6, HOST6, PREFIX6, NetworkConfig

PREFIX6_NETWORK = PREFIX6.network_address.packed

PROTOS = ("tcp", "udp")


class BadRequest(Exception):
    """An API error; str(e) is the desc after "bad request: "."""


class ForwardRule(NamedTuple):  # not a dataclass: see stack/limits.py
    id: int
    proto: str
    host_addr: str
    host_port: int
    guest_addr: str
    guest_port: int

    def entry(self) -> dict[str, Any]:
        """The list_hostfwd entry, keys in slirp4netns's order."""
        return {
            "id": self.id,
            "proto": self.proto,
            "host_addr": self.host_addr,
            "host_port": self.host_port,
            "guest_addr": self.guest_addr,
            "guest_port": self.guest_port,
        }


class Listener(Protocol):
    def close(self) -> None: ...


class ListenerFactory(Protocol):
    def listen(self, rule: ForwardRule) -> Listener:
        """Bind and listen for rule; raises OSError on failure."""
        ...


def _port(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    port = int(value)
    return port if 1 <= port <= 65535 else None


def _ipv4(value: str) -> str | None:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        return None


def _address(value: str, config: NetworkConfig) -> str | None:
    """IPv4, or (with -6) IPv6, normalised; None if neither."""
    v4 = _ipv4(value)
    if v4 is not None or not config.ipv6:
        return v4
    try:
        return str(ipaddress.IPv6Address(value))
    except ValueError:
        return None


def _guest_address_ok(addr: str, config: NetworkConfig) -> bool:
    packed = ipaddress.ip_address(addr).packed
    if len(packed) == 16:
        return config.in_prefix6(packed) and packed not in (HOST6, DNS6, PREFIX6_NETWORK)
    return config.in_network(packed) and packed not in (
        config.network,
        config.gateway,
        config.dns,
        config.broadcast,
    )


def parse_add(args: object, config: NetworkConfig) -> tuple[str, str, int, str, int]:
    """(proto, host_addr, host_port, guest_addr, guest_port) or BadRequest."""
    if not isinstance(args, dict):
        args = {}
    where = "add_hostfwd: bad arguments."
    proto = args.get("proto")
    if proto not in PROTOS:
        raise BadRequest(where + "proto")
    host_addr = args.get("host_addr")
    if host_addr is None or host_addr == "":
        host_addr = "0.0.0.0"
    if not isinstance(host_addr, str) or _address(host_addr, config) is None:
        raise BadRequest(where + "host_addr")
    host_port = _port(args.get("host_port"))
    if host_port is None:
        raise BadRequest(where + "host_port")
    guest_addr = args.get("guest_addr")
    if guest_addr is None or guest_addr == "":
        guest_addr = socket.inet_ntoa(config.guest)
    if not isinstance(guest_addr, str):
        raise BadRequest(where + "guest_addr")
    guest_norm = _address(guest_addr, config)
    if guest_norm is None or not _guest_address_ok(guest_norm, config):
        raise BadRequest(where + "guest_addr")
    guest_addr = guest_norm
    guest_port = _port(args.get("guest_port"))
    if guest_port is None:
        raise BadRequest(where + "guest_port")
    return proto, _address(host_addr, config) or host_addr, host_port, guest_addr, guest_port


class Forwards:
    def __init__(self, config: NetworkConfig, listeners: ListenerFactory) -> None:
        self.config = config
        self.listeners = listeners
        self.rules: dict[int, tuple[ForwardRule, Listener]] = {}
        self.next_id = 1

    def add(self, args: object) -> ForwardRule:
        proto, host_addr, host_port, guest_addr, guest_port = parse_add(args, self.config)
        v6 = ":" in host_addr
        wildcard = "::" if v6 else "0.0.0.0"
        for rule, _ in self.rules.values():
            if (
                rule.proto == proto
                and rule.host_port == host_port
                and (":" in rule.host_addr) == v6
                and (rule.host_addr == host_addr or wildcard in (rule.host_addr, host_addr))
            ):
                raise BadRequest("add_hostfwd: slirp_add_hostfwd failed")
        rule = ForwardRule(self.next_id, proto, host_addr, host_port, guest_addr, guest_port)
        try:
            listener = self.listeners.listen(rule)
        except OSError as e:
            raise BadRequest("add_hostfwd: slirp_add_hostfwd failed") from e
        self.rules[rule.id] = (rule, listener)
        self.next_id += 1
        return rule

    def remove(self, args: object) -> None:
        rule_id = args.get("id") if isinstance(args, dict) else None
        if isinstance(rule_id, bool) or not isinstance(rule_id, int) or rule_id not in self.rules:
            raise BadRequest("remove_hostfwd: bad arguments.id")
        _, listener = self.rules.pop(rule_id)
        listener.close()

    def entries(self) -> list[dict[str, Any]]:
        return [rule.entry() for rule, _ in self.rules.values()]

    def close_all(self) -> None:
        for _, listener in self.rules.values():
            listener.close()
        self.rules.clear()
