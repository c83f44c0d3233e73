"""A fake netstackd for tests: `watch` and `resolve` on a Unix socket (the protocol
of docs/directory-protocol.md), served from a dict the test controls.

    with FakeNetstackd(path) as d:
        d.add_instance("web", 8080, "127.0.0.1", 40123)   # publishes a new view
        d.reserve("db")                                    # a name not served yet

Runs in threads of the test process: a Unix socket needs no network namespace, so
netstack in a test namespace reaches it by path. `resolve_delay` makes `resolve`
slow; `requests` records every request.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import socketserver
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

DOMAIN = "netstack.internal"
VIP_CIDR = "198.18.0.0/16"
VIP6_CIDR = "fd4e:5344::/64"


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        fake = self.server.fake
        sock: socket.socket = self.request
        data = b""
        while b"\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        try:
            req = json.loads(data)
        except ValueError:
            self._reply({"error": {"desc": "bad json"}})
            return
        fake.requests.append(req)
        command = req.get("execute")
        if command == "watch":
            fake._watch(sock)
            return
        if command == "resolve":
            if fake.resolve_delay:
                time.sleep(fake.resolve_delay)
            try:
                vip, vip6 = fake.reserve(str(req.get("arguments", {}).get("name", "")))
            except ValueError as e:
                self._reply({"error": {"desc": str(e)}})
                return
            name = fake.label(str(req["arguments"]["name"]))
            self._reply({"return": {"name": name, "vip": vip, "vip6": vip6}})
            return
        self._reply({"error": {"desc": f"unknown command {command!r}"}})

    def _reply(self, obj: dict[str, Any]) -> None:
        self.request.sendall(json.dumps(obj).encode() + b"\n")


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    fake: FakeNetstackd


class FakeNetstackd:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.lock = threading.Lock()
        # name -> {"vip", "vip6", "instances": [{"port", "host", "host_port", "labels"}]}
        self.services: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.resolve_delay = 0.0
        self.watchers: list[socket.socket] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- process
    def start(self) -> FakeNetstackd:
        Path(self.path).unlink(missing_ok=True)
        self._server = _Server(self.path, _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and hang up on every watcher (netstackd went away)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self.lock:
            for w in self.watchers:
                try:
                    w.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.watchers.clear()
        Path(self.path).unlink(missing_ok=True)

    def __enter__(self) -> FakeNetstackd:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------- directory
    def label(self, name: str) -> str:
        name = name.lower().rstrip(".")
        if name.endswith("." + DOMAIN):
            name = name[: -len(DOMAIN) - 1]
        if not name or "." in name or not all(c.isalnum() or c == "-" for c in name):
            raise ValueError(f"invalid name {name!r}")
        return name

    def reserve(self, name: str) -> tuple[str, str]:
        """The name's VIPs, reserving them (and publishing) if it is new."""
        label = self.label(name)
        with self.lock:
            entry = self.services.get(label)
            if entry is None:
                n = len(self.services) + 1
                entry = {
                    "vip": str(ipaddress.IPv4Network(VIP_CIDR)[n]),
                    "vip6": str(ipaddress.IPv6Network(VIP6_CIDR)[n]),
                    "instances": [],
                }
                self.services[label] = entry
                fresh = True
            else:
                fresh = False
        if fresh:
            self.publish()
        return entry["vip"], entry["vip6"]

    def add_instance(
        self,
        name: str,
        port: int,
        host: str,
        host_port: int,
        labels: dict[str, str] | None = None,
    ) -> tuple[str, str]:
        vips = self.reserve(name)
        with self.lock:
            self.services[self.label(name)]["instances"].append(
                {
                    "port": port,
                    "host": host,
                    "host_port": host_port,
                    "labels": labels if labels is not None else {"zone": "default"},
                }
            )
        self.publish()
        return vips

    def view(self) -> dict[str, Any]:
        with self.lock:
            services = [{"name": name, **entry} for name, entry in self.services.items()]
        return {
            "view": {
                "domain": DOMAIN,
                "vip_cidr": VIP_CIDR,
                "vip6_cidr": VIP6_CIDR,
                "services": json.loads(json.dumps(services)),
            }
        }

    def publish(self) -> None:
        """The whole view again to every watcher."""
        line = json.dumps(self.view()).encode() + b"\n"
        with self.lock:
            for w in list(self.watchers):
                try:
                    w.sendall(line)
                except OSError:
                    self.watchers.remove(w)

    def _watch(self, sock: socket.socket) -> None:
        line = json.dumps(self.view()).encode() + b"\n"
        with self.lock:
            sock.sendall(line)
            self.watchers.append(sock)
        while True:  # the connection stays open until the client or close() ends it
            try:
                if not sock.recv(4096):
                    break
            except OSError:
                break
        with self.lock:
            if sock in self.watchers:
                self.watchers.remove(sock)

    def watching(self) -> int:
        with self.lock:
            return len(self.watchers)
