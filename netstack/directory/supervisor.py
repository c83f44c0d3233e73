"""The syscall path: where a trapped socket call is decided and a host socket is made.

One `Container` per seccomp listener. Each notification (connect, bind, listen,
accept/accept4, getsockname, getpeername) goes: RECV -> pidfd of the calling thread ->
copy the caller's memory -> ID_VALID -> copy of the socket (pidfd_getfd) -> decide:

  connect  VIP:port      -> the directory picks an instance (labels, round robin); our
                            own host socket connects to it; ADDFD over the caller's fd;
                            answer 0 / -EINPROGRESS / -ECONNREFUSED (denied or nobody).
                            Not served yet: a blocking caller waits (bounded), a
                            nonblocking one continues into the netns (the TAP stack
                            waits there).
           elsewhere     -> the TAP stack's own policy (netstack.stack.policy) decides:
                            host loopback per --disable-host-loopback, the container's
                            loopback, subnet and DNS stay in its netns (CONTINUE), the
                            rest gets a direct host socket (outbound bypass).
  bind     named process, TCP, a container address or wildcard, port != 0
                         -> a host socket bound to the publish address, port 0; ADDFD.
  listen   on that socket -> listen on it and register the instance under the name.
  accept   on it          -> we accept, install the new socket (ADDFD|SEND) and write the
                            client's container address as the peer.
  getsockname/getpeername on our sockets -> container addresses and the VIP, never host
                            ones.

Our sockets are known by inode (what /proc/PID/fd shows: one readlink finds a socket's
record, no copy needed), so dup2, fork, close_range and exec change nothing.
We never CONTINUE a connect or bind on a host socket (the sockaddr TOCTOU of
bypass4netns #22): the address we act on is the copy we validated. Anything we do not
handle continues into the container's network namespace. How a call is received, held,
read from and answered is netstack.directory.calls (CallDesk); connects are decided in
netstack.directory.connects (ConnectDesk); this module decides the rest.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from netstack.directory import diag, notify, publish
from netstack.directory import sockaddr as sa
from netstack.directory.calls import (
    MAX_IN_FLIGHT,
    Container,
    Continue,
    Fail,
    HeldUntilReadable,
)
from netstack.directory.connects import ConnectDesk
from netstack.directory.hostsock import (
    HostSocket,
    Kind,
    blocking,
    copy_options,
    netns_of,
)
from netstack.directory.registry import Directory, Refused
from netstack.directory.sockaddr import SockAddr
from netstack.directory.store import Instance
from netstack.log import get_logger

log = get_logger("netstackd")

BOUND_GRACE_S = 300.0  # how long a bound, never listening socket is remembered
CLIENT_GRACE_S = 30.0  # a closed client's connection may still wait in a server's
# accept queue: its address is remembered this long for the accept


class Supervisor(ConnectDesk):
    port_range: tuple[int, int] | None = None  # host ports for services (None: any)

    def __init__(self, directory: Directory, publish_host: str = "127.0.0.1",
                 connect_wait: float = 10.0) -> None:
        self.publish_host = publish_host
        super().__init__(directory, connect_wait)
        # clients whose socket is gone (host port -> record, until when it is kept)
        self.departed_clients: dict[int, tuple[HostSocket, float]] = {}
        self.stats.update({k: 0 for k in (
            "bypassed_connects", "outbound_bypassed", "denied", "unknown_vip", "waited",
            "wait_timeouts", "accepts", "registrations", "registrations_refused",
            "unregistrations", "epoll_continued")})
        self.on_registrations: Callable[[Container], None] = lambda c: None

    def _handle(self, c: Container, n: notify.Notification) -> None:
        rec = None
        if n.nr not in (notify.SYS_CONNECT, notify.SYS_BIND):
            rec = self.sockets.get(self._socket_inode(n) or -1)
        if (n.nr == notify.SYS_BIND and c.state.name is None) or (
                n.nr not in (notify.SYS_CONNECT, notify.SYS_BIND) and rec is None):
            # an anonymous bind; listen, accept or names on a socket not ours
            self.stats["continued"] += 1
            self._respond(c, n, cont=True)
            return
        try:
            pidfd = notify.pidfd_open(n.pid)
        except OSError:
            self.stats["caller_gone"] += 1
            return
        copies: list[socket.socket] = []  # closed when the call is decided
        try:
            if n.nr in (notify.SYS_CONNECT, notify.SYS_BIND):
                self._connect_or_bind(c, n, pidfd, copies)
            elif n.nr == notify.SYS_LISTEN:
                self._listen(c, n, self._socket_copy(n, pidfd, copies))
            elif n.nr in (notify.SYS_ACCEPT, notify.SYS_ACCEPT4):
                self._accept(c, n, self._socket_copy(n, pidfd, copies), pidfd)
            elif n.nr in (notify.SYS_GETSOCKNAME, notify.SYS_GETPEERNAME):
                assert rec is not None
                self._name(c, n, rec, pidfd, copies)
            else:
                raise Continue
        except Continue:
            self.stats["continued"] += 1
            self._respond(c, n, cont=True)
        except Fail as e:
            self._respond(c, n, error=e.err)
        except ProcessLookupError:
            self.stats["caller_gone"] += 1
        except Exception:
            self.stats["errors"] += 1
            log.exception("handling syscall %d of %s", n.nr, c.state.container)
            self._respond(c, n, cont=True)
        finally:
            os.close(pidfd)
            for copy in copies:
                copy.close()

    def _ours(self, sock: socket.socket) -> tuple[int, HostSocket | None]:
        inode = os.fstat(sock.fileno()).st_ino
        return inode, self.sockets.get(inode)

    def _in_container(self, c: Container, n: notify.Notification, sock: socket.socket) -> bool:
        """Whether the socket lives in the container's own netns (not the host's, not
        a nested one: bypass4netns #65). SIOCGSKNS needs CAP_NET_ADMIN over the netns;
        without it, the calling thread's netns has to do."""
        netns = netns_of(sock)
        if netns is None:
            try:
                netns = os.stat(f"/proc/{n.pid}/ns/net").st_ino
            except OSError:
                return False
        return netns == c.netns

    # -------------------------------------------------------- connect / bind
    def _connect_or_bind(self, c: Container, n: notify.Notification, pidfd: int,
                         copies: list[socket.socket]) -> None:
        length = n.args[2] & 0xFFFFFFFF
        if length < 2:
            raise Continue
        data = self._read(c, n, n.args[1], min(length, sa.SOCKADDR_MAX))
        addr = sa.parse(data)
        if addr is None:
            raise Continue  # AF_UNIX and friends
        if n.nr == notify.SYS_BIND and c.state.name is None:
            raise Continue
        copy = self._socket_copy(n, pidfd, copies)
        _cookie, rec = self._ours(copy)
        if rec is not None:
            self._on_host_socket(c, n, copy, rec, addr)
            return
        if (copy.type != socket.SOCK_STREAM or copy.family != addr.family
                or not self._in_container(c, n, copy)):
            raise Continue
        if n.nr == notify.SYS_BIND:
            self._bind(c, n, copy, addr)
        else:
            self._connect(c, n, copy, addr)

    def _bind(self, c: Container, n: notify.Notification, copy: socket.socket,
              addr: SockAddr) -> None:
        ip, port = addr.unmapped()
        if port == 0 or ipaddress.ip_address(ip).is_loopback:
            raise Continue  # ephemeral or container-local: stays in the netns
        if any(ip) and ip not in (c.address(socket.AF_INET, n.pid),
                                  c.address(socket.AF_INET6, n.pid)):
            raise Continue  # not the container's address: the kernel says EADDRNOTAVAIL
        host = socket.socket(copy.family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            if copy.family == socket.AF_INET6:
                host.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            # bound before the process's options are copied: with its SO_REUSEADDR a
            # port in --port-range that another socket listens on would bind, and the
            # process's listen() then fail with EADDRINUSE
            publish.bind(host, self.publish_host, self.port_range)
            copy_options(copy, host)
            host.setblocking(blocking(copy.fileno()))
            self._install(c, n, host, HostSocket(Kind.BOUND, c.state.container, local=addr,
                                                 service=c.state.name, family=copy.family))
        finally:
            host.close()
        self._respond(c, n)

    # ------------------------------------------------------- listen / accept
    def _listen(self, c: Container, n: notify.Notification, copy: socket.socket) -> None:
        _inode, rec = self._ours(copy)
        if rec is None or rec.kind not in (Kind.BOUND, Kind.LISTENING):
            if rec is None:
                raise Continue
            raise Fail(errno.EINVAL)
        backlog = n.args[1] & 0xFFFFFFFF
        copy.listen(min(backlog, 65535) if backlog < 0x80000000 else 0)
        if rec.kind == Kind.BOUND:
            assert rec.local is not None and c.state.name is not None
            cookie = rec.cookie = diag.socket_cookie(copy)
            inst = Instance(name=c.state.name, port=rec.local.port, host=self.publish_host,
                            host_port=copy.getsockname()[1], labels=dict(c.labels),
                            owner=c.owner, container=c.state.container,
                            pid=notify.thread_group(n.pid), cookie=cookie, since=time.time())
            try:
                self.directory.register(inst, time.time())
            except Refused as e:
                self.stats["registrations_refused"] += 1
                log.warning("registration of %s refused: %s", c.state.name, e)
                raise Fail(errno.EADDRINUSE) from None
            rec.kind = Kind.LISTENING
            self.stats["registrations"] += 1
            self.on_registrations(c)
            log.info("%s serves %s:%d at %s:%d", c.state.container, inst.name, inst.port,
                     inst.host, inst.host_port)
        self._respond(c, n)

    def _accept(self, c: Container, n: notify.Notification, copy: socket.socket,
                pidfd: int) -> None:
        _cookie, rec = self._ours(copy)
        if rec is None or rec.kind != Kind.LISTENING:
            raise Continue
        if self._try_accept(c, n, copy, rec):
            return
        if not blocking(copy.fileno()):
            raise Fail(errno.EAGAIN)
        if c.in_flight >= MAX_IN_FLIGHT:
            self.stats["over_limit"] += 1
            raise Continue  # the kernel accepts (peer shows the host address)
        dup = copy.dup()
        HeldUntilReadable(self, c, n, dup, os.dup(pidfd),
                          lambda: self._try_accept(c, n, dup, rec), "accept")

    def _try_accept(self, c: Container, n: notify.Notification, copy: socket.socket,
                    rec: HostSocket) -> bool:
        flags = n.args[3] & 0xFFFFFFFF if n.nr == notify.SYS_ACCEPT4 else 0
        try:
            with self._nonblocking_for_call(n, copy):
                conn_fd, peer = copy._accept()  # type: ignore[attr-defined]
        except BlockingIOError:
            return False
        except OSError as e:
            raise Fail(e.errno or errno.ECONNABORTED) from None
        conn = socket.socket(copy.family, socket.SOCK_STREAM, 0, conn_fd)
        try:
            conn.setblocking(not flags & socket.SOCK_NONBLOCK)
            client = (self._client_by_port(peer[1])
                      if publish.from_here(peer[0], self.publish_host) else None)
            peer_view = self._peer_view(c, n, copy.family, client, peer)
            local = SockAddr(copy.family, c.address(copy.family, n.pid),
                             rec.local.port if rec.local else 0)
            if n.args[1]:
                self._write_sockaddr(c, n, n.args[1], n.args[2], peer_view)
            self.stats["accepts"] += 1
            self._install(c, n, conn, HostSocket(Kind.ACCEPTED, c.state.container, local=local,
                                                 peer=peer_view, service=rec.service,
                                                 family=copy.family),
                          newfd=None, send=True, cloexec=bool(flags & socket.SOCK_CLOEXEC))
        finally:
            conn.close()
        return True

    def _client_by_port(self, port: int) -> HostSocket | None:
        inode = self.clients_by_port.get(port)
        if inode is not None:
            return self.sockets.get(inode)
        departed = self.departed_clients.get(port)  # gone, its connection maybe not yet
        return departed[0] if departed is not None else None

    def _peer_view(self, c: Container, n: notify.Notification, family: int,
                   client: HostSocket | None, peer: tuple[str, int]) -> SockAddr:
        """The client's container address, as the server should see it."""
        if client is not None and client.own is not None:
            return SockAddr(family, client.own_in(family), client.local_port or peer[1])
        host = ipaddress.ip_address(peer[0].split("%")[0])
        return sa.in_family(family, host.packed, peer[1])

    # --------------------------------------------------- getsockname / peername
    def _name(self, c: Container, n: notify.Notification, rec: HostSocket, pidfd: int,
              copies: list[socket.socket]) -> None:
        """getsockname/getpeername on one of our sockets, answered from its record (the
        socket itself is looked at only while a nonblocking connect may be going on)."""
        if n.nr == notify.SYS_GETPEERNAME:
            if rec.kind in (Kind.BOUND, Kind.LISTENING):
                raise Fail(errno.ENOTCONN)
            if not rec.established:
                try:
                    self._socket_copy(n, pidfd, copies).getpeername()
                except OSError as e:
                    raise Fail(e.errno or errno.ENOTCONN) from None
                rec.established = True
            assert rec.peer is not None
            view = rec.peer
        elif rec.kind == Kind.CLIENT:
            view = SockAddr(rec.family, rec.own_in(rec.family), rec.local_port)
        else:
            assert rec.local is not None
            view = rec.local
        self._write_sockaddr(c, n, n.args[1], n.args[2], view)
        self._respond(c, n)

    # -------------------------------------------------------------- upkeep
    def _forget_dead_listeners(self) -> bool:
        """A connect to an instance was refused: unregister every instance whose
        listening socket is gone now. True if there was one."""
        before = self.stats["unregistrations"]
        self.sweep(full=False)
        return self.stats["unregistrations"] > before

    def sweep(self, full: bool) -> None:
        """Unregister closed listeners (a dump of listening sockets only); with full,
        also forget every other socket that no longer exists (a dump of all)."""
        now = time.time()
        if full:
            alive = diag.tcp_inodes()
            # a bound socket that does not listen yet is in no table sock_diag dumps
            gone = [k for k, r in self.sockets.items() if k not in alive
                    and (r.kind != Kind.BOUND or now - r.since > BOUND_GRACE_S)]
        else:
            if not self.directory.instances():
                return
            alive = diag.tcp_inodes(diag.LISTENING)
            gone = [k for k, r in self.sockets.items()
                    if r.kind == Kind.LISTENING and k not in alive]
        departed: dict[int, HostSocket] = {}
        for inode in gone:
            rec = self.sockets.pop(inode)
            if rec.kind == Kind.CLIENT:
                departed[inode] = rec
            if rec.kind == Kind.LISTENING and self.directory.unregister(rec.cookie, now):
                self.stats["unregistrations"] += 1
                log.info("%s stopped serving %s", rec.container, rec.service)
                owner = self.container_by_id(rec.container)
                if owner is not None:
                    self.on_registrations(owner)
        for port, inode in self.clients_by_port.items():
            if inode not in self.sockets and inode in departed:
                self.departed_clients[port] = (departed[inode], now + CLIENT_GRACE_S)
        self.departed_clients = {p: v for p, v in self.departed_clients.items() if v[1] > now}
        self.clients_by_port = {p: k for p, k in self.clients_by_port.items()
                                if k in self.sockets}
        self.directory.expire(now)

    # ------------------------------------------- what survives a restart
    def registrations_of(self, c: Container) -> list[dict[str, Any]]:
        """c's listening sockets and instances, as the keeper stores them."""
        out: list[dict[str, Any]] = []
        instances = {i.cookie: i for i in self.directory.instances()}
        for inode, rec in self.sockets.items():
            if rec.container != c.state.container or rec.kind != Kind.LISTENING:
                continue
            inst = instances.get(rec.cookie)
            if inst is None or rec.local is None:
                continue
            out.append({"cookie": rec.cookie, "inode": inode, "family": rec.local.family,
                        "ip": rec.local.ip.hex(), "port": rec.local.port,
                        "instance": inst.to_json()})
        return out

    def restore(self, c: Container, records: list[dict[str, Any]]) -> int:
        """Take back what a previous netstackd registered for c, where the listening
        socket still exists. Returns how many instances came back."""
        alive = diag.tcp_sockets(diag.LISTENING)
        restored = 0
        for r in records:
            cookie, inode = int(r["cookie"]), int(r["inode"])
            if alive.get(inode) != cookie:
                continue
            local = SockAddr(int(r["family"]), bytes.fromhex(str(r["ip"])), int(r["port"]))
            data = dict(r["instance"])
            inst = Instance(name=str(data["name"]), port=int(data["port"]),
                            host=str(data["host"]), host_port=int(data["host_port"]),
                            labels=dict(data["labels"]),
                            owner=int(data["owner"]), container=str(data["container"]),
                            pid=int(data["pid"]), cookie=cookie, since=float(data["since"]))
            try:
                self.directory.register(inst, time.time())
            except Refused:
                continue
            self.sockets[inode] = HostSocket(Kind.LISTENING, c.state.container, local=local,
                                             service=inst.name, family=local.family,
                                             cookie=cookie)
            restored += 1
        return restored
