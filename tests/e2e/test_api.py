"""The API socket and port forwarding, end to end: slirp4netns's replies byte for
byte, our strictness where it is sloppy, and forwarded traffic in both directions."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from netstack.cli.socket_remover import WATCHER_NAME
from tests.e2e.test_datapath import HOLD_OPEN
from tests.helpers.procs import children, process_gone
from tests.netns import PYTHON, World

MiB = 1 << 20


@pytest.fixture
def api(world: World, tmp_path: Path) -> str:
    path = str(tmp_path / "api.sock")
    world.start_netstack("--api-socket", path)
    return path


def call(path: str, payload: bytes, shut: bool = True) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(payload)
        if shut:
            s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def add(path: str, **args: object) -> bytes:
    return call(path, json.dumps({"execute": "add_hostfwd", "arguments": args}).encode())


def in_host_ns(world: World, code: str, *args: str, timeout: float = 120) -> str:
    r = world.in_host(PYTHON, "-c", code, *args, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_socket_mode_is_0600(api: str) -> None:
    assert stat.S_IMODE(os.stat(api).st_mode) == 0o600


@pytest.mark.parametrize(
    "request_bytes,reply",
    [
        (b"badjson", b'{"error":{"desc":"bad request: cannot parse JSON"}}'),
        (b'{"unexpectedjson":42}', b'{"error":{"desc":"bad request: no execute found"}}'),
        (b"[1,2]", b'{"error":{"desc":"bad request: json_object() failed"}}'),
        (b'{"execute":"bad"}', b'{"error":{"desc":"bad request: unknown execute"}}'),
        (
            b'{"execute":"add_hostfwd","arguments":{"proto":"bad"}}',
            b'{"error":{"desc":"bad request: add_hostfwd: bad arguments.proto"}}',
        ),
        (
            b'{"execute":"add_hostfwd","arguments":{"host_port":8080,"guest_port":80}}',
            b'{"error":{"desc":"bad request: add_hostfwd: bad arguments.proto"}}',
        ),
        (
            b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"::",'
            b'"host_port":8080,"guest_port":80}}',
            b'{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_addr"}}',
        ),
        (
            b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":70000,'
            b'"guest_port":80}}',
            b'{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_port"}}',
        ),
        (
            b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":"80",'
            b'"guest_port":80}}',
            b'{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_port"}}',
        ),
        (
            b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":8080,'
            b'"guest_addr":"192.168.1.1","guest_port":80}}',
            b'{"error":{"desc":"bad request: add_hostfwd: bad arguments.guest_addr"}}',
        ),
        (
            b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":8080,'
            b'"guest_port":0}}',
            b'{"error":{"desc":"bad request: add_hostfwd: bad arguments.guest_port"}}',
        ),
        (
            b'{"execute":"remove_hostfwd","arguments":{"id":42}}',
            b'{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}',
        ),
        (b"x" * 5000, b'{"error":{"desc":"bad request: too large message"}}'),
    ],
)
def test_errors_are_slirp4netns_strings(api: str, request_bytes: bytes, reply: bytes) -> None:
    assert call(api, request_bytes) == reply


def test_add_list_remove(api: str) -> None:
    assert add(api, proto="tcp", host_port=18080, guest_port=80) == b'{"return":{"id":1}}'
    assert (
        add(api, proto="udp", host_addr="127.0.0.1", host_port=18080, guest_port=53)
        == b'{"return":{"id":2}}'
    )
    # the same host port and protocol again: the bind fails
    assert (
        add(api, proto="tcp", host_addr="127.0.0.1", host_port=18080, guest_port=81)
        == b'{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}'
    )
    listed = json.loads(call(api, b'{"execute":"list_hostfwd"}'))
    first = {
        "id": 1,
        "proto": "tcp",
        "host_addr": "0.0.0.0",
        "host_port": 18080,
        "guest_addr": "10.0.2.100",
        "guest_port": 80,
    }
    assert listed["entries"][0] == first and listed["return"]["entries"][0] == first
    assert list(listed["entries"][0]) == list(first)  # slirp4netns's key order
    assert call(api, b'{"execute":"remove_hostfwd","arguments":{"id":1}}') == b'{"return":{}}'
    # ids are never reused
    assert add(api, proto="tcp", host_port=18081, guest_port=80) == b'{"return":{"id":3}}'


def test_request_split_across_writes_and_without_eof(api: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(api)
        s.sendall(b'{"execute":')
        time.sleep(0.1)
        s.sendall(b'"list_hostfwd"}\n')  # podman and rootlesskit end with a newline
        assert s.recv(4096).startswith(b'{"return":{"entries":[]}')


def test_silent_clients_do_not_stall_the_data_path(world: World, api: str) -> None:
    idle = []
    for _ in range(10):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(api)
        idle.append(s)
    try:
        t0 = time.monotonic()
        r = world.in_guest("ping", "-c", "3", "-i", "0.2", "-W", "1", "10.0.2.2")
        assert r.returncode == 0 and time.monotonic() - t0 < 3
        assert json.loads(call(api, b'{"execute":"get_stats"}'))["return"]["flows"]["tcp"] == 0
    finally:
        for s in idle:
            s.close()


def test_concurrent_clients(api: str) -> None:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda _: call(api, b'{"execute":"list_hostfwd"}'), range(64)))
    assert all(r.startswith(b'{"return":{"entries":[]}') for r in replies)


def test_tcp_forward_carries_data_both_ways_and_shows_the_client_address(
    world: World, api: str
) -> None:
    world.server("guest", "echo", "7000", "0.0.0.0")
    assert (
        add(api, proto="tcp", host_addr="127.0.0.1", host_port=17000, guest_port=7000)
        == b'{"return":{"id":1}}'
    )
    out = in_host_ns(world, ECHO_CLIENT, "127.0.0.1", "17000", str(32 * MiB), "32")
    assert out.split() == ["ok", "32"]  # 32 concurrent clients, 1 MiB each way each
    # the connections were accepted and opened in C (csrc/flow_forward.c) once the
    # first told it the guest's MAC, or handed to C once established (csrc/flow.c);
    # they ran there until they half-closed, then in Python
    fast = json.loads(call(api, b'{"execute":"get_stats"}'))["return"]["fast_path"]
    assert fast["forwards_in_c"] > 0
    assert fast["holds"] + fast["forwards_in_c"] >= 32 and fast["flows_held"] == 0
    assert fast["frames_from_guest_in_c"] > 200 and fast["frames_to_guest_from_c"] > 200
    # from the world host: the guest sees the real client address
    assert add(api, proto="tcp", host_port=17001, guest_port=9000) == b'{"return":{"id":2}}'
    world.server("guest", "peer", "9000", "0.0.0.0")
    r = world.in_world(PYTHON, "-c", PEER_CLIENT, "192.0.2.1", "17001")
    assert r.stdout.strip().startswith("192.0.2.2:"), r.stdout + r.stderr
    r = world.in_host(PYTHON, "-c", PEER_CLIENT, "127.0.0.1", "17001")
    assert r.stdout.strip().startswith("10.0.2.2:"), r.stdout + r.stderr


def test_list_connections_shows_an_open_flow_with_its_byte_counts(world: World, api: str) -> None:
    world.server("host", "echo", "7000", "127.0.0.1")
    client = subprocess.Popen(
        ["ip", "netns", "exec", world.guest, PYTHON, "-c", HOLD_OPEN, "30"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "echoed"
        conns = json.loads(call(api, b'{"execute":"list_connections"}'))["return"]["connections"]
        (tcp,) = [c for c in conns if c["proto"] == "tcp"]
        assert (tcp["state"], tcp["direction"], tcp["remote"]) == (
            "established",
            "outbound",
            "10.0.2.2:7000",
        )
        assert tcp["guest"].startswith("10.0.2.100:")
        echoed = 70000 + 5000 + 300
        assert (tcp["bytes_from_guest"], tcp["bytes_to_guest"]) == (echoed, echoed)
        assert 0 <= tcp["age_seconds"] < 30
    finally:
        client.kill()
        client.wait()


def test_tcp_forward_to_a_closed_guest_port_closes_the_client(world: World, api: str) -> None:
    assert (
        add(api, proto="tcp", host_addr="127.0.0.1", host_port=17002, guest_port=7999)
        == b'{"return":{"id":1}}'
    )
    out = in_host_ns(world, CLOSED_CLIENT, "127.0.0.1", "17002")
    assert out.strip() == "closed"


def test_udp_forward_keeps_a_route_per_client(world: World, api: str) -> None:
    world.server("guest", "udpecho", "5300", "0.0.0.0")
    assert (
        add(api, proto="udp", host_addr="127.0.0.1", host_port=15300, guest_port=5300)
        == b'{"return":{"id":1}}'
    )
    out = in_host_ns(world, UDP_CLIENTS, "127.0.0.1", "15300", "20")
    assert out.strip() == "20"
    # each route's answers went from C (csrc/udp.c), once Python had sent the guest its
    # first datagram (and so knew the guest's MAC)
    fast = json.loads(call(api, b'{"execute":"get_stats"}'))["return"]["fast_path"]
    assert fast["udp_forward_routes_in_c"] == 20
    assert fast["udp_datagrams_to_host_from_c"] >= 20


def test_remove_closes_the_listener(world: World, api: str) -> None:
    add(api, proto="tcp", host_addr="127.0.0.1", host_port=17003, guest_port=80)
    assert "open" in in_host_ns(world, PROBE, "127.0.0.1", "17003")
    call(api, b'{"execute":"remove_hostfwd","arguments":{"id":1}}')
    assert "refused" in in_host_ns(world, PROBE, "127.0.0.1", "17003")


def test_netstackctl_prints_tables(world: World, api: str) -> None:
    ctl = str(Path(PYTHON).parent / "netstackctl")
    r = subprocess.run(
        [ctl, "-a", api, "add", "tcp", "127.0.0.1:17004", "80"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert r.stdout.strip() == "1", r.stderr
    r = subprocess.run([ctl, "-a", api, "forwards"], capture_output=True, text=True, timeout=10)
    assert "17004" in r.stdout and "10.0.2.100" in r.stdout
    world.in_guest("ping", "-c", "1", "10.0.2.2")
    r = subprocess.run([ctl, "-a", api, "stats"], capture_output=True, text=True, timeout=10)
    assert "icmp_echo_answered" in r.stdout
    assert "frames_from_guest_in_c" in r.stdout  # the C flow path's own table
    r = subprocess.run(
        [ctl, "-a", api, "--json", "remove", "9"], capture_output=True, text=True, timeout=10
    )
    assert r.returncode == 1 and "bad arguments.id" in r.stdout


def test_sigterm_removes_the_api_socket(world: World, api: str) -> None:
    assert world.stop_netstack() == 0
    assert not os.path.exists(api)


@pytest.mark.parametrize(
    ("sandbox", "end"),
    [(True, "exit-fd"), (True, "SIGKILL"), (False, "SIGKILL")],
)
def test_the_api_socket_is_removed_however_the_stack_ends(
    world: World, tmp_path: Path, sandbox: bool, end: str
) -> None:
    """The sandbox hides the socket's folder and SIGKILL gives no chance to clean up:
    the watcher forked before the sandbox removes the file anyway."""
    path = str(tmp_path / "api.sock")
    exit_r, exit_w = os.pipe()
    try:
        world.start_netstack(
            "--api-socket",
            path,
            "-e",
            str(exit_r),
            *(["--enable-sandbox", "--enable-seccomp"] if sandbox else []),
            extra_fds=(exit_r,),
        )
    finally:
        os.close(exit_r)
    assert world.netstack is not None
    (watcher,) = children(world.netstack.pid, WATCHER_NAME)
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    if end == "exit-fd":
        os.close(exit_w)  # what conmon's exit does for podman
        assert world.netstack.wait(10) == 0
    else:
        world.netstack.kill()  # what rootlesskit does
        world.netstack.wait(10)
        os.close(exit_w)
    deadline = time.monotonic() + 10
    while os.path.exists(path) or not process_gone(watcher):
        assert time.monotonic() < deadline, f"socket {os.path.exists(path)}, watcher {watcher}"
        time.sleep(0.05)


ECHO_CLIENT = r"""
import hashlib, os, socket, sys, threading
host, port, size, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ok = 0
lock = threading.Lock()
def one(i):
    global ok
    per = size // n
    data = os.urandom(per)
    s = socket.create_connection((host, port), timeout=60)
    def send():
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=send); t.start()
    got = bytearray()
    while chunk := s.recv(1 << 20):
        got += chunk
    t.join()
    if got == data:
        with lock:
            ok += 1
threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print("ok", ok)
"""

PEER_CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
print(s.recv(100).decode())
"""

CLOSED_CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.settimeout(10)
try:
    print("closed" if s.recv(10) == b"" else "data")
except ConnectionResetError:
    print("closed")
"""

UDP_CLIENTS = r"""
import os, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
good = 0
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    msg = os.urandom(100 + i)
    for attempt in range(3):
        s.sendto(msg, (host, port))
        try:
            if s.recvfrom(65535)[0] == msg:
                good += 1
                break
        except socket.timeout:
            pass
print(good)
"""

PROBE = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("open")
except ConnectionRefusedError:
    print("refused")
"""


HOLD_V6_FLOWS = r"""
import socket, sys, time
t = socket.create_connection(("fd00::2", 7000), timeout=10)
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.sendto(b"x", ("fd00::2", 5353))
t.sendall(b"hi")
assert t.recv(2) == b"hi"
print("ready", flush=True)
sys.stdin.readline()
"""


def test_every_reply_copes_with_ipv6_flows(world: World, tmp_path: Path) -> None:
    world.server("host", "echo", "7000", "::1")
    world.server("host", "udpecho", "5353", "::1")
    api = str(tmp_path / "api.sock")
    world.start_netstack("-6", "--api-socket", api)
    from tests.e2e.test_ipv6 import wait_slaac

    wait_slaac(world)
    holder = subprocess.Popen(
        ["ip", "netns", "exec", world.guest, PYTHON, "-c", HOLD_V6_FLOWS],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        conns = json.loads(call(api, b'{"execute":"list_connections"}'))["return"]["connections"]
        by_proto = {c["proto"]: c for c in conns}
        assert by_proto["tcp"]["remote"] == "[fd00::2]:7000"
        assert by_proto["tcp"]["guest"].startswith("[fd00::")
        assert by_proto["udp"]["guest"].startswith("[fd00::")
        for execute in ("get_stats", "list_hostfwd"):
            assert "return" in json.loads(call(api, json.dumps({"execute": execute}).encode()))
    finally:
        holder.communicate("\n", timeout=10)


@pytest.mark.parametrize("depth", [100, 1000, 2000])
def test_deeply_nested_json_gets_a_json_error(api: str, depth: int) -> None:
    for opener, closer in ((b"[", b"]"), (b'{"a":', b"}")):
        reply = json.loads(call(api, opener * depth + closer * depth))
        assert "error" in reply, reply
    reply = json.loads(call(api, b'{"execute":' + b"[" * 1500 + b"]" * 1500 + b"}"))
    assert "error" in reply, reply
