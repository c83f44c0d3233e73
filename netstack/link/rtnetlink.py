"""The few rtnetlink requests -c makes inside the target namespace: a link up with its
MTU (and MAC), an address, a default route.

Theory: each request is one netlink message, an `nlmsghdr` followed by the family
header (`ifinfomsg`, `ifaddrmsg` or `rtmsg`) and a list of attributes (`rtattr`,
4-byte aligned); with NLM_F_ACK the kernel answers every request with an
NLMSG_ERROR whose error is 0 or -errno. That is all -c needs, so this module is a
few struct formats instead of pyroute2, whose import alone took ~130 ms of every
start-up (see bench/startup.py).

Deliberately not here: dumps (RTM_GET*), multipart replies, notifications. The
interface index comes from if_nametoindex and the MAC from SIOCGIFHWADDR, both in the
namespace the caller is in.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

NETLINK_ROUTE = 0

RTM_NEWLINK = 16
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
NLMSG_ERROR = 2

NLM_F_REQUEST = 0x001
NLM_F_ACK = 0x004
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

IFF_UP = 0x1
IFLA_ADDRESS = 1
IFLA_MTU = 4
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_BROADCAST = 4
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5

RT_TABLE_MAIN = 254
RTPROT_BOOT = 3  # what `ip route add` uses
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1

SIOCGIFHWADDR = 0x8927

NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, port id
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst/src len, tos, table, proto, scope, type, flags
RTATTR = struct.Struct("=HH")  # length, type
NLMSGERR = struct.Struct("=i")  # -errno, then the request's header (not read)
_IFREQ_HWADDR = struct.Struct("16sH6s8x")  # name, sa_family, MAC, sockaddr padding


def attr(kind: int, value: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    length = RTATTR.size + len(value)
    return RTATTR.pack(length, kind) + value + bytes(-length % 4)


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def link_body(index: int, up: bool, mtu: int | None = None, mac: bytes | None = None) -> bytes:
    """RTM_NEWLINK on an existing link: IFF_UP when `up`, MTU and MAC when given."""
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP if up else 0)
    if mac is not None:
        body += attr(IFLA_ADDRESS, mac)
    if mtu is not None:
        body += attr(IFLA_MTU, struct.pack("=I", mtu))
    return body


def addr_body(index: int, address: str, prefixlen: int, broadcast: str | None = None) -> bytes:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    raw = socket.inet_pton(family, address)
    body = IFADDRMSG.pack(family, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
    if family == socket.AF_INET:
        body += attr(IFA_LOCAL, raw)  # as `ip addr add` and pyroute2: local = address
    body += attr(IFA_ADDRESS, raw)
    if broadcast is not None:
        body += attr(IFA_BROADCAST, socket.inet_pton(family, broadcast))
    return body


def default_route_body(index: int, gateway: str) -> bytes:
    family = socket.AF_INET6 if ":" in gateway else socket.AF_INET
    body = RTMSG.pack(
        family, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0
    )
    return (
        body
        + attr(RTA_GATEWAY, socket.inet_pton(family, gateway))
        + attr(RTA_OIF, struct.pack("=i", index))
    )


def ack_error(reply: bytes, seq: int) -> int | None:
    """0 or an errno from the NLMSG_ERROR answering `seq` in reply; None when reply
    holds no answer to it."""
    offset = 0
    while offset + NLMSGHDR.size <= len(reply):
        length, kind, _flags, got_seq, _port = NLMSGHDR.unpack_from(reply, offset)
        if length < NLMSGHDR.size:
            break
        if kind == NLMSG_ERROR and got_seq == seq:
            return -NLMSGERR.unpack_from(reply, offset + NLMSGHDR.size)[0]
        offset += (length + 3) & ~3
    return None


class Rtnetlink:
    """A NETLINK_ROUTE socket in the current namespace; each request waits for its ack
    and raises OSError(errno) when the kernel refuses it."""

    def __init__(self) -> None:
        self.sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE
        )
        self.sock.bind((0, 0))
        self.seq = 0

    def __enter__(self) -> Rtnetlink:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def request(self, kind: int, flags: int, body: bytes, what: str) -> None:
        self.seq += 1
        self.sock.send(message(kind, NLM_F_REQUEST | NLM_F_ACK | flags, self.seq, body))
        while True:
            err = ack_error(self.sock.recv(65536), self.seq)
            if err is None:
                continue
            if err:
                raise OSError(err, f"{what}: {os.strerror(err)}")
            return

    def set_link(
        self, index: int, up: bool = True, mtu: int | None = None, mac: bytes | None = None
    ) -> None:
        self.request(RTM_NEWLINK, 0, link_body(index, up, mtu, mac), f"link {index}")

    def add_address(
        self, index: int, address: str, prefixlen: int, broadcast: str | None = None
    ) -> None:
        """Add; an address already there (EEXIST) is left as it is."""
        try:
            self.request(
                RTM_NEWADDR,
                NLM_F_CREATE | NLM_F_EXCL,
                addr_body(index, address, prefixlen, broadcast),
                f"address {address}/{prefixlen}",
            )
        except FileExistsError:
            pass

    def replace_address(self, index: int, address: str, prefixlen: int) -> None:
        self.request(
            RTM_NEWADDR,
            NLM_F_CREATE | NLM_F_REPLACE,
            addr_body(index, address, prefixlen),
            f"address {address}/{prefixlen}",
        )

    def replace_default_route(self, index: int, gateway: str) -> None:
        self.request(
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_REPLACE,
            default_route_body(index, gateway),
            f"default route via {gateway}",
        )


def hardware_address(name: str) -> bytes:
    """The MAC of interface `name` in the current namespace (SIOCGIFHWADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        res = fcntl.ioctl(s, SIOCGIFHWADDR, _IFREQ_HWADDR.pack(name.encode(), 0, b""))
    return _IFREQ_HWADDR.unpack(res)[2]
