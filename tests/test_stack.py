"""The dispatcher and the small services, driven with scapy frames and fakes."""

from __future__ import annotations

import errno
import ipaddress
import os
from pathlib import Path

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, fragment
from scapy.layers.l2 import ARP, Ether

from netstack.dns import forwarder
from netstack.host.resolvconf import ResolvConf, parse_nameservers
from netstack.stack.config import NetworkConfig
from netstack.stack.limits import Limits
from netstack.stack.reassembly import Reassembler
from netstack.wire import vnet
from tests.fakes import GUEST_MAC, GW_MAC, Rig

GUEST = "10.0.2.100"


def test_arp_for_gateway_and_dns_is_answered_with_slirp_macs() -> None:
    rig = Rig()
    for target, mac in (("10.0.2.2", GW_MAC), ("10.0.2.3", "52:55:0a:00:02:03")):
        rig.send(
            Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=1, hwsrc=GUEST_MAC, psrc=GUEST, pdst=target)
        )
        (reply,) = rig.frames()
        a = reply[ARP]
        assert (a.op, a.hwsrc, a.psrc, a.hwdst, a.pdst) == (2, mac, target, GUEST_MAC, GUEST)
        assert reply[Ether].dst == GUEST_MAC
    rig.send(
        Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff")
        / ARP(op=1, hwsrc=GUEST_MAC, psrc=GUEST, pdst="10.0.2.50")
    )
    assert rig.frames() == []


def test_ping_to_virtual_hosts_is_answered_locally() -> None:
    rig = Rig(NetworkConfig(host_loopback=False))
    for dst in ("10.0.2.2", "10.0.2.3"):
        rig.send(IP(src=GUEST, dst=dst) / ICMP(type=8, id=7, seq=3) / b"abc")
        (reply,) = rig.frames()
        assert (reply[IP].src, reply[ICMP].type, reply[ICMP].id, reply[ICMP].seq) == (dst, 0, 7, 3)
        assert bytes(reply[ICMP].payload) == b"abc"


def test_ping_to_other_hosts_goes_through_an_icmp_socket_and_comes_back() -> None:
    rig = Rig()
    rig.send(IP(src=GUEST, dst="192.0.2.9") / ICMP(type=8, id=7, seq=3) / b"abc")
    owner, sock = rig.host.udp[0]
    data, addr = sock.sent[0]
    assert addr == ("192.0.2.9", 0) and ICMP(data).type == 8 and ICMP(data).seq == 3
    owner.on_datagram(bytes(ICMP(type=0, id=999, seq=3) / b"abc"), ("192.0.2.9", 0), rig.now)
    (reply,) = rig.frames()
    assert (reply[IP].src, reply[ICMP].id, reply[ICMP].seq) == ("192.0.2.9", 7, 3)


def test_ping_where_icmp_sockets_are_forbidden_is_answered_with_an_error() -> None:
    rig = Rig()
    rig.host.ping_errno = errno.EACCES
    rig.send(IP(src=GUEST, dst="192.0.2.9") / ICMP(type=8, id=7, seq=3))
    (err,) = rig.frames()
    assert (err[ICMP].type, err[ICMP].code) == (3, 13)
    assert rig.stack.stats.drops["icmp_forbidden"] == 1


def test_dhcp_discover_offer_request_ack() -> None:
    rig = Rig()
    mac = bytes.fromhex(GUEST_MAC.replace(":", ""))
    base = (
        Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff")
        / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67)
    )
    rig.send(base / BOOTP(chaddr=mac, xid=1) / DHCP(options=[("message-type", "discover"), "end"]))
    (offer,) = rig.frames()
    assert offer[BOOTP].yiaddr == "10.0.2.15"
    opts = dict(o for o in offer[DHCP].options if isinstance(o, tuple))
    assert opts["message-type"] == 2 and opts["router"] == "10.0.2.2"
    assert opts["name_server"] == "10.0.2.3" and opts["lease_time"] == 86400
    rig.send(
        base
        / BOOTP(chaddr=mac, xid=2)
        / DHCP(
            options=[
                ("message-type", "request"),
                ("requested_addr", "10.0.2.15"),
                ("server_id", "10.0.2.2"),
                "end",
            ]
        )
    )
    (ack,) = rig.frames()
    assert dict(o for o in ack[DHCP].options if isinstance(o, tuple))["message-type"] == 5
    rig.send(
        base
        / BOOTP(chaddr=mac, xid=3)
        / DHCP(options=[("message-type", "request"), ("requested_addr", "10.0.2.29"), "end"])
    )
    (nak,) = rig.frames()
    assert dict(o for o in nak[DHCP].options if isinstance(o, tuple))["message-type"] == 6


def test_udp_to_gateway_goes_to_host_loopback_and_replies_come_from_gateway() -> None:
    rig = Rig()
    rig.send(IP(src=GUEST, dst="10.0.2.2") / UDP(sport=4000, dport=5000) / b"ping")
    owner, sock = rig.host.udp[0]
    assert sock.sent == [(b"ping", ("127.0.0.1", 5000))]
    owner.on_datagram(b"pong", ("127.0.0.1", 5000), rig.now)
    (reply,) = rig.frames()
    assert (reply[IP].src, reply[UDP].sport, reply[UDP].dport) == ("10.0.2.2", 5000, 4000)
    assert bytes(reply[UDP].payload) == b"pong"


def test_a_udp_gso_frame_from_the_guest_is_split_into_its_datagrams() -> None:
    """The TAP's USO hands over a guest's UDP_SEGMENT write as one frame (gso_type
    UDP_L4): each gso_size piece is a datagram of its own, the last maybe shorter."""
    rig = Rig(vnet_enabled=True)
    data = os.urandom(1000 * 5 + 7)
    gso = vnet.VnetHeader(vnet.F_NEEDS_CSUM, vnet.GSO_UDP_L4, 42, 1000, 34, 6)
    rig.send(IP(src=GUEST, dst="10.0.2.2") / UDP(sport=4000, dport=5000) / data, gso)
    _, sock = rig.host.udp[0]
    pieces = [data[i : i + 1000] for i in range(0, len(data), 1000)]
    assert sock.sent == [(p, ("127.0.0.1", 5000)) for p in pieces]
    # more datagrams than any kernel puts in one frame: a forged frame, dropped
    forged = gso._replace(gso_size=1)
    rig.send(IP(src=GUEST, dst="10.0.2.2") / UDP(sport=4000, dport=5000) / data[:500], forged)
    assert len(sock.sent) == len(pieces)
    assert rig.stack.stats.drops["udp_gso_segments"] == 1


def test_large_udp_reply_is_fragmented_to_the_mtu() -> None:
    rig = Rig()
    rig.send(IP(src=GUEST, dst="192.0.2.9") / UDP(sport=4000, dport=5000) / b"x")
    owner, _ = rig.host.udp[0]
    owner.on_datagram(b"y" * 4000, ("192.0.2.9", 5000), rig.now)
    frags = rig.frames()
    assert len(frags) == 3 and all(len(f[IP]) <= 1500 for f in frags)
    assert [f[IP].frag * 8 for f in frags] == [0, 1480, 2960]


def test_fragmented_udp_from_guest_is_reassembled() -> None:
    rig = Rig()
    big = IP(src=GUEST, dst="192.0.2.9", id=99) / UDP(sport=4000, dport=5000) / (b"z" * 3000)
    for frag in fragment(big, fragsize=1000):
        rig.send(frag)
    _, sock = rig.host.udp[0]
    assert sock.sent == [(b"z" * 3000, ("192.0.2.9", 5000))]


def test_overlapping_fragments_are_dropped() -> None:
    r = Reassembler()
    pkt = IP(src=GUEST, dst="192.0.2.9", id=5, flags="MF") / (b"a" * 16)
    from netstack.wire import ipv4

    raw = bytes(pkt)
    r.add(ipv4.parse(raw), memoryview(raw), 0.0)
    overlap = bytes(IP(src=GUEST, dst="192.0.2.9", id=5, frag=1) / (b"b" * 16))
    with pytest.raises(ValueError):
        r.add(ipv4.parse(overlap), memoryview(overlap), 0.0)
    assert r.partials == {} and r.held == 0


def _piece(r: Reassembler, ident: int, offset: int, data: bytes, more: bool = True) -> object:
    from netstack.wire import ipv4

    flags = "MF" if more else 0
    raw = bytes(IP(src=GUEST, dst="192.0.2.9", id=ident, flags=flags, frag=offset // 8) / data)
    return r.add(ipv4.parse(raw), memoryview(raw), 0.0)


def test_empty_fragments_that_are_not_the_last_are_dropped() -> None:
    r = Reassembler()
    for i in range(100):
        with pytest.raises(ValueError, match="empty"):
            _piece(r, 7, 8 * i, b"")
    assert r.partials == {} and r.held == 0


def test_fragments_are_charged_an_overhead_and_capped_per_datagram() -> None:
    from netstack.stack import reassembly

    r = Reassembler()
    for i in range(reassembly.MAX_PIECES):
        _piece(r, 8, 8 * i, b"x" * 8)
    assert r.held == reassembly.MAX_PIECES * (8 + reassembly.PIECE_OVERHEAD)
    with pytest.raises(ValueError, match="full"):
        _piece(r, 8, 8 * reassembly.MAX_PIECES, b"x" * 8)
    assert r.partials == {} and r.held == 0


def test_fragments_in_any_order_are_reassembled_in_order() -> None:
    import random

    r = Reassembler()
    chunks = [bytes([65 + i]) * 8 for i in range(40)]
    order = list(range(40))
    random.Random(3).shuffle(order)
    out = None
    for i in order:
        out = _piece(r, 9, 8 * i, chunks[i], more=i != 39)
    assert isinstance(out, bytes) and out[20:] == b"".join(chunks)
    assert r.partials == {} and r.held == 0


def test_udp_to_disabled_gateway_gets_net_unreachable() -> None:
    rig = Rig(NetworkConfig(host_loopback=False))
    rig.send(IP(src=GUEST, dst="10.0.2.2") / UDP(sport=4000, dport=5000) / b"x")
    (err,) = rig.frames()
    assert (err[ICMP].type, err[ICMP].code) == (3, 0)
    assert err[IPerror].dst == "10.0.2.2"
    assert rig.host.udp == []


def test_dns_is_forwarded_with_failover_to_the_next_nameserver() -> None:
    rig = Rig()
    rig.host.servers = ["127.0.0.9", "127.0.0.1"]
    query = bytes(DNS(id=5, qd=DNSQR(qname="a.test")))
    rig.send(IP(src=GUEST, dst="10.0.2.3") / UDP(sport=3333, dport=53) / query)
    owner, first = rig.host.udp[0]
    assert first.sent == [(query, ("127.0.0.9", 53))]
    rig.advance(forwarder.PER_SERVER_TIMEOUT + 0.01)
    owner2, second = rig.host.udp[1]
    assert second.sent == [(query, ("127.0.0.1", 53))]
    answer = bytes(DNS(id=5, qr=1, qd=DNSQR(qname="a.test")))
    owner.on_datagram(answer, ("127.0.0.9", 53), rig.now)  # too late: that try is over
    assert rig.frames() == []
    owner2.on_datagram(answer, ("127.0.0.1", 53), rig.now)
    (reply,) = rig.frames()
    assert (reply[IP].src, reply[UDP].sport, reply[UDP].dport) == ("10.0.2.3", 53, 3333)
    assert rig.stack.dns.preferred == 1  # the next query starts with the one that answered
    # ... through the same socket, also with the same ID now that the first is answered
    rig.send(IP(src=GUEST, dst="10.0.2.3") / UDP(sport=3334, dport=53) / query)
    assert len(rig.host.udp) == 2 and second.sent[1] == (query, ("127.0.0.1", 53))
    owner2.on_datagram(answer, ("127.0.0.1", 53), rig.now)
    assert rig.frames()[0][UDP].dport == 3334
    # sockets nothing waits on close after a while
    assert not first.closed and not second.closed
    rig.advance(forwarder.UPSTREAM_IDLE + 0.01)
    assert first.closed and second.closed and rig.stack.dns.upstreams == {}


def test_dns_queries_share_a_socket_until_ids_collide_or_it_retires() -> None:
    rig = Rig()

    def ask(ident: int, sport: int) -> None:
        query = bytes(DNS(id=ident, qd=DNSQR(qname="a.test")))
        rig.send(IP(src=GUEST, dst="10.0.2.3") / UDP(sport=sport, dport=53) / query)

    ask(1, 4000)
    ask(2, 4001)
    assert len(rig.host.udp) == 1  # two IDs in flight on one socket
    ask(1, 4002)  # another guest socket, the same ID: needs another host socket
    assert len(rig.host.udp) == 2
    owner, first = rig.host.udp[0]
    owner2, second = rig.host.udp[1]
    owner2.on_datagram(bytes(DNS(id=1, qr=1, qd=DNSQR(qname="a.test"))), ("127.0.0.1", 53), rig.now)
    owner.on_datagram(bytes(DNS(id=1, qr=1, qd=DNSQR(qname="a.test"))), ("127.0.0.1", 53), rig.now)
    assert sorted(f[UDP].dport for f in rig.frames()) == [4000, 4002]  # each to its asker
    for i in range(3, forwarder.UPSTREAM_QUERIES + 1):  # the first socket's 100th query
        ask(i, 4003)
        owner.on_datagram(
            bytes(DNS(id=i, qr=1, qd=DNSQR(qname="a.test"))), ("127.0.0.1", 53), rig.now
        )
    assert len(first.sent) == forwarder.UPSTREAM_QUERIES and not first.closed  # ID 2 waits
    ask(500, 4004)
    assert len(rig.host.udp) == 2 and second.sent[-1][0][:2] == (500).to_bytes(2, "big")
    owner.on_datagram(bytes(DNS(id=2, qr=1, qd=DNSQR(qname="a.test"))), ("127.0.0.1", 53), rig.now)
    assert first.closed  # retired, and the last query it carried is answered


def test_dns_query_whose_nameservers_all_fail_at_sendto_closes_its_sockets() -> None:
    rig = Rig()
    rig.host.servers = ["192.0.2.53", "2001:db8::53"]
    rig.host.send_errno = errno.ENETUNREACH
    for i in range(20):
        query = bytes(DNS(id=i, qd=DNSQR(qname="a.test")))
        rig.send(IP(src=GUEST, dst="10.0.2.3") / UDP(sport=3000 + i, dport=53) / query)
    assert len(rig.host.udp) == 40 and rig.host.open_sockets() == 0
    assert rig.stack.dns.queries == set()
    assert rig.stack.stats.snapshot()["drops"]["dns_send_failed"] == 20


def test_dns_failover_whose_next_nameserver_fails_at_sendto_closes_its_socket() -> None:
    rig = Rig()
    rig.host.servers = ["127.0.0.9", "192.0.2.53"]
    query = bytes(DNS(id=5, qd=DNSQR(qname="a.test")))
    rig.send(IP(src=GUEST, dst="10.0.2.3") / UDP(sport=3333, dport=53) / query)
    rig.host.send_errno = errno.ENETUNREACH
    rig.advance(forwarder.PER_SERVER_TIMEOUT + 0.01)
    assert rig.stack.dns.queries == set()
    assert rig.host.open_sockets() == 1  # the first nameserver's, idle...
    rig.advance(forwarder.UPSTREAM_IDLE + 0.01)
    assert rig.host.open_sockets() == 0  # ...for a while


def test_udp_flow_whose_first_datagram_fails_closes_its_socket() -> None:
    rig = Rig()
    rig.host.send_errno = errno.ENETUNREACH
    for i in range(10):
        rig.send(IP(src=GUEST, dst="192.0.2.9") / UDP(sport=4000 + i, dport=9) / b"x")
    assert len(rig.host.udp) == 10 and rig.host.open_sockets() == 0
    assert rig.stack.udp.flows == {}


def test_udp_flow_whose_later_datagram_fails_still_expires() -> None:
    rig = Rig()
    rig.send(IP(src=GUEST, dst="192.0.2.9") / UDP(sport=4000, dport=9) / b"x")
    _, sock = rig.host.udp[0]
    sock.send_errno = errno.ENETUNREACH
    rig.send(IP(src=GUEST, dst="192.0.2.10") / UDP(sport=4000, dport=9) / b"x")
    rig.advance(rig.stack.udp.idle_timeout + 1)
    assert sock.closed and rig.stack.udp.flows == {}


def test_ping_flow_whose_first_echo_fails_closes_its_socket() -> None:
    rig = Rig()
    rig.host.send_errno = errno.ENETUNREACH
    for i in range(10):
        rig.send(IP(src=GUEST, dst="192.0.2.9") / ICMP(type=8, id=i, seq=1) / b"abc")
    assert len(rig.host.udp) == 10 and rig.host.open_sockets() == 0
    assert rig.stack.ping.flows == {}
    assert len(rig.frames()) == 10  # each echo got its "unreachable"


def test_dns_replies_must_repeat_the_query_id_and_question() -> None:
    rig = Rig()
    query = bytes(DNS(id=5, qd=DNSQR(qname="a.test")))
    rig.send(IP(src=GUEST, dst="10.0.2.3") / UDP(sport=3333, dport=53) / query)
    owner, _ = rig.host.udp[0]
    server = ("127.0.0.1", 53)
    forged = [
        bytes(DNS(id=6, qr=1, qd=DNSQR(qname="a.test"))),  # another ID
        bytes(DNS(id=5, qr=1, qd=DNSQR(qname="b.test"))),  # another question
        bytes(DNS(id=5, qr=1, qd=DNSQR(qname="a.test", qtype="AAAA"))),
        bytes(DNS(id=5, qr=0, qd=DNSQR(qname="a.test"))),  # not a response
        bytes(DNS(id=5, qr=1, qd=DNSQR(qname="a.test")))[:15],  # cut short
        b"\x00\x05",
    ]
    for reply in forged:
        owner.on_datagram(reply, server, rig.now)
    assert rig.frames() == []
    assert rig.stack.stats.snapshot()["drops"]["dns_reply_mismatch"] == len(forged)
    owner.on_datagram(bytes(DNS(id=5, qr=1, qd=DNSQR(qname="A.Test"))), server, rig.now)
    (reply,) = rig.frames()  # the real one still gets through (the case may differ)
    assert reply[DNS].id == 5


def test_nameservers_are_read_in_canonical_form() -> None:
    text = "nameserver 2001:DB8:0:0::0053\nnameserver 010.1.2.3\nnameserver fe80::1%eth0\n"
    text += "nameserver 2001:db8::53\n"
    assert parse_nameservers(text) == ["2001:db8::53", "fe80::1"]


def test_disabled_dns_drops_everything_to_the_dns_address() -> None:
    rig = Rig(NetworkConfig(dns_enabled=False))
    rig.send(IP(src=GUEST, dst="10.0.2.3") / UDP(sport=3333, dport=53) / b"q")
    rig.send(IP(src=GUEST, dst="10.0.2.3") / TCP(sport=3333, dport=53, flags="S"))
    assert rig.host.udp == [] and rig.host.connects == [] and rig.frames() == []


def test_dns_address_refuses_other_ports() -> None:
    rig = Rig()
    rig.send(IP(src=GUEST, dst="10.0.2.3") / TCP(sport=3333, dport=80, flags="S"))
    (rst,) = rig.frames()
    assert rst[TCP].flags == "RA"


@pytest.mark.parametrize(
    "frame,reason",
    [
        (b"\x00" * 5, "frame_short"),
        (bytes(Ether(src=GUEST_MAC, dst=GW_MAC, type=0x0800) / b"\x45\x00"), "ipv4_short"),
        (
            bytes(
                Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst="10.0.2.2", proto=6) / b"\x00"
            ),
            "tcp_short",
        ),
        (bytes(Ether(src=GUEST_MAC, dst=GW_MAC, type=0x1234) / b"x"), "ethertype_unknown"),
        (bytes(Ether(src=GUEST_MAC, dst="02:99:99:99:99:99") / IP()), "eth_not_for_us"),
        (
            bytes(Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src="192.168.1.1", dst="10.0.2.2") / UDP()),
            "ipv4_source_outside",
        ),
    ],
)
def test_malformed_frames_are_dropped_and_counted(frame: bytes, reason: str) -> None:
    rig = Rig()
    buf = bytearray(bytes(10) + frame)
    rig.stack.receive(buf, len(buf), rig.now)
    assert rig.stack.stats.drops[reason] == 1
    assert rig.frames() == []


def test_random_garbage_never_raises() -> None:
    rig = Rig()
    for i in range(2000):
        body = os.urandom(i % 200)
        frame = (
            bytes(10)
            + bytes.fromhex("52550a000202")
            + bytes.fromhex("020000000001")
            + (b"\x08\x00" if i % 2 else b"\x08\x06")
            + body
        )
        rig.stack.receive(bytearray(frame), len(frame), rig.now)
    assert rig.stack.stats.drops["internal_error"] == 0


def test_resolv_conf_parse_and_reload(tmp_path: Path) -> None:
    assert parse_nameservers(
        "# c\nnameserver 1.2.3.4\nnameserver fe80::1%eth0\n"
        "nameserver bogus\nsearch x\nnameserver 1.2.3.4\n"
    ) == ["1.2.3.4", "fe80::1"]
    p = tmp_path / "resolv.conf"
    p.write_text("nameserver 127.0.0.1\n")
    rc = ResolvConf(str(p))
    assert rc.servers() == ["127.0.0.1"]
    p.write_text("nameserver 127.0.0.2\nnameserver 127.0.0.3\n")
    rc._checked -= 5  # as if a second had passed
    assert rc.servers() == ["127.0.0.2", "127.0.0.3"]
    p.unlink()
    rc._checked -= 5
    assert rc.servers() == []


def test_timer_queue_lets_go_of_forgotten_objects() -> None:
    import gc
    import weakref

    from netstack.stack.timers import TimerQueue

    class Obj:
        def __init__(self, d: float) -> None:
            self.deadline: float | None = d

        def on_timer(self, now: float) -> None:
            self.deadline = None

    q = TimerQueue()
    refs = []
    for i in range(1000):
        o = Obj(7200.0 + i)
        q.touch(o)
        refs.append(weakref.ref(o))
        q.forget(o)
        del o
    gc.collect()
    assert sum(1 for r in refs if r() is not None) <= 2 * 64 + 2


def test_ipv6_router_solicitation_gets_an_advertisement_for_slaac() -> None:
    from scapy.layers.inet6 import (
        ICMPv6ND_RA,
        ICMPv6ND_RS,
        ICMPv6NDOptPrefixInfo,
        ICMPv6NDOptRDNSS,
        ICMPv6NDOptSrcLLAddr,
        IPv6,
    )

    rig = Rig(NetworkConfig(ipv6=True))
    rig.send(
        Ether(src=GUEST_MAC, dst="33:33:00:00:00:02")
        / IPv6(src="fe80::1", dst="ff02::2", hlim=255)
        / ICMPv6ND_RS()
        / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC)
    )
    (ra,) = rig.frames()
    assert ra[IPv6].src == "fe80::2" and ra[IPv6].hlim == 255
    assert ra[ICMPv6ND_RA].routerlifetime == 1800
    prefix = ra[ICMPv6NDOptPrefixInfo]
    assert (prefix.prefix, prefix.prefixlen, prefix.A, prefix.L) == ("fd00::", 64, 1, 1)
    assert ra[ICMPv6NDOptRDNSS].dns == ["fd00::3"]
    # forged from off-link: hop limit below 255 is ignored and counted
    rig.send(
        Ether(src=GUEST_MAC, dst="33:33:00:00:00:02")
        / IPv6(src="fe80::1", dst="ff02::2", hlim=64)
        / ICMPv6ND_RS()
    )
    assert rig.frames() == [] and rig.stack.stats.drops["ndp_hop_limit"] == 1


def test_ipv6_neighbour_solicitation_for_the_router_is_answered() -> None:
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr, IPv6

    rig = Rig(NetworkConfig(ipv6=True))
    rig.send(
        Ether(src=GUEST_MAC, dst="33:33:ff:00:00:02")
        / IPv6(src="fd00::100", dst="ff02::1:ff00:2", hlim=255)
        / ICMPv6ND_NS(tgt="fd00::2")
    )
    (na,) = rig.frames()
    assert na[ICMPv6ND_NA].tgt == "fd00::2" and na[ICMPv6ND_NA].R == 1 and na[ICMPv6ND_NA].S == 1
    assert na[ICMPv6NDOptDstLLAddr].lladdr == "52:56:00:00:00:02"


def test_dhcpv6_information_request_gets_the_dns_address() -> None:
    from scapy.layers.dhcp6 import (
        DHCP6_InfoRequest,
        DHCP6_Reply,
        DHCP6OptClientId,
        DHCP6OptDNSServers,
    )
    from scapy.layers.inet6 import IPv6

    rig = Rig(NetworkConfig(ipv6=True))
    rig.send(
        Ether(src=GUEST_MAC, dst="33:33:00:01:00:02")
        / IPv6(src="fe80::1", dst="ff02::1:2")
        / UDP(sport=546, dport=547)
        / DHCP6_InfoRequest(trid=0x1234)
        / DHCP6OptClientId()
    )
    (reply,) = rig.frames()
    assert reply[DHCP6_Reply].trid == 0x1234
    assert reply[DHCP6OptDNSServers].dnsservers == ["fd00::3"]


def test_ipv6_is_not_served_without_the_flag() -> None:
    from scapy.layers.inet6 import ICMPv6ND_RS, IPv6

    rig = Rig()
    rig.send(
        Ether(src=GUEST_MAC, dst="33:33:00:00:00:02")
        / IPv6(src="fe80::1", dst="ff02::2", hlim=255)
        / ICMPv6ND_RS()
    )
    assert rig.frames() == []
    assert rig.stack.stats.drops["eth_not_for_us"] == 1  # no IPv6 multicast MAC is ours
    # unicast to the gateway's MAC: the IPv6 ethertype itself is refused
    rig.send(
        Ether(src=GUEST_MAC, dst=GW_MAC)
        / IPv6(src="fd00::100", dst="fd00::2")
        / TCP(sport=40000, dport=80, flags="S")
    )
    assert rig.frames() == [] and rig.host.connects == []
    assert rig.stack.stats.drops["ipv6_not_served"] == 1


@pytest.mark.parametrize("rate", [200, 7])
def test_icmp_errors_are_limited_to_the_documented_rate(rate: int) -> None:
    """A burst of `rate` bad packets at one instant gets exactly `rate` errors; the
    next waits for a token, which comes back 1/rate seconds later."""
    rig = Rig(limits=Limits(icmp_errors_per_second=rate))
    bad = IP(src=GUEST, dst="192.0.2.9", proto=253) / (b"\0" * 8)  # protocol unreachable
    for _ in range(rate + 5):
        rig.send(bad)
    errors = rig.frames()
    assert len(errors) == rate
    assert all((e[ICMP].type, e[ICMP].code) == (3, 2) for e in errors)
    assert rig.stack.output.icmp_errors_suppressed == 5
    rig.now += 1.01 / rate  # (a hair over: float time)
    rig.send(bad)
    rig.send(bad)
    assert len(rig.frames()) == 1
    rig.now += 1.0  # a quiet second refills the bucket, no further
    for _ in range(rate + 1):
        rig.send(bad)
    assert len(rig.frames()) == rate


def test_neighbour_table_learns_only_guest_addresses_caps_and_expires() -> None:
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr, IPv6

    from netstack.stack import neighbours

    rig = Rig(NetworkConfig(ipv6=True, cidr=ipaddress.IPv4Network("10.0.0.0/8")))
    table = rig.stack.neighbours
    # fd00::/64 and fe80::/64 may be the guest's; 2001:db8::/64 and fd00:1::/64 may not
    for i in range(600):
        src = ("fd00::", "fe80::", "2001:db8::", "fd00:1::")[i % 4] + f"{i + 16:x}"
        rig.send(
            Ether(src=GUEST_MAC, dst="33:33:ff:00:00:02")
            / IPv6(src=src, dst="ff02::1:ff00:2", hlim=255)
            / ICMPv6ND_NS(tgt="fe80::2")
        )
        rig.send(
            Ether(src=GUEST_MAC, dst="52:56:00:00:00:02")
            / IPv6(src="fd00::100", dst="fe80::2", hlim=255)
            / ICMPv6ND_NA(tgt=src.replace("::", ":7::"), R=0, S=0, O=1)
            / ICMPv6NDOptDstLLAddr(lladdr=GUEST_MAC)
        )
    # IPv4: --cidr /8 names 16M addresses; each ARP sender is learned, within the cap
    for i in range(600):
        rig.send(
            Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=1, hwsrc=GUEST_MAC, psrc=f"10.1.{i // 250}.{i % 250 + 1}", pdst="10.0.0.2")
        )
    assert len(table) == neighbours.MAX_NEIGHBOURS
    assert all(table.may_hold(ip) for ip in table.entries)
    assert table.mac_of(ipaddress.ip_address("2001:db8::10").packed) is None
    rig.advance(neighbours.IDLE + 1)
    assert len(table) == 0


@pytest.mark.parametrize(
    "dst,allowed,allowed_without_host_loopback",
    [
        ("64:ff9b::7f00:1", False, False),  # NAT64 of 127.0.0.1
        ("64:ff9b::c000:201", False, False),  # NAT64 of the host's own 192.0.2.1
        ("64:ff9b::a00:202", False, False),  # NAT64 of the gateway 10.0.2.2
        ("64:ff9b:1:7f00:0:100::", False, False),  # local-use NAT64 of 127.0.0.1
        ("2002:7f00:1::1", False, False),  # 6to4 of 127.0.0.1
        ("2002:c000:201::1", False, False),  # 6to4 of the host's own address
        ("::ffff:0:127.0.0.1", False, False),  # SIIT, IPv4-translated
        ("2001:0:7f00:1::", False, False),  # Teredo, server 127.0.0.1
        ("2001:0:c000:209::80ff:fffe", False, False),  # Teredo, client 127.0.0.1
        ("64:ff9b::c000:209", True, False),  # NAT64 of an ordinary address
        ("2002:c000:209::1", True, False),
        ("2001:db8::9", True, True),  # no IPv4 inside
    ],
)
def test_ipv6_destinations_with_ipv4_inside(
    dst: str, allowed: bool, allowed_without_host_loopback: bool
) -> None:
    from scapy.layers.inet6 import IPv6

    for host_loopback, expect in ((True, allowed), (False, allowed_without_host_loopback)):
        rig = Rig(NetworkConfig(ipv6=True, host_loopback=host_loopback))
        rig.send(IPv6(src="fd00::100", dst=dst) / TCP(sport=4000, dport=80, flags="S"))
        rig.send(IPv6(src="fd00::100", dst=dst) / UDP(sport=4000, dport=80) / b"x")
        reached = [t for _, t, _ in rig.host.connects] + [s.sent for _, s in rig.host.udp]
        assert bool(reached) == expect, (dst, host_loopback, reached)
        if expect:
            assert len(rig.host.connects) == 1 and len(rig.host.udp) == 1


def test_tcp_connect_whose_outbound_bind_fails_closes_its_socket() -> None:
    """--outbound-addr names an address the host no longer has: bind raises; the
    socket is closed and the failure reported, for every target."""
    from netstack.host.streams import HostTcpStream

    class NoBindRuntime:
        def __init__(self) -> None:
            self.reported: list[tuple[object, ...]] = []

        def bind_outbound(self, sock: object, family: int) -> None:
            raise OSError(errno.EADDRNOTAVAIL, "gone")

        def register(self, fd: int, events: int, handler: object) -> None:
            raise AssertionError("nothing to register")

        def soon(self, fn: object, *args: object) -> None:
            self.reported.append(args)

    rt = NoBindRuntime()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        stream = HostTcpStream(rt, None, [("192.0.2.9", 80), ("2001:db8::9", 80)])  # type: ignore[arg-type]
        assert stream.sock is None
    assert len(os.listdir("/proc/self/fd")) == before
    assert rt.reported == [(errno.EADDRNOTAVAIL,)] * 50
