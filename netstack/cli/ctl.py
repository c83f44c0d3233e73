"""netstackctl: talk to a running netstack's API socket.

netstackctl -a SOCKET stats                  counters, flows, drops by reason
netstackctl -a SOCKET connections            live flows with bytes and state
netstackctl -a SOCKET forwards               port forwards
netstackctl -a SOCKET add tcp|udp [HOST_ADDR:]HOST_PORT [GUEST_ADDR:]GUEST_PORT
netstackctl -a SOCKET remove ID
netstackctl -d SOCKET services|instances|clients|hosts   the service directory (netstackd)
netstackctl [-d SOCKET] seccomp-profile [--base FILE] [--killable]
                                             an OCI profile handing containers to netstackd
add --json to print the raw reply
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any


def request(path: str, execute: str, arguments: dict[str, Any] | None = None) -> Any:
    req: dict[str, Any] = {"execute": execute}
    if arguments is not None:
        req["arguments"] = arguments
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(json.dumps(req).encode())
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return json.loads(data)


def _split_addr(text: str) -> tuple[str, int]:
    addr, _, port = text.rpartition(":")
    return addr, int(port)


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    for r in rows:
        lines.append(
            "  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths, strict=True))
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="netstackctl", description="Query a running netstack.")
    p.add_argument("-a", "--api-socket", help="a netstack's API socket")
    p.add_argument("-d", "--directory", default=None,
                   help="netstackd's socket (default: the per-user one)")
    p.add_argument("--json", action="store_true", help="print the raw JSON reply")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("stats")
    sub.add_parser("connections")
    sub.add_parser("forwards")
    add = sub.add_parser("add")
    add.add_argument("proto", choices=["tcp", "udp"])
    add.add_argument("host")
    add.add_argument("guest")
    rm = sub.add_parser("remove")
    rm.add_argument("id", type=int)
    for name in DIRECTORY_COMMANDS:
        sub.add_parser(name).add_argument("--json", action="store_true", dest="json_here",
                                          help="print the raw JSON reply")
    prof = sub.add_parser("seccomp-profile")
    prof.add_argument("--base", help="the runtime's default profile to extend")
    prof.add_argument("--killable", action="store_true",
                      help="add SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (runc >= 1.2)")
    a = p.parse_args(argv)
    if a.command in DIRECTORY_COMMANDS or a.command == "seccomp-profile":
        return _directory(a)
    if a.api_socket is None:
        p.error("-a/--api-socket is required for this command")

    if a.command == "stats":
        reply = request(a.api_socket, "get_stats")
    elif a.command == "connections":
        reply = request(a.api_socket, "list_connections")
    elif a.command == "forwards":
        reply = request(a.api_socket, "list_hostfwd")
    elif a.command == "add":
        host_addr, host_port = _split_addr(a.host)
        guest_addr, guest_port = _split_addr(a.guest)
        reply = request(
            a.api_socket,
            "add_hostfwd",
            {
                "proto": a.proto,
                "host_addr": host_addr,
                "host_port": host_port,
                "guest_addr": guest_addr,
                "guest_port": guest_port,
            },
        )
    else:
        reply = request(a.api_socket, "remove_hostfwd", {"id": a.id})

    if a.json:
        print(json.dumps(reply, indent=2))
        return 1 if "error" in reply else 0
    if "error" in reply:
        print(f"netstackctl: {reply['error'].get('desc')}", file=sys.stderr)
        return 1
    ret = reply.get("return", {})
    if a.command == "stats":
        print(
            _table(
                [{"what": k, "count": v} for k, v in sorted(ret.get("flows", {}).items())],
                ["what", "count"],
            )
        )
        print()
        print(
            _table(
                [{"drop reason": k, "count": v} for k, v in sorted(ret.get("drops", {}).items())],
                ["drop reason", "count"],
            )
        )
        print()
        print(
            _table(
                [{"event": k, "count": v} for k, v in sorted(ret.get("events", {}).items())],
                ["event", "count"],
            )
        )
        fast = ret.get("fast_path")
        if fast:  # the C flow path: what it handled, why it gave flows back
            rows = [{"fast path": k, "count": v} for k, v in fast.items() if k != "releases"]
            rows += [
                {"fast path": f"released: {k}", "count": v}
                for k, v in sorted(fast.get("releases", {}).items())
            ]
            print()
            print(_table(rows, ["fast path", "count"]))
        directory = ret.get("directory")
        if directory:  # --directory: netstackd's watch and the view
            print()
            rows = [{"directory": k, "value": v} for k, v in directory.items()]
            print(_table(rows, ["directory", "value"]))
    elif a.command == "connections":
        print(
            _table(
                ret.get("connections", []),
                [
                    "proto",
                    "direction",
                    "state",
                    "guest",
                    "remote",
                    "bytes_from_guest",
                    "bytes_to_guest",
                ],
            )
        )
    elif a.command == "forwards":
        print(
            _table(
                ret.get("entries", []),
                ["id", "proto", "host_addr", "host_port", "guest_addr", "guest_port"],
            )
        )
    elif a.command == "add":
        print(ret.get("id"))
    return 0


DIRECTORY_COMMANDS = {
    "services": ("list_services", ["name", "vip", "vip6", "ports", "instances", "nodes",
                                   "labels"]),
    "instances": ("list_instances", ["name", "port", "node", "host", "host_port", "container",
                                     "pid", "labels"]),
    "clients": ("list_clients", ["client", "name", "vip", "port", "host", "host_port"]),
    "hosts": ("list_hosts", ["node", "addr", "pid", "since", "local"]),
}


def _when(value: Any) -> str:
    import time

    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(value))) + "Z"
    except (TypeError, ValueError, OverflowError):
        return str(value)


def _directory(a: argparse.Namespace) -> int:
    from netstack.directory import profile
    from netstack.directory.paths import default_socket

    path = a.directory or default_socket()
    if a.command == "seccomp-profile":
        try:
            agent = request(path, "info")["return"]["agent_socket"]
        except (OSError, ValueError, KeyError):
            import os

            agent = os.path.join(os.path.dirname(path), "agent.sock")
        try:
            print(json.dumps(profile.build(profile.load_base(a.base), agent, a.killable),
                             indent=2))
        except (OSError, ValueError) as e:
            print(f"netstackctl: {e}", file=sys.stderr)
            return 1
        return 0
    execute, columns = DIRECTORY_COMMANDS[a.command]
    try:
        reply = request(path, execute)
    except OSError as e:
        print(f"netstackctl: {path}: {e}", file=sys.stderr)
        return 1
    if a.json or getattr(a, "json_here", False) or "error" in reply:
        print(json.dumps(reply, indent=2))
        return 1 if "error" in reply else 0
    rows = []
    for entry in reply["return"]["entries"]:
        labels = entry.get("labels")
        if isinstance(labels, dict):
            labels = ",".join(f"{k}={v}" for k, v in labels.items())
        elif isinstance(labels, list):
            labels = ",".join(f"{k}={v}" for k, v in labels)
        ports = entry.get("ports")
        extra: dict[str, Any] = {}
        if isinstance(entry.get("nodes"), list):
            extra["nodes"] = ",".join(map(str, entry["nodes"]))
        if a.command == "hosts":
            extra["since"] = _when(entry.get("since"))
            extra["local"] = "yes" if entry.get("local") else ""
        rows.append({**entry, **extra, "labels": labels or "",
                     **({"ports": ",".join(map(str, ports))} if ports is not None else {})})
    print(_table(rows, columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
