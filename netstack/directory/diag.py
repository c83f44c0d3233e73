"""Which TCP sockets still exist in our network namespace, by inode and SO_COOKIE
(sock_diag).

The supervisor never keeps a copy of a service's listening socket (that would keep it
alive after the service closes it); instead it asks the kernel which cookies are still
there. One dump per family, filtered by state in the kernel.
"""

from __future__ import annotations

import os
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_LISTEN = 10
ALL_STATES = 0xFFFFFFFF
LISTENING = 1 << TCP_LISTEN

_NLMSGHDR = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBBBI48s")
_COOKIE_OFFSET = 4 + 40  # inet_diag_msg: family,state,timer,retrans; then sockid's cookie
_INODE_OFFSET = 4 + 48 + 16  # ... after the sockid: expires, rqueue, wqueue, uid; inode


def socket_cookie(sock: socket.socket | int) -> int:
    s = sock if isinstance(sock, socket.socket) else socket.socket(fileno=os.dup(sock))
    try:
        raw = s.getsockopt(socket.SOL_SOCKET, 57, 8)  # SO_COOKIE
    finally:
        if s is not sock:
            s.close()
    return int(struct.unpack("=Q", raw)[0])


def tcp_cookies(states: int = ALL_STATES) -> set[int]:
    """Cookies of every TCP socket (IPv4 and IPv6) in one of `states` (a bit mask)."""
    return set(tcp_sockets(states).values())


def tcp_inodes(states: int = ALL_STATES) -> set[int]:
    """Inode numbers of every TCP socket in one of `states` (as /proc/PID/fd shows them:
    socket:[N]); sockfs numbers them from a counter, so one is not reused for ages."""
    return set(tcp_sockets(states))


def tcp_sockets(states: int = ALL_STATES) -> dict[int, int]:
    """inode -> cookie of every TCP socket (IPv4 and IPv6) in one of `states`."""
    found: dict[int, int] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       NETLINK_SOCK_DIAG) as nl:
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            body = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0, states, bytes(48))
            hdr = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY,
                                 NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
            nl.send(hdr + body)
            _read_dump(nl, found)
    return found


def _read_dump(nl: socket.socket, found: dict[int, int]) -> None:
    while True:
        data = nl.recv(65536)
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size:
                return
            if kind == NLMSG_DONE:
                return
            if kind == NLMSG_ERROR:
                err = -struct.unpack_from("=i", data, offset + _NLMSGHDR.size)[0]
                raise OSError(err, f"sock_diag: {os.strerror(err)}")
            if kind == SOCK_DIAG_BY_FAMILY:
                base = offset + _NLMSGHDR.size
                lo, hi = struct.unpack_from("=II", data, base + _COOKIE_OFFSET)
                inode = struct.unpack_from("=I", data, base + _INODE_OFFSET)[0]
                found[inode] = lo | hi << 32
            offset += (length + 3) & ~3
