"""The directory's key layout in etcd and how its values are written (PREFIX is
`/netstack/v1/` unless `--etcd-prefix` says otherwise):

    PREFIX name/<name>                  {"vip": INDEX, "owner": UID|null, "expires": T}
    PREFIX vip/<INDEX>                  <name>
    PREFIX inst/<name>/<node>/<cookie>  an instance (Instance.to_json + "node", "cookie")
    PREFIX host/<node>                  {"addr": PUBLISH_ADDR, "pid": PID, "since": T}
"""

from __future__ import annotations

import ipaddress
import json

from netstack.directory.store import Instance

DEFAULT_PREFIX = "/netstack/v1/"


class Keys:
    """The key layout under one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if not prefix.endswith("/"):
            prefix += "/"
        self.prefix = prefix.encode()

    def name(self, name: str) -> bytes:
        return self.prefix + b"name/" + name.encode()

    def vip(self, index: int) -> bytes:
        return self.prefix + b"vip/" + str(index).encode()

    def instance(self, name: str, node: str, cookie: int) -> bytes:
        return self.prefix + f"inst/{name}/{node}/{cookie}".encode()

    def host(self, node: str) -> bytes:
        return self.prefix + b"host/" + node.encode()

    def parse(self, key: bytes) -> tuple[str, ...] | None:
        """("name", name) | ("vip", index) | ("inst", name, node, cookie) |
        ("host", node); None for anything else under the prefix."""
        if not key.startswith(self.prefix):
            return None
        parts = key[len(self.prefix):].decode(errors="replace").split("/")
        kind = parts[0]
        if (kind in ("name", "vip", "host") and len(parts) == 2 and parts[1]) or (
                kind == "inst" and len(parts) == 4 and all(parts[1:])):
            return tuple(parts)
        return None


def instance_value(inst: Instance, node: str) -> bytes:
    return json.dumps({**inst.to_json(), "node": node, "cookie": inst.cookie},
                      separators=(",", ":")).encode()


def parse_instance(value: bytes) -> Instance:
    d = json.loads(value)
    return Instance(name=str(d["name"]), port=int(d["port"]), host=str(d["host"]),
                    host_port=int(d["host_port"]),
                    labels={str(k): str(v) for k, v in dict(d.get("labels") or {}).items()},
                    owner=int(d.get("owner", -1)), container=str(d.get("container", "")),
                    pid=int(d.get("pid", 0)), cookie=int(d.get("cookie", 0)),
                    since=float(d.get("since", 0.0)), node=str(d["node"]))


def reachable(host: str) -> bool:
    """Whether another host's published address can be reached from here at all."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified or ip.is_multicast)
