"""The host sockets netstackd makes for supervised processes, and what it reads of the
callers' own sockets and threads: the record each of our sockets is known by (its
kind, and the addresses the process must see), the options a process set that our
socket must carry, and the checks a decision needs (which netns a socket lives in,
whether it blocks, whether an epoll set watches it, whether a signal is pending).
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from netstack.directory import sockaddr as sa
from netstack.directory.sockaddr import SockAddr

SIOCGSKNS = 0x894C  # a socket's network namespace, as an fd

# Options a process may set before connect/bind that our host socket must carry:
# (level, option, bytes to read or 0 for an int). Copied when the value differs from
# a fresh socket's, so defaults (and buffer autotuning) stay the kernel's.
_COPIED_OPTIONS: tuple[tuple[int, int, int], ...] = (
    (socket.SOL_SOCKET, socket.SO_REUSEADDR, 0),
    (socket.SOL_SOCKET, socket.SO_REUSEPORT, 0),
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0),
    (socket.SOL_SOCKET, socket.SO_PRIORITY, 0),
    (socket.SOL_SOCKET, socket.SO_RCVBUF, 0),
    (socket.SOL_SOCKET, socket.SO_SNDBUF, 0),
    (socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16),
    (socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16),
    (socket.SOL_SOCKET, socket.SO_LINGER, 8),
    (socket.SOL_SOCKET, socket.SO_OOBINLINE, 0),
    (socket.IPPROTO_TCP, socket.TCP_NODELAY, 0),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 0),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 0),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 0),
    (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 0),
    (socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16),
    (socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, 0),
    (socket.IPPROTO_TCP, socket.TCP_MAXSEG, 0),
)
_FAMILY_OPTIONS: dict[int, tuple[tuple[int, int, int], ...]] = {
    socket.AF_INET: ((socket.IPPROTO_IP, socket.IP_TOS, 0),),
    socket.AF_INET6: ((socket.IPPROTO_IPV6, socket.IPV6_TCLASS, 0),),
}
_DOUBLED = {(socket.SOL_SOCKET, socket.SO_RCVBUF), (socket.SOL_SOCKET, socket.SO_SNDBUF)}

class Kind(Enum):
    CLIENT = "client"  # connected by us to a service or an outbound destination
    BOUND = "bound"  # bound by us for a named process, not listening yet
    LISTENING = "listening"  # registered in the directory
    ACCEPTED = "accepted"  # accepted by us for the server


@dataclass
class HostSocket:
    kind: Kind
    container: str
    local: SockAddr | None = None  # what getsockname shows (bound/accepted)
    peer: SockAddr | None = None  # what getpeername shows (client/accepted)
    service: str | None = None
    target: tuple[str, int] | None = None  # the host endpoint a client is connected to
    # a client's own container address, as it sees it (the family of the destination it
    # asked for), and its IPv4 one: what the server it reaches is shown, even once the
    # client's container is gone
    own: bytes | None = None
    own4: bytes | None = None
    family: int = socket.AF_INET
    local_port: int = 0  # a client's port as it and its server see it (getsockname)
    established: bool = True  # False while a nonblocking connect may be in progress
    cookie: int = 0  # SO_COOKIE of a listening socket (its instance's key)
    since: float = field(default_factory=time.time)

    def own_in(self, family: int) -> bytes:
        """The client's address as a socket of `family` shows it."""
        ip = self.own or bytes(4)
        if family == socket.AF_INET and len(ip) == 16:
            ip = ip[12:] if ip[:12] == _V4MAPPED else (self.own4 or bytes(4))
        return sa.in_family(family, ip, 0).ip


_V4MAPPED = bytes(10) + b"\xff\xff"


def container_addresses(pid: int) -> dict[int, bytes]:
    """Local non-loopback addresses in the network namespace of pid (/proc/PID/net)."""
    found: dict[int, bytes] = {}
    try:
        with open(f"/proc/{pid}/net/fib_trie") as f:
            lines = f.read().splitlines()
        for prev, line in zip(lines, lines[1:], strict=False):
            if line.strip() == "/32 host LOCAL":
                ip = ipaddress.IPv4Address(prev.split()[-1])
                if not ip.is_loopback:
                    found[socket.AF_INET] = ip.packed
                    break
        with open(f"/proc/{pid}/net/if_inet6") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 4 and fields[3] == "00":  # global scope
                    found[socket.AF_INET6] = bytes.fromhex(fields[0])
                    break
    except (OSError, ValueError):
        pass
    return found


def netns_of(sock: socket.socket) -> int | None:
    try:
        nsfd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    except OSError:
        return None
    try:
        return os.fstat(nsfd).st_ino
    finally:
        os.close(nsfd)


def blocking(fd: int) -> bool:
    return not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK


def fd_cloexec(pid: int, fd: int) -> bool:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("flags:"):
                    return bool(int(line.split()[1], 8) & 0o2000000)
    except OSError:
        pass
    return False


def in_an_epoll(pid: int, sock: socket.socket) -> bool:
    """Whether one of the caller's epoll sets watches this socket: swapping the file
    under it would leave the registration on the old one and the caller waiting
    forever (the epoll hazard), so such a connect stays in the netns."""
    ino = os.fstat(sock.fileno()).st_ino
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[eventpoll]":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("tfd:") and f" ino:{ino:x} " in line + " ":
                        return True
        except OSError:
            continue
    return False


SIGURG_BIT = 1 << (signal.SIGURG - 1)  # Go's preemption signal: restarted, never EINTR


def caught_signal_pending(tid: int) -> bool:
    masks: dict[str, int] = {}
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("SigPnd", "ShdPnd", "SigBlk", "SigCgt"):
                    masks[key] = int(value, 16)
    except (OSError, ValueError):
        return False
    pending = masks.get("SigPnd", 0) | masks.get("ShdPnd", 0)
    return bool(pending & masks.get("SigCgt", 0) & ~masks.get("SigBlk", 0) & ~SIGURG_BIT)


_defaults: dict[int, dict[tuple[int, int], int | bytes]] = {}


def _option_values(sock: socket.socket, options: tuple[tuple[int, int, int], ...]
                   ) -> dict[tuple[int, int], int | bytes]:
    values: dict[tuple[int, int], int | bytes] = {}
    for level, opt, size in options:
        try:
            values[(level, opt)] = sock.getsockopt(level, opt, size) if size else \
                sock.getsockopt(level, opt)
        except OSError:
            continue
    return values


def copy_options(src: socket.socket, dst: socket.socket) -> None:
    options = _COPIED_OPTIONS + _FAMILY_OPTIONS.get(src.family, ())
    if src.family not in _defaults:
        with socket.socket(src.family, socket.SOCK_STREAM) as fresh:
            _defaults[src.family] = _option_values(fresh, options)
    defaults = _defaults[src.family]
    for key, value in _option_values(src, options).items():
        if key in defaults and value == defaults[key]:
            continue
        if key in _DOUBLED and isinstance(value, int):
            value //= 2  # the kernel doubles what it is given
        try:
            dst.setsockopt(key[0], key[1], value)
        except OSError:
            continue


class Watch:
    """Calls back when a socket shared with a supervised process is ready. Through a
    private epoll: the event loop's own add_reader would make the socket O_NONBLOCK
    (libuv does), and the process shares the open file with us."""

    def __init__(self, fd: int, events: int, callback: Callable[[], None]) -> None:
        self.epoll = select.epoll(1)
        self.epoll.register(fd, events | select.EPOLLONESHOT)
        self.fd = fd
        self.events = events
        self.callback = callback
        asyncio.get_running_loop().add_reader(self.epoll.fileno(), self._ready)

    def _ready(self) -> None:
        if self.epoll.poll(0):
            self.epoll.modify(self.fd, self.events | select.EPOLLONESHOT)
            self.callback()

    def close(self) -> None:
        if not self.epoll.closed:
            asyncio.get_running_loop().remove_reader(self.epoll.fileno())
            self.epoll.close()
