"""End to end: UDP through netstack, with established flows in C (csrc/udp.c) and in
Python only, both frame kinds. Servers run on the host namespace's loopback (and its
uplink address), never beyond the test's own namespaces."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import test_datapath
from tests.e2e.test_datapath import mode
from tests.e2e.test_ipv6 import wait_slaac
from tests.netns import HOST_UPLINK_IP, PYTHON, World, wait_until

frames = test_datapath.frames  # the fixture: vnet and plain frames, flows in C and in Python

ECHO_SERVER = r"""
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(65535)
    s.sendto(data, addr)
"""

# numbered datagrams with a window: both ways, every byte and the order checked
ECHO_CLIENT = r"""
import random, socket, struct, sys
host, port, n, size, window = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(1)
def body(i):
    return struct.pack("!Q", i) + random.Random(i).randbytes(size - 8)
for attempt in range(5):  # the first one may wait for neighbour discovery: once
    s.sendto(b"warm", (host, port))
    try:
        if s.recvfrom(100)[0] == b"warm":
            break
    except socket.timeout:
        pass
s.settimeout(5)
sent = got = 0
while got < n:
    while sent < n and sent - got < window:
        s.sendto(body(sent), (host, port))
        sent += 1
    data, addr = s.recvfrom(65535)
    assert addr[:2] == (host, port), addr
    assert data == body(got), (got, struct.unpack("!Q", data[:8])[0], len(data))
    got += 1
print(got)
"""


def _udp_stats(world: World) -> tuple[dict[str, int], dict[str, int] | None]:
    stats = world.api("get_stats")
    return stats["events"], stats["fast_path"]


def test_bulk_echo_both_ways_in_order(world: World, frames: dict[str, str], tmp_path: Path) -> None:
    n = 20_000
    world.spawn("host", PYTHON, "-c", ECHO_SERVER, "127.0.0.1", "5400", wait_ready=True)
    world.start_netstack("--api-socket", str(tmp_path / "api.sock"), env=frames)
    r = world.guest_python(ECHO_CLIENT, "10.0.2.2", "5400", str(n), "1400", "32")
    assert r.returncode == 0, r.stderr + world.log()
    assert r.stdout.strip() == str(n)
    events, fast = _udp_stats(world)
    assert events["udp_datagrams_from_guest"] == n + 1  # and the warm-up
    assert events["udp_datagrams_to_guest"] == n + 1
    if mode(frames)["flows_in_c"]:
        assert fast is not None
        assert fast["udp_datagrams_to_host_from_c"] > n // 2, fast
        assert fast["udp_datagrams_to_guest_from_c"] > n // 2, fast
    else:
        assert fast is None
    world.assert_no_internal_errors()


# one-way bursts, no window: whatever arrives must be in order, whole, once
BURST_SERVER = r"""
import random, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
seen = []
while True:
    data, addr = s.recvfrom(65535)
    if data.startswith(b"go "):
        n, size = map(int, data.split()[1:])
        for i in range(n):
            s.sendto(struct.pack("!Q", i) + random.Random(i).randbytes(size - 8), addr)
    elif data == b"report":
        s.sendto(b"%d %d" % (len(seen), seen == sorted(set(seen))), addr)
        seen = []
    else:
        i = struct.unpack("!Q", data[:8])[0]
        if data[8:] == random.Random(i).randbytes(len(data) - 8):
            seen.append(i)
"""

BURST_CLIENT = r"""
import random, socket, struct, sys, time
n, size = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.settimeout(1)
peer = ("10.0.2.2", 5401)
for i in range(n):  # guest -> host
    s.sendto(struct.pack("!Q", i) + random.Random(i).randbytes(size - 8), peer)
time.sleep(0.5)
s.sendto(b"report", peer)
count, ordered = s.recvfrom(100)[0].split()
s.sendto(b"go %d %d" % (n, size), peer)  # host -> guest
got = []
try:
    while True:
        data, addr = s.recvfrom(65535)
        assert addr == peer, addr
        i = struct.unpack("!Q", data[:8])[0]
        assert data[8:] == random.Random(i).randbytes(len(data) - 8), i
        got.append(i)
except socket.timeout:
    pass
assert got == sorted(set(got)), "host -> guest out of order or twice"
print(int(count), int(ordered), len(got))
"""


def test_bursts_both_ways_arrive_in_order(
    world: World, frames: dict[str, str], tmp_path: Path
) -> None:
    n = 5000
    world.spawn("host", PYTHON, "-c", BURST_SERVER, "5401", wait_ready=True)
    world.start_netstack("--api-socket", str(tmp_path / "api.sock"), env=frames)
    # the gateway's MAC first: datagrams the guest queues while it resolves it may
    # leave out of order (the queue is flushed while new ones go straight out)
    assert world.in_guest("ping", "-c", "1", "-W", "2", "10.0.2.2").returncode == 0
    r = world.guest_python(BURST_CLIENT, str(n), "1200")
    assert r.returncode == 0, r.stderr + world.log()
    to_host, ordered, to_guest = map(int, r.stdout.split())
    assert ordered == 1, "guest -> host out of order or twice"
    assert 0 < to_host <= n and 0 < to_guest <= n
    world.assert_no_internal_errors()


# one guest socket; replies from the peer it wrote to, another loopback port, the
# host's uplink address and 127.0.0.2 (which the guest never sees: no virtual address)
PEERS_SERVER = r"""
import socket, sys
def bound(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    return s
a, b, c, d = bound("127.0.0.1", 7001), bound("127.0.0.1", 7002), bound(sys.argv[1], 7003), \
    bound("127.0.0.2", 7004)
print("ready", flush=True)
while True:
    data, addr = a.recvfrom(100)
    a.sendto(b"a" + data, addr)
    d.sendto(b"d" + data, addr)
    b.sendto(b"b" + data, addr)
    c.sendto(b"c" + data, addr)
"""

PEERS_CLIENT = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
out = []
for i in range(3):
    s.sendto(b"%d" % i, ("10.0.2.2", 7001))
    for _ in range(3):
        data, addr = s.recvfrom(100)
        out.append("%s:%d:%s" % (addr[0], addr[1], data.decode()))
try:
    data, addr = s.recvfrom(100)
    out.append("extra %s %s" % (addr, data))
except socket.timeout:
    pass
print(" ".join(out))
"""


def test_replies_from_other_host_peers_reach_the_guest_socket(
    world: World, frames: dict[str, str], tmp_path: Path
) -> None:
    world.spawn("host", PYTHON, "-c", PEERS_SERVER, HOST_UPLINK_IP, wait_ready=True)
    world.start_netstack("--api-socket", str(tmp_path / "api.sock"), env=frames)
    r = world.guest_python(PEERS_CLIENT)
    assert r.returncode == 0, r.stderr + world.log()
    want = []
    for i in range(3):
        want += [f"10.0.2.2:7001:a{i}", f"10.0.2.2:7002:b{i}", f"{HOST_UPLINK_IP}:7003:c{i}"]
    assert r.stdout.split() == want
    drops = world.api("get_stats")["drops"]
    assert drops["udp_reply_unmapped"] == 3  # 127.0.0.2's
    world.assert_no_internal_errors()


GSO_CLIENT = r"""
import random, socket, sys
seg, per_write, writes = 1400, 46, int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_UDP, 103, seg)  # UDP_SEGMENT: one write, many datagrams
s.settimeout(5)
rng = random.Random(7)
for w in range(writes):
    blob = rng.randbytes(seg * per_write)  # 64,400 bytes a write
    s.sendto(blob, ("10.0.2.2", 5402))
    for k in range(per_write):
        data, addr = s.recvfrom(65535)
        assert data == blob[k * seg:(k + 1) * seg], (w, k, len(data))
print(writes * per_write)
"""


def test_guest_udp_segment_writes_arrive_as_their_datagrams(
    world: World, frames: dict[str, str], tmp_path: Path
) -> None:
    world.spawn("host", PYTHON, "-c", ECHO_SERVER, "127.0.0.1", "5402", wait_ready=True)
    world.start_netstack("--api-socket", str(tmp_path / "api.sock"), env=frames)
    r = world.guest_python(GSO_CLIENT, "30")
    assert r.returncode == 0, r.stderr + world.log()
    assert r.stdout.strip() == str(30 * 46)
    events, fast = _udp_stats(world)
    assert events["udp_datagrams_from_guest"] == 30 * 46
    if fast is not None and mode(frames)["vnet"]:  # the TAP's USO: whole writes reach C
        assert fast["udp_gso_frames_from_guest"] >= 29, fast
    world.assert_no_internal_errors()


# the host's side answers each request with one UDP_SEGMENT write: the segment size and
# count the request asks for, the last segment shorter when asked
GSO_SERVER = r"""
import random, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
while True:
    req, addr = s.recvfrom(100)
    i, seg, count, short = map(int, req.split())
    blob = random.Random(i).randbytes(seg * (count - 1) + (short or seg))
    s.sendmsg([blob], [(socket.SOL_UDP, 103, seg.to_bytes(2, "little"))], 0, addr)
"""

# (segment size, datagrams, last one's size or 0): MTU-sized, QUIC's 1200 with a short
# tail, small ones, and datagrams over the guest's MTU (1500: fragmented to it)
GSO_WRITES = [(1400, 46, 0), (1200, 54, 300), (100, 128, 1), (1400, 2, 0), (3000, 4, 2000)]

GSO_READER = r"""
import random, socket, sys
writes = eval(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.settimeout(5)
n = 0
for rnd in range(int(sys.argv[1])):
    for w, (seg, count, short) in enumerate(writes):
        i = rnd * 100 + w
        s.sendto(b"%d %d %d %d" % (i, seg, count, short), ("10.0.2.2", 5403))
        blob = random.Random(i).randbytes(seg * (count - 1) + (short or seg))
        for k in range(count):
            data, addr = s.recvfrom(65535)
            assert addr == ("10.0.2.2", 5403), addr
            assert data == blob[k * seg:(k + 1) * seg], (i, k, len(data))
            n += 1
print(n)
"""


def test_host_udp_segment_writes_arrive_as_their_datagrams(
    world: World, frames: dict[str, str], tmp_path: Path
) -> None:
    """A host peer's GSO writes (what a QUIC server sends) reach the host socket as one
    coalesced read each (UDP_GRO) once a read has shown a bulk peer; the guest gets
    every datagram, in order, whole."""
    rounds = 10
    world.spawn("host", PYTHON, "-c", GSO_SERVER, "5403", wait_ready=True)
    world.start_netstack("--api-socket", str(tmp_path / "api.sock"), env=frames)
    r = world.guest_python(GSO_READER, str(rounds), repr(GSO_WRITES))
    assert r.returncode == 0, r.stderr + world.log()
    per_round = sum(count for _, count, _ in GSO_WRITES)
    assert r.stdout.strip() == str(rounds * per_round)
    events, fast = _udp_stats(world)
    assert events["udp_datagrams_to_guest"] == rounds * per_round
    # the first round's first large write asks for coalesced reads (csrc/udp.h
    # GRO_AFTER); every write after it is one read, in C or in the Python twin
    reads = events.get("udp_gro_reads_from_host", 0)
    if fast is not None:
        reads += fast["udp_gro_reads_from_host"]
    assert (rounds - 1) * len(GSO_WRITES) <= reads < rounds * len(GSO_WRITES), (events, fast)
    if fast is not None:
        assert fast["udp_datagrams_to_guest_from_c"] >= (rounds - 1) * (per_round - 4), fast
        if mode(frames)["vnet"]:
            assert fast["udp_gso_frames_to_guest"] >= (rounds - 1) * 4, fast
    world.assert_mode(**mode(frames))
    world.assert_no_internal_errors()


@pytest.mark.parametrize("env", [{}, {"NETSTACK_FASTPATH": "0"}], ids=["c", "python"])
def test_ipv6_echo_to_host_loopback(world: World, env: dict[str, str], tmp_path: Path) -> None:
    n = 5000
    world.spawn("host", PYTHON, "-c", ECHO_SERVER, "::1", "5403", wait_ready=True)
    world.start_netstack("-6", "--api-socket", str(tmp_path / "api.sock"), env=env)
    wait_slaac(world)
    r = world.guest_python(ECHO_CLIENT, "fd00::2", "5403", str(n), "1400", "32")
    assert r.returncode == 0, r.stderr + world.log()
    assert r.stdout.strip() == str(n)
    events, fast = _udp_stats(world)
    assert events["udp_datagrams_from_guest"] == events["udp_datagrams_to_guest"] == n + 1
    if not env:
        assert fast is not None and fast["udp_datagrams_to_guest_from_c"] > n // 2, fast
    world.assert_no_internal_errors()


@pytest.mark.parametrize("env", [{}, {"NETSTACK_FASTPATH": "0"}], ids=["c", "python"])
def test_idle_expiry_closes_the_host_socket(
    world: World, env: dict[str, str], tmp_path: Path
) -> None:
    world.spawn("host", PYTHON, "-c", ECHO_SERVER, "127.0.0.1", "5404", wait_ready=True)
    world.start_netstack("--udp-timeout=1", "--api-socket", str(tmp_path / "api.sock"), env=env)
    before = world.netstack_fds().get("socket", 0)
    # a guest that keeps its socket: the flow must expire on netstack's side alone
    world.spawn(
        "guest", PYTHON, "-c",
        ECHO_CLIENT.replace("print(got)", "print(got, flush=True); import time; time.sleep(60)"),
        "10.0.2.2", "5404", "300", "200", "8",
    )  # fmt: skip
    wait_until(lambda: world.api("get_stats")["flows"]["udp"] == 1, what="the flow")
    wait_until(
        lambda: world.api("get_stats")["events"].get("udp_datagrams_to_guest", 0) == 301,
        what="the echoes",
    )
    if not env:
        assert world.api("get_stats")["fast_path"]["udp_flows_held"] == 1
    wait_until(lambda: world.api("get_stats")["flows"]["udp"] == 0, timeout=5, what="expiry")
    assert world.netstack_fds().get("socket", 0) == before
    if not env:
        assert world.api("get_stats")["fast_path"]["udp_flows_held"] == 0
    world.assert_no_internal_errors()


MANY_CLIENT = r"""
import socket, sys
n = int(sys.argv[1])
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
for s in socks:
    s.settimeout(0.5)
got = 0
for rnd in range(3):
    for i, s in enumerate(socks):
        s.sendto(b"%d-%d" % (i, rnd), ("10.0.2.2", 5405))
        try:
            got += s.recvfrom(100)[0] == b"%d-%d" % (i, rnd)
        except socket.timeout:
            pass
print(got)
"""


@pytest.mark.parametrize("env", [{}, {"NETSTACK_FASTPATH": "0"}], ids=["c", "python"])
def test_more_flows_than_allowed_evict_held_ones_cleanly(
    world: World, env: dict[str, str], tmp_path: Path
) -> None:
    """120 guest sockets against a limit of 50 flows: the idlest flow gives way (held by
    C or not), every datagram sent in a flow's turn is answered, nothing leaks."""
    world.spawn("host", PYTHON, "-c", ECHO_SERVER, "127.0.0.1", "5405", wait_ready=True)
    world.start_netstack("--max-udp-flows=50", "--api-socket", str(tmp_path / "api.sock"), env=env)
    before = world.netstack_fds().get("socket", 0)
    r = world.guest_python(MANY_CLIENT, "120")
    assert r.returncode == 0, r.stderr + world.log()
    assert r.stdout.strip() == str(3 * 120)
    stats = world.api("get_stats")
    assert stats["flows"]["udp"] == 50
    assert stats["drops"]["udp_flow_evicted"] == 3 * 120 - 50
    assert world.netstack_fds().get("socket", 0) == before + 50
    if not env:
        assert stats["fast_path"]["udp_flows_held"] == 50
    world.assert_no_internal_errors()
