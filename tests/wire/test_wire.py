"""Each wire module against scapy: parse what scapy builds, emit what scapy parses."""

from __future__ import annotations

import socket
import struct

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Ether

from netstack.wire import WireError, arp, dhcpv4, dns, ethernet, icmpv4, ipv4, tcp, udp, vnet

GUEST = "10.0.2.100"
GW = "10.0.2.2"
ip = socket.inet_aton


# ------------------------------------------------------------------ ethernet
def test_ethernet_roundtrip() -> None:
    frame = bytes(Ether(dst="52:55:0a:00:02:02", src="02:00:00:00:00:01", type=0x0800))
    hdr = ethernet.parse(frame)
    assert hdr == ethernet.EthernetHeader(
        bytes.fromhex("52550a000202"), bytes.fromhex("020000000001"), 0x0800
    )
    buf = bytearray(14)
    ethernet.emit(hdr, buf)
    assert bytes(buf) == frame
    assert ethernet.mac_to_str(hdr.dst) == "52:55:0a:00:02:02"
    assert ethernet.mac_from_str("52:55:0a:00:02:02") == hdr.dst
    with pytest.raises(WireError):
        ethernet.parse(frame[:13])


# ----------------------------------------------------------------------- arp
def test_arp_parse_and_emit() -> None:
    pkt = bytes(ARP(op=1, hwsrc="02:00:00:00:00:01", psrc=GUEST, pdst=GW))
    a = arp.parse(pkt)
    assert (a.op, a.sender_ip, a.target_ip) == (1, ip(GUEST), ip(GW))
    buf = bytearray(28)
    arp.emit(arp.ArpPacket(2, b"\x52\x55\x0a\x00\x02\x02", ip(GW), a.sender_mac, a.sender_ip), buf)
    reply = ARP(bytes(buf))
    assert (reply.op, reply.hwsrc, reply.psrc, reply.pdst) == (2, "52:55:0a:00:02:02", GW, GUEST)


def test_arp_rejects_other_hardware() -> None:
    raw = bytearray(bytes(ARP(op=1, psrc=GUEST, pdst=GW)))
    raw[0:2] = b"\x00\x06"  # IEEE 802 hardware type
    with pytest.raises(WireError) as e:
        arp.parse(bytes(raw))
    assert e.value.reason == "arp_unsupported"


# ---------------------------------------------------------------------- ipv4
def test_ipv4_parse_with_options_and_padding() -> None:
    pkt = bytes(IP(src=GUEST, dst="192.0.2.2", options=b"\x01\x01\x01\x00") / UDP() / b"hi")
    h = ipv4.parse(pkt + b"\0" * 10)  # Ethernet padding after the packet
    assert (h.ihl, h.total_length, h.proto) == (24, len(pkt), ipv4.PROTO_UDP)
    assert h.src == ip(GUEST)
    assert not h.is_fragment


def test_ipv4_emit_is_what_scapy_reads() -> None:
    buf = bytearray(20)
    ipv4.emit(ipv4.Ipv4Header(20, 0, 20, 7, ipv4.FLAG_DF, 64, 6, ip(GW), ip(GUEST)), buf)
    p = IP(bytes(buf))
    assert (p.src, p.dst, p.ttl, p.proto, p.id, p.flags.DF) == (GW, GUEST, 64, 6, 7, True)
    assert p.chksum == IP(bytes(IP(src=GW, dst=GUEST, ttl=64, proto=6, id=7, flags="DF"))).chksum


@pytest.mark.parametrize(
    "mutate,reason",
    [
        (lambda b: b[:19], "ipv4_short"),
        (lambda b: b"\x65" + b[1:], "ipv4_version"),
        (lambda b: b"\x44" + b[1:], "ipv4_ihl"),
        (lambda b: b[:2] + struct.pack("!H", 9999) + b[4:], "ipv4_length"),
        (lambda b: b[:10] + b"\x12\x34" + b[12:], "ipv4_checksum"),
    ],
)
def test_ipv4_malformed(mutate: object, reason: str) -> None:
    good = bytes(IP(src=GUEST, dst=GW) / (b"x" * 3))
    with pytest.raises(WireError) as e:
        ipv4.parse(mutate(good))  # type: ignore[operator]
    assert e.value.reason == reason


def test_pseudo_header_sum_matches_scapy_checksum() -> None:
    seg = bytearray(bytes(UDP(sport=1, dport=2) / b"abc"))
    seg[6:8] = b"\0\0"
    from netstack import _fast

    csum = _fast.checksum(seg, ipv4.pseudo_header_sum(ip(GUEST), ip(GW), 17, len(seg)))
    assert csum == UDP(bytes(IP(src=GUEST, dst=GW) / UDP(sport=1, dport=2) / b"abc")[20:]).chksum


# -------------------------------------------------------------------- icmpv4
def test_icmp_echo_roundtrip() -> None:
    h = icmpv4.parse(bytes(ICMP(type=8, id=0x1234, seq=9) / b"payload"))
    assert h == icmpv4.IcmpHeader(8, 0, 0x1234, 9)
    buf = bytearray(15)
    icmpv4.emit(icmpv4.IcmpHeader(0, 0, 0x1234, 9), b"payload", buf)
    p = ICMP(bytes(buf))
    assert (p.type, p.id, p.seq, bytes(p.payload)) == (0, 0x1234, 9, b"payload")
    assert p.chksum == ICMP(bytes(ICMP(type=0, id=0x1234, seq=9) / b"payload")).chksum


# ----------------------------------------------------------------------- udp
def test_udp_roundtrip() -> None:
    raw = bytes(IP(src=GUEST, dst=GW) / UDP(sport=5000, dport=53) / b"q")[20:]
    h = udp.parse(raw)
    assert h == udp.UdpHeader(5000, 53, 9)
    buf = bytearray(9)
    udp.emit(udp.UdpHeader(53, 5000, 9), ip(GW), ip(GUEST), b"q", buf)
    want = IP(bytes(IP(src=GW, dst=GUEST) / UDP(sport=53, dport=5000) / b"q"))
    assert bytes(buf) == bytes(want[UDP])
    with pytest.raises(WireError):
        udp.parse(raw[:4] + b"\x00\x03" + raw[6:])  # length 3 < 8


# ----------------------------------------------------------------------- tcp
def test_tcp_parse_linux_syn_options() -> None:
    syn = TCP(
        sport=40000,
        dport=80,
        seq=1000,
        flags="S",
        window=64240,
        options=[
            ("MSS", 1460),
            ("SAckOK", b""),
            ("Timestamp", (111, 0)),
            ("NOP", None),
            ("WScale", 7),
        ],
    )
    h = tcp.parse(bytes(syn))
    assert (h.src_port, h.dst_port, h.seq, h.flags, h.window) == (40000, 80, 1000, tcp.SYN, 64240)
    assert h.options == tcp.TcpOptions(
        mss=1460, wscale=7, sack_permitted=True, ts_val=111, ts_ecr=0
    )


def test_tcp_parse_sack_blocks_and_unknown_option() -> None:
    seg = TCP(flags="A", options=[(30, b"\x01\x02"), ("SAck", (10, 20, 30, 40))])
    h = tcp.parse(bytes(seg))
    assert h.options.sack_blocks == ((10, 20), (30, 40))


def test_tcp_emit_options_is_what_scapy_reads() -> None:
    buf = bytearray(60)
    opts = tcp.TcpOptions(mss=1460, wscale=7, sack_permitted=True, ts_val=5, ts_ecr=6)
    n = tcp.emit(tcp.TcpHeader(80, 40000, 1, 1001, 0, tcp.SYN | tcp.ACK, 65535, 0, opts), buf)
    assert n == 20 + tcp.options_len(opts) == 40
    got = dict(TCP(bytes(buf[:n])).options)
    assert got["MSS"] == 1460 and got["WScale"] == 7 and got["Timestamp"] == (5, 6)
    assert "SAckOK" in got
    assert tcp.parse(bytes(buf[:n])).options == opts


@pytest.mark.parametrize(
    "opts", [b"\x02", b"\x02\x01", b"\x08\x30" + b"\0" * 2, b"\x03\x00\x00\x00"]
)
def test_tcp_malformed_options(opts: bytes) -> None:
    raw = bytearray(bytes(TCP(flags="S")))
    raw += opts.ljust(4, b"\0") if len(opts) <= 4 else opts
    raw[12] = (len(raw) // 4) << 4
    with pytest.raises(WireError):
        tcp.parse(bytes(raw))


def test_tcp_bad_data_offset() -> None:
    raw = bytearray(bytes(TCP()))
    raw[12] = 0x40  # 16 bytes < 20
    with pytest.raises(WireError):
        tcp.parse(bytes(raw))


def test_sequence_arithmetic_wraps() -> None:
    assert tcp.seq_lt(0xFFFFFFF0, 5)
    assert not tcp.seq_lt(5, 0xFFFFFFF0)
    assert tcp.seq_diff(5, 0xFFFFFFF0) == 21
    assert tcp.seq_le(7, 7)


# -------------------------------------------------------------------- dhcpv4
def test_dhcp_repeated_options_are_joined_in_linear_time() -> None:
    """500,000 one-byte repeats of one option (1.5 MB): a join per repeat copies some
    125 GB (seconds), one join at the end copies 500 KB."""
    import time

    head = bytearray(dhcpv4.HEADER_LEN)
    head[0:3] = b"\x01\x01\x06"
    buf = bytes(head) + dhcpv4.MAGIC + b"\x0c\x01h" * 500_000 + b"\xff"
    t0 = time.process_time()
    msg = dhcpv4.parse(buf)
    assert time.process_time() - t0 < 2.5
    assert msg.options[12] == b"h" * 500_000


def test_dhcp_parse_and_emit() -> None:
    mac = bytes.fromhex("020000000001")
    msg = dhcpv4.parse(
        bytes(
            BOOTP(chaddr=mac, xid=42)
            / DHCP(options=[("message-type", "request"), ("requested_addr", "10.0.2.15"), "end"])
        )
    )
    assert (msg.xid, msg.chaddr, msg.message_type) == (42, mac, dhcpv4.REQUEST)
    assert msg.options[dhcpv4.OPT_REQUESTED_IP] == ip("10.0.2.15")
    reply = dhcpv4.DhcpMessage(
        2,
        42,
        0,
        b"\0" * 4,
        ip("10.0.2.15"),
        ip(GW),
        mac,
        {dhcpv4.OPT_MESSAGE_TYPE: b"\x05", dhcpv4.OPT_ROUTER: ip(GW)},
    )
    p = BOOTP(dhcpv4.emit(reply, ip(GW)))
    assert p.yiaddr == "10.0.2.15" and p.xid == 42
    opts = dict(o for o in p[DHCP].options if isinstance(o, tuple))
    assert opts["message-type"] == 5 and opts["router"] == GW


def test_dhcp_option_past_end() -> None:
    raw = bytes(BOOTP() / DHCP(options=[("message-type", "discover")]))
    with pytest.raises(WireError):
        dhcpv4.parse(raw[:-3] + b"\x35\x09\x01")


# ----------------------------------------------------------------------- dns
def test_dns_header_and_question() -> None:
    raw = bytes(DNS(id=77, rd=1, qd=DNSQR(qname="example.test")))
    h = dns.parse(raw)
    assert (h.ident, h.qdcount, h.is_response) == (77, 1, False)
    assert dns.question_name(raw) == "example.test"
    with pytest.raises(WireError):
        dns.question_name(raw[:15])


# ---------------------------------------------------------------------- vnet
def test_vnet_header_is_little_endian() -> None:
    buf = bytearray(10)
    vnet.emit(vnet.VnetHeader(1, vnet.GSO_TCPV4, 54, 1448, 34, 16), buf)
    assert bytes(buf) == bytes([1, 1, 54, 0, 0xA8, 0x05, 34, 0, 16, 0])
    assert vnet.parse(buf) == vnet.VnetHeader(1, 1, 54, 1448, 34, 16)


def test_ipv6_helpers() -> None:
    import ipaddress

    from netstack.wire import ipv6

    ip = ipaddress.IPv6Address("fd00::1ccc:eaff:fee2:24d9").packed
    assert str(ipaddress.IPv6Address(ipv6.solicited_node(ip))) == "ff02::1:ffe2:24d9"
    assert ipv6.multicast_mac(ipv6.solicited_node(ip)).hex() == "3333ffe224d9"
    raw = bytes(
        IPv6(src="fd00::1", dst="fd00::2", nh=44)
        / IPv6ExtHdrFragment(nh=17, m=1)
        / UDP(sport=1, dport=2)
        / b"x"
    )
    hdr = ipv6.parse(raw)
    ul = ipv6.upper_layer(hdr, raw)
    assert (ul.proto, ul.offset, ul.fragment_at) == (17, 48, 40)


def test_ipv6_parse_and_emit_against_scapy() -> None:
    from netstack.wire import ipv6

    raw = bytes(IPv6(src="fd00::100", dst="fd00::2", hlim=64, tc=3, fl=5) / UDP() / b"hi")
    h = ipv6.parse(raw)
    assert (h.traffic_class, h.flow_label, h.payload_length, h.next_header, h.hop_limit) == (
        3,
        5,
        10,
        17,
        64,
    )
    buf = bytearray(40)
    ipv6.emit(h, buf)
    assert bytes(buf) == raw[:40]
    with pytest.raises(WireError):
        ipv6.parse(raw[:30])
    with pytest.raises(WireError):
        ipv6.parse(raw[:4] + b"\xff\xff" + raw[6:])  # payload length past the buffer


def test_ipv6_extension_chain_limit_and_no_next_header() -> None:
    from scapy.layers.inet6 import IPv6ExtHdrDestOpt

    from netstack.wire import ipv6

    pkt = IPv6(src="fd00::1", dst="fd00::2")
    for _ in range(9):
        pkt = pkt / IPv6ExtHdrDestOpt()
    raw = bytes(pkt / UDP())
    with pytest.raises(WireError) as e:
        ipv6.upper_layer(ipv6.parse(raw), raw)
    assert e.value.reason == "ipv6_extension_chain"
    raw = bytes(IPv6(src="fd00::1", dst="fd00::2", nh=59))
    with pytest.raises(WireError):
        ipv6.upper_layer(ipv6.parse(raw), raw)


def test_icmpv6_emit_checksum_is_what_scapy_computes() -> None:
    from scapy.layers.inet6 import ICMPv6EchoReply

    from netstack.wire import icmpv6

    src = socket.inet_pton(socket.AF_INET6, "fd00::2")
    dst = socket.inet_pton(socket.AF_INET6, "fd00::100")
    msg = icmpv6.emit(src, dst, icmpv6.TYPE_ECHO_REPLY, 0, b"\x12\x34\x00\x07payload")
    want = bytes(
        IPv6(src="fd00::2", dst="fd00::100") / ICMPv6EchoReply(id=0x1234, seq=7, data=b"payload")
    )[40:]
    assert msg == want
    assert icmpv6.parse(msg) == icmpv6.Icmpv6Header(129, 0, 0x1234, 7)
    with pytest.raises(WireError):
        icmpv6.parse_options(b"\x01\x00" + b"\0" * 6)  # zero length


def test_dhcpv6_parse_and_emit_against_scapy() -> None:
    from scapy.layers.dhcp6 import DHCP6_InfoRequest, DHCP6OptClientId, DHCP6OptDNSServers

    from netstack.wire import dhcpv6

    raw = bytes(DHCP6_InfoRequest(trid=0xABCDE) / DHCP6OptClientId())
    msg = dhcpv6.parse(raw)
    assert (msg.msg_type, msg.transaction_id) == (dhcpv6.INFORMATION_REQUEST, 0xABCDE)
    assert dhcpv6.OPT_CLIENTID in msg.options
    out = dhcpv6.emit(
        dhcpv6.Dhcpv6Message(
            dhcpv6.REPLY, 7, {dhcpv6.OPT_DNS_SERVERS: socket.inet_pton(socket.AF_INET6, "fd00::3")}
        )
    )
    from scapy.layers.dhcp6 import DHCP6_Reply

    assert DHCP6_Reply(out)[DHCP6OptDNSServers].dnsservers == ["fd00::3"]
    with pytest.raises(WireError):
        dhcpv6.parse(raw[:-1])
