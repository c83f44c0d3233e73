"""The TAP path with --directory, on the unit rig: DNS answers for directory names,
guest SYNs to VIPs routed to instances (or refused, or held until one appears), and
UDP/ICMP to VIPs dropped."""

from __future__ import annotations

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from netstack.directory.view import View
from netstack.stack import vips
from netstack.stack.config import NetworkConfig
from netstack.stack.vips import DirectorySettings
from tests.directory.test_view import DB, WEB, instance, ip, message, service
from tests.fakes import GUEST_MAC, FakeNames, Rig

GUEST = "10.0.2.100"
GUEST6 = "fd00::100"
SYN = TCP(sport=40000, dport=8080, flags="S", seq=1000)


def directory_rig(
    view: View | None = None, labels: dict[str, str] | None = None, ipv6: bool = False
) -> tuple[Rig, FakeNames]:
    names = FakeNames(view)
    rig = Rig(NetworkConfig(ipv6=ipv6), directory=DirectorySettings(names, labels or {}, wait=10.0))
    return rig, names


def ask(rig: Rig, name: str, qtype: str = "A", ident: int = 77) -> None:
    rig.send(
        IP(src=GUEST, dst="10.0.2.3")
        / UDP(sport=5555, dport=53)
        / DNS(id=ident, rd=1, qd=DNSQR(qname=name, qtype=qtype))
    )


def answer(rig: Rig) -> DNS:
    (frame,) = rig.frames()
    assert (frame[IP].src, frame[UDP].sport, frame[UDP].dport) == ("10.0.2.3", 53, 5555)
    return frame[DNS]


# ------------------------------------------------------------------------- DNS
def test_a_and_aaaa_for_a_name_in_the_view_are_answered_locally() -> None:
    rig, _ = directory_rig(View.parse(message(WEB)))
    for name in ("web.netstack.internal", "WEB.Netstack.Internal.", "web"):
        ask(rig, name)
        d = answer(rig)
        assert (d.id, d.qr, d.aa, d.rcode, d.ancount) == (77, 1, 1, 0, 1)
        assert (d.an[0].type, d.an[0].ttl, d.an[0].rdata) == (1, 10, "198.18.0.1")
    ask(rig, "web.netstack.internal", "AAAA")
    d = answer(rig)
    assert (d.an[0].type, d.an[0].ttl, d.an[0].rdata) == (28, 10, "fd4e:5344::1")
    assert rig.host.udp == []  # nothing went upstream
    assert rig.stack.stats.events["dns_directory_answers"] == 4


def test_other_types_for_a_directory_name_get_noerror_without_answers() -> None:
    rig, names = directory_rig(View.parse(message(WEB)))
    for name in ("web.netstack.internal", "new.netstack.internal"):
        ask(rig, name, "MX")
        d = answer(rig)
        assert (d.rcode, d.ancount) == (0, 0)
    assert names.resolving == [] and rig.host.udp == []


def test_a_name_under_the_domain_not_in_the_view_is_resolved_by_netstackd() -> None:
    rig, names = directory_rig(View.parse(message(WEB)))
    ask(rig, "new.netstack.internal", ident=1)
    ask(rig, "NEW.netstack.internal.", "AAAA", ident=2)
    assert rig.frames() == []  # waiting for netstackd
    assert [n for n, _ in names.resolving] == ["new", "new"]
    names.resolving[0][1]((ip("198.18.0.5"), ip("fd4e:5344::5")))
    d = answer(rig)
    assert (d.id, d.rcode, d.an[0].rdata, d.an[0].ttl) == (1, 0, "198.18.0.5", 10)
    names.resolving[1][1]((ip("198.18.0.5"), ip("fd4e:5344::5")))
    d = answer(rig)
    assert (d.id, d.an[0].type, d.an[0].rdata) == (2, 28, "fd4e:5344::5")
    assert rig.host.udp == []


def test_without_netstackd_names_under_the_domain_get_servfail() -> None:
    rig, names = directory_rig(None)  # no view yet, netstackd unreachable
    ask(rig, "web.netstack.internal")
    names.resolving[0][1](None)
    d = answer(rig)
    assert (d.rcode, d.ancount) == (2, 0)
    assert rig.stack.stats.drops["dns_directory_servfail"] == 1


def test_names_deeper_under_the_domain_get_nxdomain() -> None:
    rig, names = directory_rig(View.parse(message(WEB)))
    ask(rig, "a.web.netstack.internal")
    assert answer(rig).rcode == 3 and names.resolving == []


def test_other_names_and_unknown_single_labels_are_forwarded_as_today() -> None:
    rig, names = directory_rig(View.parse(message(WEB)))
    for name in ("example.com", "printer"):
        ask(rig, name)
    assert rig.frames() == [] and names.resolving == []
    sent = [sock.sent[0] for _, sock in rig.host.udp]
    assert [DNS(data).qd[0].qname for data, _ in sent] == [b"example.com.", b"printer."]
    assert {addr for _, addr in sent} == {("127.0.0.1", 53)}


def test_dns_over_ipv6_is_answered_from_fd00_3() -> None:
    rig, _ = directory_rig(View.parse(message(WEB)), ipv6=True)
    rig.send(
        Ether(src=GUEST_MAC, dst="52:56:00:00:00:03")
        / IPv6(src=GUEST6, dst="fd00::3")
        / UDP(sport=5555, dport=53)
        / DNS(id=5, rd=1, qd=DNSQR(qname="web.netstack.internal", qtype="AAAA"))
    )
    (frame,) = rig.frames()
    assert (frame[IPv6].src, frame[IPv6].dst) == ("fd00::3", GUEST6)
    assert frame[DNS].an[0].rdata == "fd4e:5344::1"


# ------------------------------------------------------------------------- TCP
def test_syn_to_a_vip_connects_to_its_instances_in_turn() -> None:
    rig, _ = directory_rig(View.parse(message(WEB)))
    for sport in (40000, 40001, 40002):
        rig.send(IP(src=GUEST, dst="198.18.0.1") / TCP(sport=sport, dport=8080, flags="S"))
    assert [t for _, t, _ in rig.host.connects] == [
        [("127.0.0.1", 40123)],
        [("127.0.0.1", 40124)],
        [("127.0.0.1", 40123)],
    ]
    rig.connect_ok(0)
    (synack,) = rig.frames()
    assert (synack[IP].src, synack[TCP].sport, synack[TCP].flags) == ("198.18.0.1", 8080, "SA")
    assert rig.stack.stats.events["directory_connects"] == 3


def test_syn_to_an_ipv6_vip_connects_to_the_instance() -> None:
    rig, _ = directory_rig(View.parse(message(WEB)), ipv6=True)
    rig.send(
        Ether(src=GUEST_MAC, dst="52:56:00:00:00:02")
        / IPv6(src=GUEST6, dst="fd4e:5344::1")
        / TCP(sport=40000, dport=9090, flags="S")
    )
    assert [t for _, t, _ in rig.host.connects] == [[("127.0.0.1", 40125)]]


def refused(rig: Rig) -> None:
    (rst,) = rig.frames()
    assert rst[TCP].flags == "RA" and rst[TCP].ack == 1001
    assert rig.host.connects == []


def test_denied_labels_and_unknown_vips_get_a_reset_and_nothing_is_forwarded() -> None:
    rig, _ = directory_rig(View.parse(message(WEB)), labels={"zone": "blue"})
    rig.send(IP(src=GUEST, dst="198.18.0.1") / SYN)
    refused(rig)
    assert rig.stack.stats.drops["directory_denied"] == 1
    rig.send(IP(src=GUEST, dst="198.18.7.7") / SYN)
    refused(rig)
    assert rig.stack.stats.drops["directory_unknown_vip"] == 1


def test_a_reserved_name_holds_the_syn_until_an_instance_appears() -> None:
    rig, names = directory_rig(View.parse(message(WEB, DB)))
    rig.send(IP(src=GUEST, dst="198.18.0.2") / TCP(sport=40000, dport=5432, flags="S", seq=1000))
    assert rig.frames() == [] and rig.host.connects == []
    rig.advance(5)
    rig.send(IP(src=GUEST, dst="198.18.0.2") / TCP(sport=40000, dport=5432, flags="S", seq=1000))
    assert rig.frames() == [] and rig.host.connects == []  # a retransmitted SYN waits too
    names.view = View.parse(message(WEB, service("db", 2, instance(5432, 6000))), names.view)
    assert rig.stack.vips is not None
    rig.stack.vips.view_changed(rig.now)
    assert [t for _, t, _ in rig.host.connects] == [[("127.0.0.1", 6000)]]
    rig.connect_ok()
    (synack,) = rig.frames()
    assert (synack[IP].src, synack[TCP].flags, synack[TCP].ack) == ("198.18.0.2", "SA", 1001)
    assert rig.stack.stats.events["directory_waits"] == 1


def test_a_wait_that_times_out_gets_a_reset() -> None:
    rig, _ = directory_rig(View.parse(message(WEB, DB)))
    rig.send(IP(src=GUEST, dst="198.18.0.2") / TCP(sport=40000, dport=5432, flags="S", seq=1000))
    rig.advance(9.9)
    assert rig.frames() == []
    rig.advance(0.2)
    refused(rig)
    assert rig.stack.stats.drops["directory_wait_timeout"] == 1
    assert rig.stack.tcp.conns == {}


def test_a_wait_ends_in_a_reset_when_the_instance_that_appears_is_not_allowed() -> None:
    rig, names = directory_rig(View.parse(message(WEB, DB)))
    rig.send(IP(src=GUEST, dst="198.18.0.2") / TCP(sport=40000, dport=5432, flags="S", seq=1000))
    names.view = View.parse(message(service("db", 2, instance(5432, 6000, zone="red"))))
    assert rig.stack.vips is not None
    rig.stack.vips.view_changed(rig.now)
    refused(rig)
    assert rig.stack.stats.drops["directory_denied"] == 1


def test_before_the_first_view_a_syn_to_a_vip_waits() -> None:
    rig, names = directory_rig(None)
    rig.send(IP(src=GUEST, dst="198.18.0.1") / SYN)
    assert rig.frames() == [] and rig.host.connects == []
    names.view = View.parse(message(WEB))
    assert rig.stack.vips is not None
    rig.stack.vips.view_changed(rig.now)
    assert [t for _, t, _ in rig.host.connects] == [[("127.0.0.1", 40123)]]


def test_a_guest_reset_while_waiting_drops_the_connect() -> None:
    rig, names = directory_rig(View.parse(message(WEB, DB)))
    rig.send(IP(src=GUEST, dst="198.18.0.2") / TCP(sport=40000, dport=5432, flags="S", seq=1000))
    rig.send(IP(src=GUEST, dst="198.18.0.2") / TCP(sport=40000, dport=5432, flags="R", seq=1001))
    names.view = View.parse(message(service("db", 2, instance(5432, 6000))))
    assert rig.stack.vips is not None
    rig.stack.vips.view_changed(rig.now)
    assert rig.host.connects == [] and rig.frames() == []


# ------------------------------------------------------------------ UDP, ICMP
def test_udp_and_ping_to_a_vip_are_dropped_and_counted() -> None:
    rig, _ = directory_rig(View.parse(message(WEB)))
    rig.send(IP(src=GUEST, dst="198.18.0.1") / UDP(sport=5000, dport=8080) / b"x")
    rig.send(IP(src=GUEST, dst="198.18.0.1") / ICMP(type=8, id=1, seq=1))
    assert rig.frames() == [] and rig.host.udp == []
    assert rig.stack.stats.drops["udp_to_vip"] == 1
    assert rig.stack.stats.drops["icmp_to_vip"] == 1


def test_without_a_directory_a_vip_is_an_ordinary_address() -> None:
    rig = Rig()
    rig.send(IP(src=GUEST, dst="198.18.0.1") / SYN)
    assert [t for _, t, _ in rig.host.connects] == [[("198.18.0.1", 8080)]]


def test_held_syns_are_bounded_the_oldest_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vips, "MAX_WAITING", 2)
    rig, _ = directory_rig(View.parse(message(WEB, DB)))
    for sport in (40000, 40001, 40002):
        rig.send(IP(src=GUEST, dst="198.18.0.2") / TCP(sport=sport, dport=5432, flags="S"))
    (rst,) = rig.frames()
    assert (rst[TCP].dport, rst[TCP].flags) == (40000, "RA")
    assert rig.stack.stats.drops["directory_wait_evicted"] == 1
    assert rig.stack.vips is not None and len(rig.stack.vips.waiting) == 2


def test_a_vip_just_resolved_but_not_in_the_view_yet_waits_for_it() -> None:
    """resolve's answer and the view with the new name come on different connections:
    a guest connecting at once is held, not refused."""
    rig, names = directory_rig(View.parse(message(WEB)))
    names.awaiting.add(ip("198.18.0.2"))
    rig.send(IP(src=GUEST, dst="198.18.0.2") / TCP(sport=40000, dport=5432, flags="S", seq=1000))
    assert rig.frames() == [] and rig.host.connects == []
    names.view = View.parse(message(WEB, service("db", 2, instance(5432, 6000))))
    assert rig.stack.vips is not None
    rig.stack.vips.view_changed(rig.now)
    assert [t for _, t, _ in rig.host.connects] == [[("127.0.0.1", 6000)]]
