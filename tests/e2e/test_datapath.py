"""End to end: a guest namespace uses the network through netstack, with the kernel's
own TCP/IP and ordinary tools, against servers in the test's own namespaces."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.netns import NETSTACK as NETSTACK_BIN
from tests.netns import PYTHON as PYTHON_BIN
from tests.netns import WORLD_HOST_IP, World, wait_until

MiB = 1 << 20


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture(params=["vnet", "plain", "vnet-python", "plain-python", "vnet-pyloop"])
def frames(request: pytest.FixtureRequest) -> dict[str, str]:
    """Both frame kinds: TAP offloads on (virtio-net header) and plain frames; each with
    established flows in C (csrc/flow.c, waited on in C: csrc/loop.c) and in Python
    only, its twin; and flows in C with the loop's wait in Python (NETSTACK_CLOOP=0).
    The test ends with world.assert_mode(**mode(frames)): the variant ran as it says."""
    kind = str(request.param)
    return {
        "NETSTACK_VNET": "1" if kind.startswith("vnet") else "0",
        "NETSTACK_FASTPATH": "0" if kind.endswith("python") else "1",
        "NETSTACK_CLOOP": "0" if kind.endswith("pyloop") else "1",
    }


def mode(env: dict[str, str]) -> dict[str, bool]:
    """What a variant's environment asks for (netstack's defaults: vnet on, C on, the
    C loop on)."""
    return {
        "vnet": env.get("NETSTACK_VNET", "1") != "0",
        "flows_in_c": env.get("NETSTACK_FASTPATH", "1") != "0",
        "c_loop": env.get("NETSTACK_CLOOP", "1") != "0",
    }


def test_http_download_32mib_via_gateway(world: World, frames: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as d:
        blob = Path(d) / "blob"
        blob.write_bytes(os.urandom(32 * MiB))
        world.server("host", "http", d, "8080", "127.0.0.1")
        world.start_netstack("--api-socket", f"{d}/api.sock", env=frames)
        r = world.in_guest("sh", "-c", "curl -sS -m 60 http://10.0.2.2:8080/blob | sha256sum")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[0] == _sha256_file(blob)
        world.assert_mode(**mode(frames))


UPLOAD = r"""
import hashlib, os, socket, sys
size = int(sys.argv[1])
h = hashlib.sha256()
s = socket.create_connection(("10.0.2.2", 9000), timeout=60)
chunk = os.urandom(1 << 20)
left = size
while left:
    piece = chunk[: min(left, len(chunk))]
    s.sendall(piece)
    h.update(piece)
    left -= len(piece)
s.shutdown(socket.SHUT_WR)  # half-close: the server answers after our EOF
reply = b""
while data := s.recv(4096):
    reply += data
print(h.hexdigest(), reply.decode().strip())
"""


def test_upload_64mib_with_half_close(world: World, frames: dict[str, str], tmp_path: Path) -> None:
    world.server("host", "sink", "9000", "127.0.0.1")
    world.start_netstack("--api-socket", str(tmp_path / "api.sock"), env=frames)
    r = world.guest_python(UPLOAD, str(64 * MiB))
    assert r.returncode == 0, r.stderr
    sent_hash, server_hash, server_count = r.stdout.split()
    assert server_hash == sent_hash
    assert int(server_count) == 64 * MiB
    world.assert_mode(**mode(frames))


ECHO_MANY = r"""
import asyncio, hashlib, os, sys
N, SIZE = int(sys.argv[1]), int(sys.argv[2])
async def one(i):
    r, w = await asyncio.open_connection("10.0.2.2", 7000)
    data = os.urandom(SIZE)
    async def send():
        for off in range(0, SIZE, 16384):
            w.write(data[off:off + 16384])
            await w.drain()
        w.write_eof()
    t = asyncio.create_task(send())
    got = await r.readexactly(SIZE)
    await t
    w.close()
    return got == data
async def main():
    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(N))), 120)
    print(sum(results), N)
asyncio.run(main())
"""


def test_200_concurrent_echo_connections(world: World) -> None:
    world.server("host", "echo", "7000", "127.0.0.1")
    world.start_netstack()
    r = world.guest_python(ECHO_MANY, "200", str(200_000))
    assert r.returncode == 0, r.stderr + world.log()
    ok, total = r.stdout.split()
    assert ok == total == "200"


UDP_ECHO = r"""
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
host, port = sys.argv[1], int(sys.argv[2])
good = 0
for size in (1, 100, 1400, 1472, 4000, 30000):
    msg = os.urandom(size)
    for attempt in range(3):
        s.sendto(msg, (host, port))
        try:
            data, addr = s.recvfrom(65535)
        except socket.timeout:
            continue
        if data == msg and addr == (host, port):
            good += 1
            break
print(good)
"""


def test_udp_echo_via_gateway_including_fragmented_replies(world: World) -> None:
    world.server("host", "udpecho", "5353", "127.0.0.1")
    world.start_netstack()
    r = world.guest_python(UDP_ECHO, "10.0.2.2", "5353")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "6"


def test_dns_udp_and_tcp_from_a_resolver_on_host_loopback(world: World) -> None:
    world.server("host", "dns", "53", "127.0.0.1", "192.0.2.123")
    world.start_netstack()
    # glibc's resolver in the guest, over UDP to 10.0.2.3
    r = world.in_guest("getent", "ahostsv4", "service.test")
    assert r.returncode == 0, r.stderr + world.log()
    assert "192.0.2.123" in r.stdout
    # and over TCP
    r = world.guest_python(DNS_TCP_QUERY, "service.test")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "192.0.2.123"


DNS_TCP_QUERY = r"""
import socket, struct, sys
name = sys.argv[1]
q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
q += struct.pack("!HH", 1, 1)
s = socket.create_connection(("10.0.2.3", 53), timeout=10)
s.sendall(struct.pack("!H", len(q)) + q)
n = struct.unpack("!H", s.recv(2))[0]
data = b""
while len(data) < n:
    data += s.recv(n - len(data))
print(socket.inet_ntoa(data[-4:]))
"""


def test_dns_failover_and_resolv_conf_reload(world: World) -> None:
    world.server("host", "dns", "53", "127.0.0.1", "192.0.2.11")
    world.server("host", "dns", "53", "127.0.0.2", "192.0.2.22")
    # the first nameserver is dead: every query must still be answered by the second
    world.set_host_resolv_conf("nameserver 127.0.0.9\nnameserver 127.0.0.1\n")
    world.start_netstack()
    r = world.in_guest("getent", "ahostsv4", "a.test")
    assert r.returncode == 0, r.stderr + world.log()
    assert "192.0.2.11" in r.stdout
    world.set_host_resolv_conf("nameserver 127.0.0.2\n")
    # the stack re-checks resolv.conf at most once a second: the new server answers soon
    wait_until(
        lambda: "192.0.2.22" in world.in_guest("getent", "ahostsv4", "b.test").stdout,
        timeout=5,
        what="the reloaded resolv.conf's nameserver",
    )


def test_ping_gateway_dns_and_world_host(world: World) -> None:
    world.start_netstack()
    for addr in ("10.0.2.2", "10.0.2.3", WORLD_HOST_IP):
        r = world.in_guest("ping", "-c", "2", "-W", "2", addr)
        assert r.returncode == 0, f"{addr}: {r.stdout}{r.stderr}"
        assert " 0% packet loss" in r.stdout


def test_ping_where_icmp_sockets_are_forbidden_gets_an_error(world: World) -> None:
    world.in_host("sysctl", "-qw", "net.ipv4.ping_group_range=1 0")
    world.start_netstack()
    r = world.in_guest("ping", "-c", "1", "-W", "2", WORLD_HOST_IP)
    assert r.returncode != 0
    assert "Packet filtered" in r.stdout or "Prohibited" in r.stdout, r.stdout
    assert "ping_group_range" in world.log()


TCP_FETCH = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"hello world")
s.shutdown(socket.SHUT_WR)
data = b""
while chunk := s.recv(4096):
    data += chunk
print(data.decode().strip())
"""


def test_tcp_to_world_host(world: World) -> None:
    world.server("world", "sink", "8081", WORLD_HOST_IP)
    world.start_netstack()
    r = world.guest_python(TCP_FETCH, WORLD_HOST_IP, "8081")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == hashlib.sha256(b"hello world").hexdigest()


CONNECT = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    print("connected")
except OSError as e:
    print(type(e).__name__, e.strerror)
"""


def test_closed_port_is_refused(world: World) -> None:
    world.start_netstack()
    r = world.guest_python(CONNECT, "10.0.2.2", "1")
    assert r.stdout.strip() == "ConnectionRefusedError Connection refused"
    r = world.guest_python(CONNECT, WORLD_HOST_IP, "1")
    assert r.stdout.strip() == "ConnectionRefusedError Connection refused"


def test_disable_host_loopback_makes_gateway_unreachable(world: World) -> None:
    world.server("host", "sink", "9000", "127.0.0.1")
    world.start_netstack("--disable-host-loopback")
    r = world.guest_python(CONNECT, "10.0.2.2", "9000")
    assert r.stdout.strip() == "OSError Network is unreachable"
    # the gateway itself still answers ping
    assert world.in_guest("ping", "-c", "1", "-W", "2", "10.0.2.2").returncode == 0


def test_no_host_sockets_linger_after_flows_close(world: World) -> None:
    world.server("host", "echo", "7000", "127.0.0.1")
    world.start_netstack()  # returns once the ready pipe is closed too
    baseline = world.netstack_fds()
    r = world.guest_python(ECHO_MANY, "50", "20000")
    assert r.stdout.split()[0] == "50", r.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if world.netstack_fds() == baseline:
            break
        time.sleep(0.2)
    assert world.netstack_fds() == baseline


HOLD_OPEN = r"""
import socket, sys, time
s = socket.create_connection(("10.0.2.2", 7000), timeout=10)
for size in (70000, 5000, 300):
    s.sendall(b"r" * size)
    got = 0
    while got < size:
        got += len(s.recv(65536))
print("echoed", flush=True)
time.sleep(float(sys.argv[1]))  # the connection stays open, idle
"""


@pytest.mark.parametrize("fastpath", ["1", "0"])
def test_acknowledged_host_bytes_leave_the_socket_at_once(
    world: World, fastpath: str, tmp_path: Path
) -> None:
    """Host data stays in the host socket until the guest acknowledges it, then it is
    read away at once: only a read moves the socket's receive window, so bytes held back
    could stall the host's sender for good (a 16 KiB batching of these reads did)."""
    world.server("host", "echo", "7000", "127.0.0.1")
    env = {"NETSTACK_FASTPATH": fastpath}
    world.start_netstack("--api-socket", str(tmp_path / "api.sock"), env=env)
    client = subprocess.Popen(
        ["ip", "netns", "exec", world.guest, PYTHON_BIN, "-c", HOLD_OPEN, "10"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "echoed"
        # netstack's socket toward the echo server: nothing left unread once the guest's
        # last (maybe delayed) ACK is in, well before the idle client's 10 s are up
        deadline = time.monotonic() + 3
        while True:
            out = world.in_host("ss", "-tnH", "dst", "127.0.0.1:7000").stdout
            queues = [int(line.split()[1]) for line in out.splitlines() if line.strip()]
            if queues == [0] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert queues == [0], out
        world.assert_mode(**mode(env))
    finally:
        client.kill()
        client.wait()


def test_dhcp_lease(world: World) -> None:
    world.start_netstack(configure=False)
    world.in_guest("ip", "link", "set", "tap0", "up")
    r = world.guest_python(DHCP_CLIENT)
    assert r.returncode == 0, r.stderr + world.log()
    assert r.stdout.split() == ["10.0.2.15", "10.0.2.2", "10.0.2.3", "255.255.255.0"]


DHCP_CLIENT = r"""
from scapy.all import BOOTP, DHCP, IP, UDP, Ether, conf, get_if_hwaddr, srp1
conf.checkIPaddr = False
mac = get_if_hwaddr("tap0")
raw = bytes.fromhex(mac.replace(":", ""))
base = Ether(dst="ff:ff:ff:ff:ff:ff", src=mac) / IP(src="0.0.0.0", dst="255.255.255.255") \
    / UDP(sport=68, dport=67)
offer = srp1(base / BOOTP(chaddr=raw, xid=7) / DHCP(options=[("message-type", "discover"), "end"]),
             iface="tap0", timeout=5, verbose=0)
ip = offer[BOOTP].yiaddr
ack = srp1(base / BOOTP(chaddr=raw, xid=8) / DHCP(options=[("message-type", "request"),
           ("requested_addr", ip), ("server_id", "10.0.2.2"), "end"]),
           iface="tap0", timeout=5, verbose=0)
opts = dict(o for o in ack[DHCP].options if isinstance(o, tuple))
assert opts["message-type"] == 5
print(ack[BOOTP].yiaddr, opts["router"], opts["name_server"], opts["subnet_mask"])
"""


def test_sigterm_exits_cleanly_and_ready_is_fast(world: World) -> None:
    elapsed = world.start_netstack()
    assert elapsed < 5
    assert world.stop_netstack() == 0


def test_exits_when_the_tap_goes_away(world: World) -> None:
    world.start_netstack()
    world.in_guest("ip", "link", "del", "tap0")
    assert world.netstack is not None
    assert world.netstack.wait(10) == 0


def test_pid_target_in_its_own_user_namespace(world: World) -> None:
    """The runtimes' usual form: `netstack -c PID tap0`, the target owning a user
    namespace (as `unshare -r -n` makes one), which netstack joins to open the TAP."""
    import subprocess

    target = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net", "sleep", "120"])
    world.procs.append(target)  # type: ignore[arg-type]
    deadline = time.monotonic() + 5
    own = os.readlink("/proc/self/ns/user")
    while os.readlink(f"/proc/{target.pid}/ns/user") == own and time.monotonic() < deadline:
        time.sleep(0.05)
    world.server("host", "sink", "9000", "127.0.0.1")
    r_fd, w_fd = os.pipe()
    ns = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            world.host,
            NETSTACK_BIN,
            "-c",
            "-r",
            str(w_fd),
            str(target.pid),
            "tap0",
        ],
        pass_fds=(w_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    world.procs.append(ns)  # type: ignore[arg-type]
    os.close(w_fd)
    assert os.read(r_fd, 1) == b"1"
    os.close(r_fd)
    enter = ["nsenter", "-t", str(target.pid), "-U", "-n", "--preserve-credentials"]
    out = subprocess.run(
        [*enter, "ip", "-4", "addr", "show", "tap0"], capture_output=True, text=True, timeout=10
    )
    assert "10.0.2.100/24" in out.stdout
    got = subprocess.run(
        [*enter, PYTHON_BIN, "-c", TCP_FETCH, "10.0.2.2", "9000"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert got.stdout.split()[0] == hashlib.sha256(b"hello world").hexdigest(), got.stderr


PEER_ADDR = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
print(s.recv(100).decode().split(":")[0])
"""


@pytest.mark.parametrize("value,expect", [("192.0.2.10", "192.0.2.10"), ("up0", "192.0.2.1")])
def test_outbound_addr_binds_host_sockets(world: World, value: str, expect: str) -> None:
    import subprocess

    subprocess.run(
        ["ip", "-n", world.host, "addr", "add", "192.0.2.10/24", "dev", "up0"], check=True
    )
    world.server("world", "peer", "8090", WORLD_HOST_IP)
    world.start_netstack(f"--outbound-addr={value}")
    r = world.guest_python(PEER_ADDR, WORLD_HOST_IP, "8090")
    assert r.stdout.strip() == expect, r.stderr


def test_dns_through_an_ipv6_nameserver_written_in_a_non_canonical_form(world: World) -> None:
    """resolv.conf says 0:0:0:0:0:0:0:1; replies come from ::1: the same nameserver."""
    world.server("host", "dns", "53", "::1", "192.0.2.66")
    world.set_host_resolv_conf("nameserver 0:0:0:0:0:0:0:0001\n")
    world.start_netstack()
    r = world.in_guest("getent", "ahostsv4", "v6.test")
    assert r.returncode == 0, r.stderr + world.log()
    assert "192.0.2.66" in r.stdout


FIRST_DNS_REPLY = r"""
import socket, struct
q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + b"\x01a\x04test\x00"
q += struct.pack("!HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(q, ("10.0.2.3", 53))
data, _ = s.recvfrom(512)
print(hex(struct.unpack("!H", data[:2])[0]), socket.inet_ntoa(data[-4:]))
"""


def test_dns_replies_with_another_id_or_question_never_reach_the_guest(world: World) -> None:
    """The nameserver's socket answers each query with the wrong ID, then for the
    wrong question, then rightly: the guest's first reply is the right one."""
    world.server("host", "dnsforge", "53", "127.0.0.1", "192.0.2.77")
    world.start_netstack()
    r = world.guest_python(FIRST_DNS_REPLY)
    assert r.stdout.split() == ["0x4242", "192.0.2.77"], r.stdout + r.stderr


FIRST_DNS_REPLIES = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
for i in range(int(sys.argv[1])):
    q = struct.pack("!HHHHHH", 0x100 + i, 0x0100, 1, 0, 0, 0) + b"\x01a\x04test\x00"
    s.sendto(q + struct.pack("!HH", 1, 1), ("10.0.2.3", 53))
    data, _ = s.recvfrom(512)
    assert data[:2] == q[:2] and socket.inet_ntoa(data[-4:]) == "192.0.2.77", (i, data)
print("ok")
"""


def test_dns_queries_after_the_first_are_answered_in_c(
    world: World, frames: dict[str, str], tmp_path: Path
) -> None:
    """The guest's first query goes through Python's forwarder; the next ones through
    C (csrc/dns.c) when flows run in C: each first reply is the right one (the forger
    sends one with another ID and one for another question before it), and the
    counters add up either way."""
    n = 40
    world.server("host", "dnsforge", "53", "127.0.0.1", "192.0.2.77")
    world.start_netstack("--api-socket", str(tmp_path / "api.sock"), env=frames)
    r = world.guest_python(FIRST_DNS_REPLIES, str(n))
    assert r.stdout.strip() == "ok", r.stdout + r.stderr + world.log()
    stats = world.api("get_stats")
    assert stats["events"]["dns_queries"] == n
    assert stats["events"]["dns_answers"] == n
    assert stats["drops"]["dns_reply_mismatch"] == 2 * n
    fast = stats["fast_path"]
    if mode(frames)["flows_in_c"]:
        assert fast["dns_queries_from_c"] == n - 1, fast
        assert fast["dns_answers_from_c"] == n - 1, fast
    else:
        assert fast is None
    world.assert_mode(**mode(frames))
