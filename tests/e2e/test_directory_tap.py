"""--directory end to end: a fake netstackd in the test process, a real server on the
host namespace's loopback registered as an instance of `web`, and the guest reaching
it by name through the TAP stack; label denial, a name served late, an unknown VIP
(never forwarded: a canary on that very address sees nothing) and netstackd absent."""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_api import call
from tests.e2e.test_datapath import DNS_TCP_QUERY
from tests.e2e.test_ipv6 import wait_slaac
from tests.helpers.fake_netstackd import FakeNetstackd
from tests.netns import NETSTACK, PYTHON, World

NETSTACKCTL = NETSTACK + "ctl"

MiB = 1 << 20

# argv: name port [6]; prints "<sha256> <length>" of what a GET /blob returned, or "refused"
FETCH = r"""
import hashlib, socket, sys
name, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if sys.argv[3:] == ["6"] else socket.AF_INET
addr = socket.getaddrinfo(name, port, family, socket.SOCK_STREAM)[0][4]
s = socket.socket(family)
s.settimeout(30)
try:
    s.connect(addr)
except ConnectionRefusedError:
    print("refused", addr[0])
    raise SystemExit(0)
s.sendall(b"GET /blob HTTP/1.0\r\nHost: x\r\n\r\n")
data = b""
while chunk := s.recv(1 << 20):
    data += chunk
body = data.split(b"\r\n\r\n", 1)[1]
print(hashlib.sha256(body).hexdigest(), len(body))
"""

ADDRS = r"""
import socket, sys
for family in (socket.AF_INET, socket.AF_INET6):
    infos = socket.getaddrinfo(sys.argv[1], 80, family, socket.SOCK_STREAM)
    print(infos[0][4][0])
"""


@pytest.fixture
def netstackd(tmp_path: Path) -> Iterator[FakeNetstackd]:
    with FakeNetstackd(tmp_path / "netstackd.sock") as fake:
        yield fake


@pytest.fixture
def blob(world: World, tmp_path: Path) -> str:
    """A 16 MiB file served over HTTP on the host's 127.0.0.1:18080; its sha256."""
    www = tmp_path / "www"
    www.mkdir()
    data = os.urandom(16 * MiB)
    (www / "blob").write_bytes(data)
    world.server("host", "http", str(www), "18080", "127.0.0.1")
    return hashlib.sha256(data).hexdigest()


def stats(api: str) -> dict[str, Any]:
    reply = json.loads(call(api, b'{"execute":"get_stats"}'))["return"]
    assert isinstance(reply, dict)
    return reply


def fetch(world: World, name: str, port: int = 80, v6: bool = False) -> str:
    r = world.guest_python(FETCH, name, str(port), *(["6"] if v6 else []))
    assert r.returncode == 0, r.stderr + world.log()
    return r.stdout.strip()


def test_a_service_is_reached_by_name_and_its_flow_runs_in_c(
    world: World, netstackd: FakeNetstackd, blob: str, tmp_path: Path
) -> None:
    netstackd.add_instance("web", 80, "127.0.0.1", 18080)
    api = str(tmp_path / "api.sock")
    world.start_netstack("--directory", netstackd.path, "--api-socket", api)
    r = world.in_guest("getent", "ahostsv4", "web.netstack.internal")
    assert r.returncode == 0 and "198.18.0.1" in r.stdout, r.stderr + world.log()
    r = world.in_guest("getent", "hosts", "WEB.netstack.internal")
    assert r.returncode == 0 and r.stdout.split()[0] in ("198.18.0.1", "fd4e:5344::1")
    r = world.guest_python(ADDRS, "web.netstack.internal")
    assert r.stdout.split() == ["198.18.0.1", "fd4e:5344::1"], r.stderr
    r = world.guest_python(DNS_TCP_QUERY, "web.netstack.internal")  # DNS over TCP
    assert r.stdout.strip() == "198.18.0.1", r.stderr + world.log()
    assert fetch(world, "web.netstack.internal") == f"{blob} {16 * MiB}"
    s = stats(api)
    assert s["events"]["directory_connects"] == 1
    assert s["directory"] == {
        "watching": True,
        "services": 1,
        "instances": 1,
        "connects_waiting": 0,
    }
    r = world.in_host(NETSTACKCTL, "-a", api, "stats")
    assert r.returncode == 0 and "watching" in r.stdout, r.stderr
    fast = s["fast_path"]  # the established VIP flow ran in C (csrc/flow.c)
    assert fast["holds"] >= 1 and fast["frames_to_guest_from_c"] > 100, fast


def test_a_service_is_reached_over_ipv6_by_its_vip6(
    world: World, netstackd: FakeNetstackd, blob: str
) -> None:
    netstackd.add_instance("web", 80, "127.0.0.1", 18080)
    world.start_netstack("-6", "--directory", netstackd.path)
    wait_slaac(world)
    assert fetch(world, "web.netstack.internal", v6=True) == f"{blob} {16 * MiB}"
    assert fetch(world, "fd4e:5344::9", v6=True) == "refused fd4e:5344::9"


def test_an_instance_without_the_clients_label_is_refused(
    world: World, netstackd: FakeNetstackd, blob: str, tmp_path: Path
) -> None:
    netstackd.add_instance("web", 80, "127.0.0.1", 18080, {"zone": "blue"})
    api = str(tmp_path / "api.sock")
    world.start_netstack("--directory", netstackd.path, "--api-socket", api)
    assert fetch(world, "web.netstack.internal") == "refused 198.18.0.1"
    assert stats(api)["drops"]["directory_denied"] == 1


def test_a_labelled_client_reaches_a_labelled_instance(
    world: World, netstackd: FakeNetstackd, blob: str
) -> None:
    netstackd.add_instance("web", 80, "127.0.0.1", 18080, {"zone": "blue"})
    world.start_netstack(
        "--directory", netstackd.path, "--directory-label", "zone=blue", "--directory-label=a=b"
    )
    assert fetch(world, "web") == f"{blob} {16 * MiB}"  # a single label in the view


def test_a_name_resolved_before_its_server_starts_connects_once_it_does(
    world: World, netstackd: FakeNetstackd, blob: str, tmp_path: Path
) -> None:
    api = str(tmp_path / "api.sock")
    world.start_netstack("--directory", netstackd.path, "--api-socket", api)
    # nobody has the name: netstack asks netstackd, which reserves a VIP
    guest = world.spawn("guest", PYTHON, "-c", FETCH, "late.netstack.internal", "80")
    deadline = time.monotonic() + 10
    while stats(api)["events"].get("directory_waits", 0) < 1:  # the guest's SYN is held
        assert time.monotonic() < deadline, world.log()
        assert guest.poll() is None
        time.sleep(0.05)
    assert [r["execute"] for r in netstackd.requests].count("resolve") >= 1
    netstackd.add_instance("late", 80, "127.0.0.1", 18080)
    out, _ = guest.communicate(timeout=60)
    assert out.decode().strip() == f"{blob} {16 * MiB}"


def test_an_unknown_vip_is_refused_and_never_forwarded(
    world: World, netstackd: FakeNetstackd, tmp_path: Path
) -> None:
    # a canary on the VIP itself in the host namespace: a forwarded connect would land here
    r = world.in_host("ip", "addr", "add", "198.18.0.99/32", "dev", "lo")
    assert r.returncode == 0, r.stderr
    canary = world.server("host", "count", "80", "198.18.0.99")
    netstackd.reserve("db")  # reserved, never served
    api = str(tmp_path / "api.sock")
    world.start_netstack(
        "--directory", netstackd.path, "--api-socket", api, "--directory-wait", "1"
    )
    assert fetch(world, "198.18.0.99") == "refused 198.18.0.99"
    r = world.guest_python(
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
        "s.sendto(b'x', ('198.18.0.99', 80))"
    )
    assert r.returncode == 0, r.stderr
    t0 = time.monotonic()
    assert fetch(world, "db.netstack.internal") == "refused 198.18.0.1"  # waited, then RST
    assert 0.8 < time.monotonic() - t0 < 8
    s = stats(api)
    assert s["drops"]["directory_unknown_vip"] == 1
    assert s["drops"]["directory_wait_timeout"] == 1
    assert s["drops"]["udp_to_vip"] == 1
    assert canary.stdout is not None
    ready, _, _ = select.select([canary.stdout], [], [], 0.5)
    assert not ready, "the canary saw a connection or a datagram"


def test_without_netstackd_directory_names_fail_fast_and_others_still_resolve(
    world: World, tmp_path: Path
) -> None:
    world.server("host", "dns", "53", "127.0.0.1", "192.0.2.123")
    world.start_netstack("--directory", str(tmp_path / "nobody.sock"))
    t0 = time.monotonic()
    r = world.in_guest("getent", "ahostsv4", "web.netstack.internal")
    assert r.returncode != 0 and time.monotonic() - t0 < 5
    for name in ("printer", "service.test"):  # single labels not in the view go upstream
        r = world.in_guest("getent", "ahostsv4", name)
        assert r.returncode == 0 and "192.0.2.123" in r.stdout, r.stderr + world.log()
        r = world.guest_python(DNS_TCP_QUERY, name)  # over TCP: relayed to the nameserver
        assert r.stdout.strip() == "192.0.2.123", r.stderr + world.log()


def test_the_directory_in_the_sandbox_follows_a_restarted_netstackd(
    world: World, blob: str
) -> None:
    """The sandbox keeps only /etc and /run: a per-user netstackd's socket under /run
    stays reachable, also for the watch's reconnects after pivot_root and seccomp."""
    run_dir = Path(tempfile.mkdtemp(prefix="netstack-test-", dir="/run"))
    try:
        fake = FakeNetstackd(run_dir / "netstackd.sock").start()
        try:
            fake.add_instance("web", 80, "127.0.0.1", 18080)
            world.start_netstack("--enable-sandbox", "--enable-seccomp", "--directory", fake.path)
            assert fetch(world, "web.netstack.internal") == f"{blob} {16 * MiB}"
        finally:
            fake.close()
        with FakeNetstackd(fake.path) as again:  # netstackd restarts: a new VIP for `api`
            again.add_instance("api", 80, "127.0.0.1", 18080)
            deadline = time.monotonic() + 15
            while again.watching() < 1:
                assert time.monotonic() < deadline, world.log()
                time.sleep(0.05)
            assert fetch(world, "api.netstack.internal") == f"{blob} {16 * MiB}"
        assert world.netstack is not None and world.netstack.poll() is None
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
