"""IPv6 with -6, end to end: SLAAC from our router advertisement, the gateway fd00::2
as the host's ::1, DNS on fd00::3, ICMPv6 to virtual and world hosts, and loopback
isolation against crafted IPv6 frames."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from tests.e2e.test_datapath import UPLOAD, _sha256_file, mode
from tests.e2e.test_hostile import HOSTILE
from tests.netns import PYTHON, SERVERS, WORLD_HOST_IP6, World

MiB = 1 << 20


def wait_slaac(world: World, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = world.in_guest("ip", "-6", "addr", "show", "tap0", "scope", "global").stdout
        for line in out.splitlines():
            words = line.split()
            if words[:1] == ["inet6"] and words[1].startswith("fd00::") and "tentative" not in line:
                return words[1]
        time.sleep(0.1)
    raise AssertionError(f"no SLAAC address:\n{out}\n{world.log()}")


def test_slaac_address_and_default_route(world: World) -> None:
    world.start_netstack("-6")
    addr = wait_slaac(world)
    assert addr.endswith("/64")
    routes = world.in_guest("ip", "-6", "route").stdout
    assert "default via fe80::2 dev tap0" in routes
    for dst in ("fd00::2", "fd00::3", "fe80::2%tap0"):
        r = world.in_guest("ping", "-6", "-c", "1", "-W", "2", dst)
        assert r.returncode == 0, f"{dst}: {r.stdout}"


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"NETSTACK_VNET": "0"},
        {"NETSTACK_FASTPATH": "0"},
        {"NETSTACK_VNET": "0", "NETSTACK_FASTPATH": "0"},
    ],
    ids=["vnet", "plain", "vnet-python", "plain-python"],
)
def test_tcp_both_ways_to_host_loopback_over_ipv6(
    world: World, env: dict[str, str], tmp_path: Path
) -> None:
    """Established IPv6 flows run in C (csrc/flow.c) or, with NETSTACK_FASTPATH=0, in
    Python: both frame kinds, both directions."""
    with tempfile.TemporaryDirectory() as d:
        blob = Path(d) / "blob"
        blob.write_bytes(os.urandom(32 * MiB))
        world.server("host", "http", d, "8080", "::1")
        world.server("host", "sink", "9000", "::1")
        world.start_netstack("-6", "--api-socket", str(tmp_path / "api.sock"), env=env)
        wait_slaac(world)
        r = world.in_guest("sh", "-c", "curl -sS -m 60 'http://[fd00::2]:8080/blob' | sha256sum")
        assert r.stdout.split()[0] == _sha256_file(blob), r.stderr
    r = world.guest_python(UPLOAD.replace('("10.0.2.2", 9000)', '("fd00::2", 9000)'), str(32 * MiB))
    sent_hash, server_hash, count = r.stdout.split()
    assert sent_hash == server_hash and int(count) == 32 * MiB, r.stderr
    world.assert_mode(**mode(env))


UDP6 = r"""
import os, socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(2)
good = 0
for size in (1, 1000, 1400, 3000):
    msg = os.urandom(size)
    for _ in range(3):
        s.sendto(msg, ("fd00::2", 5353))
        try:
            data, addr = s.recvfrom(65535)
        except socket.timeout:
            continue
        if data == msg and addr[0] == "fd00::2":
            good += 1
            break
print(good)
"""


def test_udp_and_dns_over_ipv6(world: World) -> None:
    world.server("host", "udpecho", "5353", "::1")
    world.server("host", "dns", "53", "127.0.0.1", "192.0.2.44")  # an IPv4-only host resolver
    (world.etc_dirs[1] / "resolv.conf").write_text("nameserver fd00::3\n")
    world.start_netstack("-6")
    wait_slaac(world)
    r = world.guest_python(UDP6)
    assert r.stdout.strip() == "4", r.stderr
    r = world.in_guest("getent", "ahostsv6", "six.test")
    assert "2001:db8::c000:22c" in r.stdout, r.stdout + r.stderr + world.log()


def test_ping6_and_tcp_to_a_world_host_over_ipv6(world: World) -> None:
    world.server("world", "peer", "8090", WORLD_HOST_IP6)
    world.start_netstack("-6")
    wait_slaac(world)
    r = world.in_guest("ping", "-6", "-c", "2", "-W", "2", WORLD_HOST_IP6)
    assert r.returncode == 0, r.stdout + world.log()
    r = world.guest_python(
        "import socket\ns = socket.create_connection(('2001:db8::2', 8090), timeout=5)\n"
        "print(s.recv(100).decode())"
    )
    assert r.stdout.startswith("2001:db8::1:"), r.stdout + r.stderr  # the host's address


def test_closed_port_and_disabled_loopback_over_ipv6(world: World) -> None:
    counter = world.spawn("host", PYTHON, "-u", SERVERS, "count", "22", "::")
    assert counter.stdout is not None and counter.stdout.readline().strip() == b"ready"
    world.start_netstack("-6", "--disable-host-loopback")
    wait_slaac(world)
    r = world.guest_python(
        "import socket\ntry:\n    socket.create_connection(('fd00::2', 22), timeout=5)\n"
        "except OSError as e:\n    print(e.strerror)\n"
    )
    assert r.stdout.strip() == "Network is unreachable", r.stdout + r.stderr
    r = world.in_guest(PYTHON, HOSTILE, "v6loopback", "2000")
    assert r.returncode == 0, r.stderr
    time.sleep(1)  # stragglers' grace: the check is that nothing arrives
    counter.terminate()
    assert counter.stdout.read().split() == [], "host loopback reached over IPv6"


def test_ipv6_port_forwards(world: World, tmp_path: Path) -> None:
    from tests.e2e.test_api import ECHO_CLIENT, PEER_CLIENT, add, in_host_ns

    api = str(tmp_path / "api.sock")
    world.start_netstack("-6", "--api-socket", api)
    guest6 = wait_slaac(world).split("/")[0]
    world.server("guest", "echo", "7000", "::")  # asyncio makes "::" IPv6-only
    world.server("guest", "peer", "7001", "::")
    # an IPv6 client on the host's ::1 to the guest's IPv6 service
    assert (
        add(api, proto="tcp", host_addr="::1", host_port=17010, guest_addr=guest6, guest_port=7000)
        == b'{"return":{"id":1}}'
    )
    out = in_host_ns(world, ECHO_CLIENT, "::1", "17010", str(8 * MiB), "4")
    assert out.split() == ["ok", "4"]
    # an IPv4 client reaching a guest service that listens only on IPv6
    assert (
        add(
            api,
            proto="tcp",
            host_addr="127.0.0.1",
            host_port=17011,
            guest_addr=guest6,
            guest_port=7001,
        )
        == b'{"return":{"id":2}}'
    )
    r = world.in_host(PYTHON, "-c", PEER_CLIENT, "127.0.0.1", "17011")
    assert r.stdout.strip().startswith("fd00::2:"), r.stdout + r.stderr
    # a world client over IPv6 is seen with its own address
    assert (
        add(api, proto="tcp", host_addr="::", host_port=17012, guest_addr=guest6, guest_port=7001)
        == b'{"return":{"id":3}}'
    )
    r = world.in_world(PYTHON, "-c", PEER_CLIENT, "2001:db8::1", "17012")
    assert r.stdout.strip().startswith("2001:db8::2:"), r.stdout + r.stderr
    # IPv6 host_addr for UDP too
    world.server("guest", "udpecho", "5300", "::")
    assert (
        add(api, proto="udp", host_addr="::1", host_port=15300, guest_addr=guest6, guest_port=5300)
        == b'{"return":{"id":4}}'
    )
    r = world.in_host(
        PYTHON,
        "-c",
        "import socket\ns = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
        "s.settimeout(3)\ns.sendto(b'six', ('::1', 15300))\n"
        "print(s.recvfrom(100)[0].decode())",
    )
    assert r.stdout.strip() == "six", r.stderr
    # without -6 an IPv6 address is refused, as before
    bad = add(
        api, proto="tcp", host_addr="::1", host_port=17013, guest_addr="fd00::2", guest_port=1
    )
    assert bad == b'{"error":{"desc":"bad request: add_hostfwd: bad arguments.guest_addr"}}'


def test_outbound_addr6_binds_ipv6_host_sockets(world: World) -> None:
    import subprocess

    subprocess.run(
        ["ip", "-n", world.host, "addr", "add", "2001:db8::10/64", "dev", "up0", "nodad"],
        check=True,
    )
    world.server("world", "peer", "8091", WORLD_HOST_IP6)
    world.start_netstack("-6", "--outbound-addr6=2001:db8::10")
    wait_slaac(world)
    r = world.guest_python(
        "import socket\ns = socket.create_connection(('2001:db8::2', 8091), timeout=5)\n"
        "print(s.recv(100).decode())"
    )
    assert r.stdout.startswith("2001:db8::10:"), r.stdout + r.stderr


def test_configure_sets_the_ipv6_address_and_route_before_ready(world: World) -> None:
    world.start_netstack("-6")
    out = world.in_guest("ip", "-6", "addr", "show", "tap0", "scope", "global").stdout
    assert "inet6 fd00::" in out and "tentative" not in out, out
    assert "default via fe80::2" in world.in_guest("ip", "-6", "route").stdout
    mac = world.in_guest("cat", "/sys/class/net/tap0/address").stdout.strip()
    from netstack.cli.nsenter import slaac_address

    assert f"inet6 {slaac_address(mac)}/64" in out  # the address SLAAC derives too
