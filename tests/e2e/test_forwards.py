"""Port forwards' connections (add_hostfwd), as the C path opens them (csrc/
flow_forward.c: accepted, SYN to the guest, its SYN-ACK taken, the connection carried
and closed in C, Python never told) and as its Python twin does (NETSTACK_FWD_C=0):
many short ones from the host side's loopback with the guest's server closing first,
and with the client closing first (our FIN first: TIME_WAIT in C). A UDP forward's
clients, read from the listener and sent to the guest in C once they have a route, and
the guest's answers sent to them from C (csrc/udp.c, csrc/udp_to_guest.c), against the
Python twin (NETSTACK_FASTPATH=0). The guest's kernel TCP and UDP on a real TAP, real
host sockets in the host namespace."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_api import add
from tests.e2e.test_connections import settled_counts
from tests.netns import PYTHON, World

# the client on the host side: n connections to 127.0.0.1:port; "echo": send, read it
# back, close first; "peer": read what the guest's server says (the peer it saw) until
# it closes first
CLIENT = r"""
import os, socket, sys
mode, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
good = 0
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    if mode == "echo":
        msg = os.urandom(1 + i * 37 % 3000)
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            data = s.recv(65536)
            if not data:
                break
            got += data
        good += got == msg
    else:
        got = b""
        while data := s.recv(4096):
            got += data
        host, _, port_seen = got.decode().rpartition(":")
        good += host == "10.0.2.2" and port_seen.isdigit()
    s.close()
print(good, n)
"""


@pytest.mark.parametrize(
    "mode", ["peer", "echo"], ids=["guest-closes-first", "client-closes-first"]
)
@pytest.mark.parametrize("fwd_c", ["1", "0"], ids=["forward-in-c", "forward-in-python"])
def test_short_forwarded_connections(world: World, mode: str, fwd_c: str, tmp_path: Path) -> None:
    api = str(tmp_path / "api.sock")
    world.server("guest", mode, "7000", "0.0.0.0")
    world.start_netstack("--api-socket", api, env={"NETSTACK_FWD_C": fwd_c})
    assert add(api, proto="tcp", host_addr="127.0.0.1", host_port=17000, guest_port=7000) == (
        b'{"return":{"id":1}}'
    )
    baseline = world.netstack_fds()
    r = world.in_host(PYTHON, "-c", CLIENT, mode, "17000", "300", timeout=120)
    assert r.returncode == 0, r.stderr + world.log()
    assert r.stdout.split() == ["300", "300"]
    counts = settled_counts(world, baseline)  # TIME_WAIT's 2 s included
    assert counts["tcp_forwards_opened"] == 300, counts
    assert counts["flows_unadopted"] == 0 and counts["time_wait_in_c"] == 0
    fast = world.api("get_stats")["fast_path"]
    if fwd_c == "1":
        # the first connection is Python's (it learns the guest's MAC for C); how many
        # more C opens and closes depends on the load (a flow still open when a timed
        # adoption comes is Python's), so: some
        assert fast["forwards_in_c"] > 0 and counts["closed_in_c"] > 0, counts
    else:
        assert fast["forwards_in_c"] == 0 and counts["closed_in_c"] == 0, counts
    world.assert_no_internal_errors()


# UDP clients on the host side: each sends n datagrams to 127.0.0.1:port one at a time
# and reads each echo (three tries); prints how many came back right
UDP_CLIENTS = r"""
import os, socket, sys
port, clients, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
good = 0
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(clients)]
for i in range(n):
    for s in socks:
        s.settimeout(2)
        msg = os.urandom(1 + (i * 131) % 1400)
        for attempt in range(3):
            s.sendto(msg, ("127.0.0.1", port))
            try:
                if s.recv(65535) == msg:
                    good += 1
                    break
            except socket.timeout:
                pass
print(good, clients * n)
"""


@pytest.mark.parametrize("fastpath", ["1", "0"], ids=["udp-in-c", "udp-in-python"])
def test_udp_forward_clients_both_ways(world: World, fastpath: str, tmp_path: Path) -> None:
    api = str(tmp_path / "api.sock")
    world.server("guest", "udpecho", "5300", "0.0.0.0")
    world.start_netstack("--api-socket", api, env={"NETSTACK_FASTPATH": fastpath})
    assert add(api, proto="udp", host_addr="127.0.0.1", host_port=15300, guest_port=5300) == (
        b'{"return":{"id":1}}'
    )
    r = world.in_host(PYTHON, "-c", UDP_CLIENTS, "15300", "4", "100", timeout=120)
    assert r.returncode == 0, r.stderr + world.log()
    assert r.stdout.split() == ["400", "400"]
    stats = world.api("get_stats")
    fast = stats["fast_path"]
    if fastpath == "1":
        # each client's first datagram is Python's (it opens the route and learns the
        # guest's MAC); the rest cross in C both ways
        assert fast["udp_forward_listeners_in_c"] == 1 and fast["udp_forward_routes_in_c"] == 4
        assert fast["udp_datagrams_to_guest_from_c"] >= 300, fast
        assert fast["udp_datagrams_to_host_from_c"] >= 300, fast
    else:
        assert fast is None
    assert stats["events"].get("udp_forward_datagrams_to_guest", 0) >= 4
    world.assert_no_internal_errors()


# a host client's UDP_SEGMENT writes to the forwarded port: each write's datagrams echoed
# back by the guest, every one checked in order
GSO_CLIENT = r"""
import random, socket, sys
port, writes = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.settimeout(5)
rng = random.Random(3)
for attempt in range(5):  # the first datagram opens the route
    s.sendto(b"warm", ("127.0.0.1", port))
    try:
        if s.recv(100) == b"warm":
            break
    except socket.timeout:
        pass
got = 0
for w in range(writes):
    seg, count = (1200, 40) if w % 2 else (1400, 30)
    blob = rng.randbytes(seg * count - 500)  # the last datagram shorter
    s.sendmsg([blob], [(socket.SOL_UDP, 103, seg.to_bytes(2, "little"))], 0,
              ("127.0.0.1", port))
    for k in range(count):
        assert s.recv(65535) == blob[k * seg:(k + 1) * seg], (w, k)
        got += 1
print(got)
"""


@pytest.mark.parametrize("fastpath", ["1", "0"], ids=["udp-in-c", "udp-in-python"])
def test_udp_forward_client_segment_writes_reach_the_guest_as_datagrams(
    world: World, fastpath: str, tmp_path: Path
) -> None:
    """The listener reads a client's GSO write as one (UDP_GRO) and the guest gets its
    datagrams, in C by the client's route and in the Python twin."""
    api = str(tmp_path / "api.sock")
    world.server("guest", "udpecho", "5301", "0.0.0.0")
    world.start_netstack("--api-socket", api, env={"NETSTACK_FASTPATH": fastpath})
    assert add(api, proto="udp", host_addr="127.0.0.1", host_port=15301, guest_port=5301) == (
        b'{"return":{"id":1}}'
    )
    writes = 20
    r = world.in_host(PYTHON, "-c", GSO_CLIENT, "15301", str(writes), timeout=60)
    assert r.returncode == 0, r.stderr + world.log()
    assert r.stdout.strip() == str(writes // 2 * (40 + 30))
    stats = world.api("get_stats")
    reads = stats["events"].get("udp_gro_reads_from_host", 0)
    if fastpath == "1":
        reads += stats["fast_path"]["udp_gro_reads_from_host"]
        assert stats["fast_path"]["udp_datagrams_to_guest_from_c"] >= 600, stats["fast_path"]
    assert reads == writes, stats
    world.assert_no_internal_errors()
