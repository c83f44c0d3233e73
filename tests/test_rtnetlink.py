"""The rtnetlink requests -c makes: message layout, and acks read back."""

from __future__ import annotations

import socket
import struct

from netstack.link import rtnetlink as nl


def test_link_request_is_one_aligned_message() -> None:
    msg = nl.message(nl.RTM_NEWLINK, nl.NLM_F_REQUEST, 7, nl.link_body(3, True, 1500, b"\x02" * 6))
    length, kind, flags, seq, _ = nl.NLMSGHDR.unpack_from(msg)
    assert (length, kind, flags, seq) == (len(msg), nl.RTM_NEWLINK, nl.NLM_F_REQUEST, 7)
    _family, _type, index, ifflags, change = nl.IFINFOMSG.unpack_from(msg, 16)
    assert (index, ifflags, change) == (3, nl.IFF_UP, nl.IFF_UP)
    # MAC: 4 + 6 bytes padded to 12; MTU: 4 + 4
    assert msg[32:36] == struct.pack("=HH", 10, nl.IFLA_ADDRESS) and msg[42:44] == b"\0\0"
    assert msg[44:52] == struct.pack("=HHI", 8, nl.IFLA_MTU, 1500)
    assert len(msg) == 52


def test_ipv4_address_carries_local_address_and_broadcast() -> None:
    body = nl.addr_body(2, "10.0.2.100", 24, "10.0.2.255")
    assert nl.IFADDRMSG.unpack_from(body) == (socket.AF_INET, 24, 0, 0, 2)
    assert body[8:16] == struct.pack("=HH", 8, nl.IFA_LOCAL) + bytes([10, 0, 2, 100])
    assert body[16:24] == struct.pack("=HH", 8, nl.IFA_ADDRESS) + bytes([10, 0, 2, 100])
    assert body[24:32] == struct.pack("=HH", 8, nl.IFA_BROADCAST) + bytes([10, 0, 2, 255])


def test_ipv6_default_route() -> None:
    body = nl.default_route_body(5, "fe80::2")
    fields = nl.RTMSG.unpack_from(body)
    assert fields[0] == socket.AF_INET6 and fields[1] == 0 and fields[4] == nl.RT_TABLE_MAIN
    assert body[12:16] == struct.pack("=HH", 20, nl.RTA_GATEWAY)
    assert body[32:40] == struct.pack("=HHi", 8, nl.RTA_OIF, 5)


def test_ack_error_finds_the_answer_to_its_request() -> None:
    def err(seq: int, code: int) -> bytes:
        return nl.NLMSGHDR.pack(36, nl.NLMSG_ERROR, 0, seq, 0) + struct.pack("=i", code) + bytes(16)

    assert nl.ack_error(err(1, 0), 1) == 0
    assert nl.ack_error(err(1, -17) + err(2, -1), 2) == 1
    assert nl.ack_error(err(1, -17), 2) is None
    assert nl.ack_error(b"\0" * 8, 1) is None
