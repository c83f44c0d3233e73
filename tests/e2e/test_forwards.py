"""Port forwards' connections (add_hostfwd), as the C path opens them (csrc/
flow_forward.c: accepted, SYN to the guest, its SYN-ACK taken, the connection carried
and closed in C, Python never told) and as its Python twin does (NETSTACK_FWD_C=0):
many short ones from the host side's loopback with the guest's server closing first,
and with the client closing first (our FIN first: TIME_WAIT in C). The guest's kernel
TCP on a real TAP, real host sockets in the host namespace."""

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
