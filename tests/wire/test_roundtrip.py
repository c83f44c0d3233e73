"""Every wire module's emit and parse agree: parse(emit(x)) == x for any x hypothesis
draws, and what carries a checksum emits a valid one."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from netstack import _fast
from netstack.wire import (
    arp,
    dhcpv4,
    dhcpv6,
    dns,
    ethernet,
    icmpv4,
    icmpv6,
    ipv4,
    ipv6,
    tcp,
    udp,
    vnet,
)

ROUNDS = settings(max_examples=int(os.environ.get("NETSTACK_FUZZ_EXAMPLES", "200")), deadline=None)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
mac = st.binary(min_size=6, max_size=6)
ip4 = st.binary(min_size=4, max_size=4)
ip6 = st.binary(min_size=16, max_size=16)


@ROUNDS
@given(st.builds(ethernet.EthernetHeader, mac, mac, u16))
def test_ethernet(hdr: ethernet.EthernetHeader) -> None:
    buf = bytearray(ethernet.HEADER_LEN)
    ethernet.emit(hdr, buf)
    assert ethernet.parse(buf) == hdr


@ROUNDS
@given(st.builds(arp.ArpPacket, u16, mac, ip4, mac, ip4))
def test_arp(pkt: arp.ArpPacket) -> None:
    buf = bytearray(arp.HEADER_LEN)
    arp.emit(pkt, buf)
    assert arp.parse(buf) == pkt


@ROUNDS
@given(
    st.builds(ipv4.Ipv4Header, st.just(20), u8, st.integers(20, 120), u16, u16, u8, u8, ip4, ip4)
)
def test_ipv4(hdr: ipv4.Ipv4Header) -> None:
    buf = bytearray(hdr.total_length)
    assert ipv4.emit(hdr, buf) == ipv4.HEADER_LEN
    assert ipv4.parse(buf) == hdr  # the checksum is verified there


@ROUNDS
@given(
    st.builds(
        ipv6.Ipv6Header, u8, st.integers(0, (1 << 20) - 1), st.integers(0, 80), u8, u8, ip6, ip6
    )
)
def test_ipv6(hdr: ipv6.Ipv6Header) -> None:
    buf = bytearray(ipv6.HEADER_LEN + hdr.payload_length)
    assert ipv6.emit(hdr, buf) == ipv6.HEADER_LEN
    assert ipv6.parse(buf) == hdr


@ROUNDS
@given(st.builds(icmpv4.IcmpHeader, u8, u8, u16, u16), st.binary(max_size=64))
def test_icmpv4(hdr: icmpv4.IcmpHeader, payload: bytes) -> None:
    buf = bytearray(icmpv4.HEADER_LEN + len(payload))
    assert icmpv4.emit(hdr, payload, buf) == len(buf)
    assert icmpv4.parse(buf) == hdr
    assert bytes(buf[icmpv4.HEADER_LEN :]) == payload
    assert _fast.py_checksum(bytes(buf)) == 0


@ROUNDS
@given(ip6, ip6, u8, u8, st.binary(min_size=4, max_size=64))
def test_icmpv6(src: bytes, dst: bytes, type_: int, code: int, body: bytes) -> None:
    msg = icmpv6.emit(src, dst, type_, code, body)
    word1, word2 = int.from_bytes(body[:2], "big"), int.from_bytes(body[2:4], "big")
    assert icmpv6.parse(msg) == icmpv6.Icmpv6Header(type_, code, word1, word2)
    assert msg[4:] == body
    seed = ipv6.pseudo_header_sum(src, dst, ipv6.NEXT_ICMPV6, len(msg))
    assert _fast.py_checksum(msg, seed) == 0


@ROUNDS
@given(
    st.lists(
        st.tuples(
            u8,
            st.integers(1, 4).flatmap(lambda n: st.binary(min_size=8 * n - 2, max_size=8 * n - 2)),
        ),
        max_size=5,
    )
)
def test_ndp_options(options: list[tuple[int, bytes]]) -> None:
    raw = b"".join(bytes([kind, (len(v) + 2) // 8]) + v for kind, v in options)
    want: dict[int, bytes] = {}
    for kind, v in options:
        want.setdefault(kind, v)  # the first of a kind counts
    assert icmpv6.parse_options(raw) == want


@ROUNDS
@given(st.one_of(ip4, ip6), u16, u16, st.binary(max_size=64))
def test_udp(addr: bytes, sport: int, dport: int, payload: bytes) -> None:
    hdr = udp.UdpHeader(sport, dport, udp.HEADER_LEN + len(payload))
    buf = bytearray(hdr.length)
    dst = bytes(reversed(addr))
    assert udp.emit(hdr, addr, dst, payload, buf) == hdr.length
    assert udp.parse(buf) == hdr
    if len(addr) == 16:
        seed = ipv6.pseudo_header_sum(addr, dst, ipv6.NEXT_UDP, hdr.length)
    else:
        seed = ipv4.pseudo_header_sum(addr, dst, ipv4.PROTO_UDP, hdr.length)
    assert _fast.py_checksum(bytes(buf), seed) in (0, 0xFFFF)  # 0xFFFF: sent as 0


@st.composite
def tcp_options(draw: st.DrawFn) -> tcp.TcpOptions:
    ts_val = draw(st.one_of(st.none(), u32))
    return tcp.TcpOptions(
        mss=draw(st.one_of(st.none(), u16)),
        wscale=draw(st.one_of(st.none(), st.integers(0, tcp.MAX_WSCALE))),
        sack_permitted=draw(st.booleans()),
        sack_blocks=tuple(draw(st.lists(st.tuples(u32, u32), max_size=2))),
        ts_val=ts_val,
        ts_ecr=draw(u32) if ts_val is not None else 0,
    )


@ROUNDS
@given(tcp_options())
def test_tcp_options(opts: tcp.TcpOptions) -> None:
    buf = bytearray(40)
    n = tcp.emit_options(opts, buf, 0)
    assert n == tcp.options_len(opts) and n % 4 == 0 and n <= 40
    assert tcp.parse_options(buf[:n]) == opts


@ROUNDS
@given(
    st.builds(tcp.TcpHeader, u16, u16, u32, u32, st.just(0), u8, u16, u16, tcp_options()),
    st.binary(max_size=32),
)
def test_tcp(hdr: tcp.TcpHeader, payload: bytes) -> None:
    buf = bytearray(60 + len(payload))
    hlen = tcp.emit(hdr, buf)
    buf[hlen : hlen + len(payload)] = payload
    buf = buf[: hlen + len(payload)]
    assert tcp.parse(buf) == hdr._replace(header_len=hlen)


@ROUNDS
@given(st.builds(dns.DnsHeader, u16, u16, u16, u16, u16, u16))
def test_dns(hdr: dns.DnsHeader) -> None:
    buf = bytearray(dns.HEADER_LEN)
    assert dns.emit(hdr, buf) == dns.HEADER_LEN
    assert dns.parse(buf) == hdr


@ROUNDS
@given(st.builds(vnet.VnetHeader, u8, u8, u16, u16, u16, u16))
def test_vnet(hdr: vnet.VnetHeader) -> None:
    buf = bytearray(vnet.HEADER_LEN)
    assert vnet.emit(hdr, buf) == vnet.HEADER_LEN
    assert vnet.parse(buf) == hdr


@ROUNDS
@given(
    st.builds(
        dhcpv4.DhcpMessage,
        u8,
        u32,
        u16,
        ip4,
        ip4,
        ip4,
        mac,
        st.dictionaries(st.integers(1, 254), st.binary(max_size=255), max_size=8),
    ),
    ip4,
)
def test_dhcpv4(msg: dhcpv4.DhcpMessage, server: bytes) -> None:
    assert dhcpv4.parse(dhcpv4.emit(msg, server)) == msg


@ROUNDS
@given(
    st.builds(
        dhcpv6.Dhcpv6Message,
        u8,
        st.integers(0, (1 << 24) - 1),
        st.dictionaries(u16, st.binary(max_size=64), max_size=6),
    )
)
def test_dhcpv6(msg: dhcpv6.Dhcpv6Message) -> None:
    assert dhcpv6.parse(dhcpv6.emit(msg)) == msg
