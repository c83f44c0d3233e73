"""Where guest packets may go (netstack.stack.policy), IPv6 first: the host's loopback
must be reachable only through the virtual host address (fd00::2), never as ::1 or in
IPv4-mapped disguise (::ffff:127.0.0.1)."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import IPv6

from netstack.stack.config import DNS6, HOST6, NetworkConfig
from netstack.stack.policy import Policy, is_martian, is_martian6
from tests.fakes import Rig

GUEST6 = "fd00::100"


def packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


@pytest.mark.parametrize(
    "ip",
    [
        "::",
        "::1",  # loopback
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:10.0.2.2",
        "::ffff:192.0.2.9",  # mapped: an IPv4 destination must be sent as IPv4
        "::127.0.0.1",  # IPv4-compatible (deprecated)
        "fe80::1",
        "febf::1",
        "ff02::1",
        "ff0e::1",
        "100::1",  # discard-only
    ],
)
def test_martian6(ip: str) -> None:
    assert is_martian6(packed(ip))


@pytest.mark.parametrize("ip", ["2001:db8::9", "fd00::2", "fec0::1", "1::1", "::1:0:0:1"])
def test_not_martian6(ip: str) -> None:
    assert not is_martian6(packed(ip))


@pytest.mark.parametrize(
    "ip,martian",
    [
        ("0.1.2.3", True),
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("224.0.0.1", True),
        ("255.255.255.255", True),
        ("169.254.1.1", True),
        ("169.253.1.1", False),
        ("192.0.2.9", False),
        ("126.0.0.1", False),
        ("223.255.255.255", False),
    ],
)
def test_martian4(ip: str, martian: bool) -> None:
    assert is_martian(packed(ip)) is martian


@pytest.mark.parametrize("dst", ["::1", "::ffff:127.0.0.1", "::127.0.0.1", "fe80::2", "ff02::1"])
def test_ipv6_syn_to_a_loopback_in_disguise_never_reaches_the_host(dst: str) -> None:
    rig = Rig(NetworkConfig(ipv6=True))
    rig.send(IPv6(src=GUEST6, dst=dst) / TCP(sport=40000, dport=80, flags="S"))
    rig.send(IPv6(src=GUEST6, dst=dst) / UDP(sport=40000, dport=80) / b"x")
    assert rig.host.connects == [] and rig.host.udp == []
    assert rig.stack.stats.drops["tcp_destination_dropped"] == 1


def test_ipv6_syn_to_the_virtual_host_goes_to_host_loopback() -> None:
    rig = Rig(NetworkConfig(ipv6=True))
    rig.send(IPv6(src=GUEST6, dst="fd00::2") / TCP(sport=40000, dport=80, flags="S"))
    rig.send(IPv6(src=GUEST6, dst="2001:db8::9") / TCP(sport=40001, dport=80, flags="S"))
    assert [targets for _, targets, _ in rig.host.connects] == [
        [("::1", 80)],
        [("2001:db8::9", 80)],
    ]


def test_virtual_source_maps_host_loopback_to_the_virtual_host_only() -> None:
    policy = Policy(NetworkConfig(ipv6=True), lambda: [])
    assert policy.virtual_source(("::1", 80)) == HOST6
    assert policy.virtual_source(("127.0.0.1", 80)) == packed("10.0.2.2")
    assert policy.virtual_source(("::ffff:127.0.0.1", 80)) is None
    assert policy.virtual_source(("127.0.0.2", 80)) is None
    assert policy.virtual_source(("::ffff:192.0.2.9", 80)) == packed("192.0.2.9")
    assert policy.virtual_source(("2001:db8::9", 80)) == packed("2001:db8::9")
    assert policy.virtual_source(("fe80::1%eth0", 80)) is None
    off = Policy(NetworkConfig(ipv6=True, host_loopback=False), lambda: [])
    assert off.virtual_source(("::1", 80)) is None
    assert off.virtual_source(("127.0.0.1", 80)) is None


def test_ipv6_dns_prefers_ipv6_nameservers() -> None:
    policy = Policy(NetworkConfig(ipv6=True), lambda: ["1.2.3.4", "2001:db8::53"])
    assert policy.tcp_target(DNS6, 53) == [("2001:db8::53", 53), ("1.2.3.4", 53)]
