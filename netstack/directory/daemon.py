"""netstackd: the per-user service directory and seccomp agent.

Two Unix sockets: the agent socket (an OCI `listenerPath`: runtimes and netstack-run
hand each container's seccomp listener over it) and the JSON API (docs/directory-
protocol.md: resolve, the watch stream netstack's DNS and TAP path follow, lists and
stats). The API socket is created last, once everything can be served. A sweep every
SWEEP_S asks the kernel which of our sockets still exist, so a service disappears
within a second of its listening socket closing or its process dying.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Any

from netstack import log as netstack_log
from netstack.directory import cluster, keeper, oci
from netstack.directory.calls import Container
from netstack.directory.hostsock import Kind
from netstack.directory.inflight import InFlight
from netstack.directory.paths import default_socket
from netstack.directory.registry import Directory
from netstack.directory.supervisor import Supervisor

log = netstack_log.get_logger("netstackd")

VERSION = "0.1.0"
DEFAULT_VIP_CIDR = "198.18.0.0/16"  # RFC 2544 benchmarking: never routed, not 10.0.2.0/24
DEFAULT_VIP6_CIDR = "fd4e:5344::/64"
DEFAULT_DOMAIN = "netstack.internal"
SWEEP_S = 0.25  # listeners: a service disappears within a second
FULL_SWEEP_EVERY = 8  # every socket we made (a dump of all TCP sockets): every 2 s
MAX_CONTAINERS = 4096
AGENT_TIMEOUT_S = 5.0
MAX_AGENT_CLIENTS = 64
MAX_API_CLIENTS = 128
MAX_WATCHERS = 256
# views to watchers take at most this share of the daemon's time: a view is the whole
# directory, and one per change made a burst's cost grow with its square (1,000
# registrations: 1,070 views, 1.5 s of CPU per host). The next view waits until the
# last one's cost is this share of the time since it began: 7-9 views per host in
# that burst; a lone change, or one in a small directory, goes at once (a registration
# on another host is in a watcher's view after p50 1.9 ms, bench/cluster).
VIEW_SHARE = 0.1
MAX_REQUEST = 65536


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="netstackd",
                                description="netstack's service directory and seccomp agent.")
    p.add_argument("--socket", default=None, help="the JSON API socket (default: %(default)s "
                   "-> $XDG_RUNTIME_DIR/netstack/netstackd.sock, /run/netstack for root)")
    p.add_argument("--agent-socket", default=None,
                   help="the OCI seccomp listenerPath (default: agent.sock beside --socket)")
    cluster.add_arguments(p)
    p.add_argument("--vip-cidr", default=DEFAULT_VIP_CIDR, help="IPv4 block for VIPs")
    p.add_argument("--vip6-cidr", default=DEFAULT_VIP6_CIDR, help="IPv6 block for VIPs")
    p.add_argument("--domain", default=DEFAULT_DOMAIN, help="DNS domain of service names")
    p.add_argument("--connect-wait", type=float, default=10.0, metavar="SECONDS",
                   help="how long a blocking connect to a name nobody serves yet waits")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    cluster.check(p, args)
    try:
        v4 = ipaddress.IPv4Network(args.vip_cidr)
        v6 = ipaddress.IPv6Network(args.vip6_cidr)
    except ValueError as e:
        p.error(f"bad VIP block: {e}")
    if v4.prefixlen > 30 or v6.prefixlen > 126:
        p.error("VIP blocks must hold at least a few addresses")
    if v4.overlaps(ipaddress.IPv4Network("10.0.2.0/24")) or v4.is_loopback:
        p.error(f"--vip-cidr {v4} collides with netstack's network or loopback")
    if not 0 <= args.connect_wait <= 3600:
        p.error("--connect-wait must be between 0 and 3600 seconds")
    args.socket = args.socket or default_socket()
    args.agent_socket = args.agent_socket or os.path.join(os.path.dirname(args.socket),
                                                          "agent.sock")
    return args


def _bind_unix(path: str) -> socket.socket:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if os.path.exists(path):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # stale
            else:
                raise SystemExit(f"netstackd: {path} is in use (another netstackd?)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(64)
    sock.setblocking(False)
    return sock


class Daemon:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.store = cluster.make_store(args)
        self.directory = Directory(self.store, args.domain)
        self.supervisor = Supervisor(self.directory, publish_host=args.publish_addr,
                                     connect_wait=args.connect_wait)
        self.supervisor.port_range = args.port_range
        self.watchers: set[asyncio.StreamWriter] = set()
        self.started = time.time()
        self._view_pending = False
        self._view_sent = 0.0  # loop time of the last view sent
        self._view_cost = 0.0  # ... and the seconds it took
        self._views_sent = 0
        self._agent_clients = 0
        self._api_clients = 0
        self.directory.changed.append(self._schedule_view)
        self.keeper: socket.socket | None = None
        self._taken_back: list[Container] = []
        self.keeper_path = os.path.join(os.path.dirname(args.socket), "keeper.sock")
        self.supervisor.on_registrations = self._keep_registrations
        self.supervisor.on_container_gone = self._forget

    # --------------------------------------------------------------- keeper
    def _connect_keeper(self) -> None:
        """Connect to the keeper (starting one if none runs) and take back what it
        holds from an earlier netstackd."""
        os.makedirs(os.path.dirname(self.keeper_path) or ".", mode=0o700, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self.keeper_path)
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.keeper_path)
            subprocess.Popen([sys.executable, "-m", "netstack.directory.keeper",
                              self.keeper_path], start_new_session=True, close_fds=True)
            deadline = time.monotonic() + 5
            while True:
                try:
                    sock.connect(self.keeper_path)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        sock.settimeout(5)
        self.keeper = sock
        keeper.send_message(sock, {"op": "take"})
        while True:
            got = keeper.recv_message(sock)
            if got is None or got[0].get("op") == "end":
                break
            msg, fds = got
            if len(fds) != 2:
                for fd in fds:
                    os.close(fd)
                continue
            fd, memory = fds
            try:
                st = msg["state"]
                state = oci.ContainerState(
                    listener=fd, pid=int(st["pid"]), container=str(st["container"]),
                    name=st.get("name"), labels=dict(st.get("labels") or {}),
                    host_loopback=bool(st.get("host_loopback")), cidr=str(st["cidr"]),
                    ipv6=bool(st.get("ipv6")))
                c = self.supervisor.adopt(state, int(st["owner"]), InFlight(0, memory))
            except (KeyError, ValueError, TypeError, OSError) as e:
                log.warning("keeper: cannot take back %s: %s", msg.get("key"), e)
                os.close(fd)
                os.close(memory)
                continue
            restored = self.supervisor.restore(c, list(msg.get("records") or []))
            log.info("took back %s from the keeper (%d instance(s))", state.container,
                     restored)
            self._taken_back.append(c)

    def _keep(self, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        if self.keeper is None:
            return
        try:
            keeper.send_message(self.keeper, msg, fds)
        except OSError as e:
            log.warning("keeper: %s (restarts will lose state)", e)
            self.keeper.close()
            self.keeper = None

    def _keep_container(self, c: Container) -> None:
        st = c.state
        self._keep({"op": "put", "key": st.container, "state": {
            "pid": st.pid, "container": st.container, "name": st.name, "labels": st.labels,
            "host_loopback": st.host_loopback, "cidr": st.cidr, "ipv6": st.ipv6,
            "owner": c.owner}}, [c.listener, c.inflight.fd])

    def _keep_registrations(self, c: Container) -> None:
        self._keep({"op": "records", "key": c.state.container,
                    "records": self.supervisor.registrations_of(c)})

    def _forget(self, c: Container) -> None:
        self._keep({"op": "forget", "key": c.state.container})

    # ---------------------------------------------------------------- agent
    def _agent_accept(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except BlockingIOError:
                return
            if self._agent_clients >= MAX_AGENT_CLIENTS:
                conn.close()
                continue
            self._agent_clients += 1
            asyncio.get_running_loop().create_task(self._agent_client(conn))

    async def _agent_client(self, conn: socket.socket) -> None:
        """One runtime connection: read the state to EOF (in a thread: recvmsg with
        SCM_RIGHTS has no asyncio form), then supervise its listener."""
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
            conn.settimeout(AGENT_TIMEOUT_S)
            payload, fds = await asyncio.get_running_loop().run_in_executor(
                None, oci.receive, conn)
            state = oci.parse(payload, fds)
        except (oci.BadState, OSError, TimeoutError) as e:
            log.warning("agent: refused a container state: %s", e)
            return
        finally:
            conn.close()
            self._agent_clients -= 1
        if len(self.supervisor.containers) >= MAX_CONTAINERS:
            log.warning("agent: %d containers supervised already; %s refused",
                        MAX_CONTAINERS, state.container)
            os.close(state.listener)
            return
        try:
            c = self.supervisor.adopt(state, uid)
            self._keep_container(c)
        except OSError as e:
            log.warning("agent: cannot supervise pid %d: %s", state.pid, e)
            os.close(state.listener)

    # ------------------------------------------------------------------ API
    async def _api_client(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        if self._api_clients >= MAX_API_CLIENTS:
            writer.close()
            return
        self._api_clients += 1
        try:
            request = await self._read_request(reader)
            try:
                msg = json.loads(request)
                if not isinstance(msg, dict) or not isinstance(msg.get("execute"), str):
                    raise ValueError("want {\"execute\": NAME, \"arguments\": {...}}")
                arguments = msg.get("arguments") or {}
                if not isinstance(arguments, dict):
                    raise ValueError("arguments must be an object")
            except (ValueError, RecursionError) as e:
                writer.write(_error(f"bad request: {e}"))
                await writer.drain()
                return
            if msg["execute"] == "resolve" and isinstance(arguments.get("name"), str):
                await self.directory.settle(arguments["name"], time.time())  # VIPs agreed
            if msg["execute"] == "watch":
                await self._watch(writer)
                return
            writer.write(self.handle(msg["execute"], arguments))
            await asyncio.wait_for(writer.drain(), 5)
        except (OSError, TimeoutError) as e:
            log.debug("api client: %s", e)
        except Exception:
            log.exception("api client")
        finally:
            self._api_clients -= 1
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes:
        buf = b""
        while len(buf) < MAX_REQUEST:
            chunk = await asyncio.wait_for(reader.read(MAX_REQUEST - len(buf)), 5)
            if not chunk:
                break
            buf += chunk
            if buf.rstrip().endswith(b"}"):
                try:
                    json.loads(buf)
                    break
                except (ValueError, RecursionError):
                    continue
        return buf

    def handle(self, execute: str, arguments: dict[str, Any]) -> bytes:
        now = time.time()
        if execute == "info":
            return _reply({"version": VERSION, "domain": self.directory.domain,
                           "vip_cidr": str(self.store.block), "vip6_cidr": str(self.store.block6),
                           "agent_socket": self.args.agent_socket, "store": self.args.store,
                           "pid": os.getpid()})
        if execute == "resolve":
            name = arguments.get("name")
            if not isinstance(name, str):
                return _error("resolve: 'name' (a string) is required")
            rec = self.directory.resolve(name, now)
            if rec is None:
                return _error(f"resolve: invalid name {name!r}")
            return _reply({"name": rec.name, "vip": str(ipaddress.IPv4Address(rec.vip)),
                           "vip6": str(ipaddress.IPv6Address(rec.vip6))})
        if execute == "list_services":
            entries = []
            for rec in sorted(self.store.records(), key=lambda r: r.name):
                labels = sorted({(k, v) for i in rec.instances for k, v in i.labels.items()})
                entries.append({"name": rec.name, "vip": str(ipaddress.IPv4Address(rec.vip)),
                                "vip6": str(ipaddress.IPv6Address(rec.vip6)),
                                "ports": sorted({i.port for i in rec.instances}),
                                "instances": len(rec.instances),
                                "nodes": sorted({i.node or self.store.node
                                                 for i in rec.instances}),
                                "labels": [list(p) for p in labels]})
            return _reply({"entries": entries})
        if execute == "list_instances":
            here = self.store.node
            mine = [i.listing(here) for i in self.directory.instances()]
            others = [i.listing(here) for rec in sorted(self.store.records(),
                                                        key=lambda r: r.name)
                      for i in rec.instances if i.node]
            return _reply({"entries": mine + others})
        if execute == "list_hosts":
            return _reply({"entries": self.store.hosts()})
        if execute == "list_clients":
            return _reply({"entries": self._clients()})
        if execute == "stats":
            return _reply({**self.supervisor.stats,
                           "containers_live": len(self.supervisor.containers),
                           "held": len(self.supervisor.held),
                           "in_flight": sum(c.in_flight
                                            for c in self.supervisor.containers.values()),
                           "names": len(self.store.records()),
                           "instances": len(self.directory.instances()),
                           "sockets": len(self.supervisor.sockets),
                           **self.store.stats,
                           "watchers": len(self.watchers),
                           "views_sent": self._views_sent})
        return _error(f"unknown command {execute!r}")

    def _clients(self) -> list[dict[str, Any]]:
        entries = []
        for rec in self.supervisor.sockets.values():
            if rec.kind != Kind.CLIENT or rec.service is None or rec.peer is None:
                continue
            assert rec.target is not None
            entries.append({"client": rec.container, "name": rec.service,
                            "vip": rec.peer.host, "port": rec.peer.port,
                            "host": rec.target[0], "host_port": rec.target[1],
                            "since": rec.since})
        return entries

    # ---------------------------------------------------------------- watch
    async def _watch(self, writer: asyncio.StreamWriter) -> None:
        if len(self.watchers) >= MAX_WATCHERS:
            writer.write(_error("too many watchers"))
            return
        self.watchers.add(writer)
        try:
            writer.write(self._view_line())
            await writer.drain()
            while not writer.is_closing():
                await asyncio.sleep(3600)
        finally:
            self.watchers.discard(writer)

    def _view_line(self) -> bytes:
        return json.dumps({"view": self.directory.view()}, separators=(",", ":")).encode() + b"\n"

    def _schedule_view(self) -> None:
        if not self._view_pending:
            self._view_pending = True
            loop = asyncio.get_running_loop()
            wait = self._view_sent + self._view_cost / VIEW_SHARE - loop.time()
            if wait > 0:
                loop.call_later(wait, self._send_view)
            else:
                loop.call_soon(self._send_view)

    def _send_view(self) -> None:
        self._view_pending = False
        if not self.watchers:
            return  # nobody to tell: no view to build
        self._view_sent = asyncio.get_running_loop().time()
        self._views_sent += 1
        started = time.perf_counter()
        line = self._view_line()
        for w in list(self.watchers):
            transport = w.transport
            if transport.is_closing() or transport.get_write_buffer_size() > 1 << 20:
                self.watchers.discard(w)  # gone or not reading: it reconnects
                w.close()
                continue
            w.write(line)
        self._view_cost = time.perf_counter() - started

    # ---------------------------------------------------------------- upkeep
    async def _sweeper(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(SWEEP_S)
            rounds += 1
            try:
                self.supervisor.interrupt_signalled()
                self.supervisor.sweep(full=rounds % FULL_SWEEP_EVERY == 0)
            except Exception:
                log.exception("sweep")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._connect_keeper()
        except (OSError, ValueError) as e:
            log.warning("no listener keeper (%s): a restart will not find containers", e)
        await self.store.start()  # (a shared store: its view is read before we serve)
        for c in self._taken_back:  # calls the previous netstackd never answered
            count = self.supervisor.answer_left_over(c)
            if count:
                log.info("%s: %d call(s) left unanswered by the previous netstackd, "
                         "answered now", c.state.container, count)
        self._taken_back.clear()
        agent = _bind_unix(self.args.agent_socket)
        loop.add_reader(agent.fileno(), self._agent_accept, agent)
        api = _bind_unix(self.args.socket)  # last: its existence means "ready"
        server = await asyncio.start_unix_server(self._api_client, sock=api)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        sweeper = loop.create_task(self._sweeper())
        log.info("netstackd ready: api %s, agent %s, VIPs %s %s", self.args.socket,
                 self.args.agent_socket, self.store.block, self.store.block6)
        try:
            await stop.wait()
        finally:
            sweeper.cancel()
            server.close()
            loop.remove_reader(agent.fileno())
            agent.close()
            for path in (self.args.socket, self.args.agent_socket):
                with contextlib.suppress(OSError):
                    os.unlink(path)
            self.supervisor.close()
            await self.store.close()  # (etcd: this host's services vanish at once)


def _reply(value: dict[str, Any]) -> bytes:
    return json.dumps({"return": value}, separators=(",", ":")).encode()


def _error(desc: str) -> bytes:
    return json.dumps({"error": {"desc": desc}}).encode()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    netstack_log.configure(
        netstack_log.DEBUG if args.debug else netstack_log.INFO,
        "netstackd: %(message)s",
        eager=True,  # asyncio's records and the etcd client's too
    )
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    daemon = Daemon(args)
    runner(daemon.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
