"""Integrity and leaks: 1 GiB each way checked by sha256; 10,000 short connections one
after another, then open files and memory back to their baseline; a bounded soak of
mixed traffic reporting memory and open files over time (NETSTACK_SOAK_SECONDS,
default 20)."""

from __future__ import annotations

import os
import subprocess
import time

from tests.e2e.test_hostile import fd_count, rss_mib
from tests.netns import PYTHON, World, wait_until

GiB_BLOCKS = 1024  # of 1 MiB

UPLOAD_NUMBERED = r"""
import hashlib, socket, struct, sys
n = int(sys.argv[1])
block = bytes(range(256)) * 4096
h = hashlib.sha256()
s = socket.create_connection(("10.0.2.2", 9000), timeout=60)
for i in range(n):
    b = struct.pack("!Q", i) + block[8:]
    h.update(b)
    s.sendall(b)
s.shutdown(socket.SHUT_WR)
reply = b""
while d := s.recv(4096):
    reply += d
digest, count = reply.decode().split()
print(digest == h.hexdigest(), count)
"""

DOWNLOAD_NUMBERED = r"""
import hashlib, socket, sys
n = int(sys.argv[1])
s = socket.create_connection(("10.0.2.2", 9001), timeout=60)
s.sendall(f"{n}\n".encode())
h = hashlib.sha256()
want = n << 20
got = bytearray()
buf = bytearray(1 << 20)
total = 0
while total < want:
    k = s.recv_into(buf, min(len(buf), want - total))
    if not k:
        break
    h.update(memoryview(buf)[:k])
    total += k
tail = b""
while d := s.recv(4096):
    tail += d
print(tail.decode() == h.hexdigest(), total)
"""


def test_one_gib_each_way(world: World) -> None:
    world.server("host", "sink", "9000", "127.0.0.1")
    world.server("host", "blocks", "9001", "127.0.0.1")
    world.start_netstack()
    t0 = time.monotonic()
    up = world.guest_python(UPLOAD_NUMBERED, str(GiB_BLOCKS), timeout=300)
    t_up = time.monotonic() - t0
    assert up.stdout.split() == ["True", str(GiB_BLOCKS << 20)], up.stderr
    t0 = time.monotonic()
    down = world.guest_python(DOWNLOAD_NUMBERED, str(GiB_BLOCKS), timeout=300)
    t_down = time.monotonic() - t0
    assert down.stdout.split() == ["True", str(GiB_BLOCKS << 20)], down.stderr
    print(
        f"\n1 GiB up in {t_up:.1f} s, down in {t_down:.1f} s (with sha256 and Python on both ends)"
    )


SEQUENTIAL = r"""
import socket, sys
n = int(sys.argv[1])
ok = 0
for i in range(n):
    s = socket.create_connection(("10.0.2.2", 7000), timeout=10)
    s.sendall(b"ping")
    if s.recv(16) == b"ping":
        ok += 1
    s.close()
print(ok)
"""


def test_ten_thousand_sequential_connections_leave_nothing_behind(world: World) -> None:
    world.server("host", "echo", "7000", "127.0.0.1")
    world.start_netstack()
    assert world.netstack is not None
    pid = world.netstack.pid
    # a first round sets the allocator's high-water mark (Python keeps freed memory
    # for reuse); the second must then add nothing
    warm = world.guest_python(SEQUENTIAL, "10000", timeout=600)
    assert warm.stdout.strip() == "10000"
    time.sleep(2.5)  # TIME_WAIT lingers 2 s (a product timer, no event to wait for)
    base_rss, base_fds = rss_mib(pid), fd_count(pid)
    t0 = time.monotonic()
    r = world.guest_python(SEQUENTIAL, "10000", timeout=600)
    elapsed = time.monotonic() - t0
    assert r.stdout.strip() == "10000", r.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and fd_count(pid) > base_fds:
        time.sleep(0.2)
    rss = rss_mib(pid)
    print(
        f"\n10,000 connections in {elapsed:.1f} s ({10000 / elapsed:.0f}/s); fds {base_fds} "
        f"-> {fd_count(pid)}; RSS {base_rss:.1f} -> {rss:.1f} MiB"
    )
    assert fd_count(pid) == base_fds
    assert rss < base_rss + 6


MIXED = r"""
import os, socket, subprocess, sys, time
end = time.monotonic() + float(sys.argv[1])
rounds = 0
while time.monotonic() < end:
    s = socket.create_connection(("10.0.2.2", 7000), timeout=10)
    data = os.urandom(200_000)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while d := s.recv(65536):
        got += d
    assert got == data
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(2)
    u.sendto(b"u" * 500, ("10.0.2.2", 5353))
    u.recvfrom(2048)
    u.close()
    socket.getaddrinfo("soak.test", 80, socket.AF_INET)
    rounds += 1
print(rounds)
"""


def test_soak_mixed_traffic(world: World) -> None:
    seconds = float(os.environ.get("NETSTACK_SOAK_SECONDS", "20"))
    world.server("host", "echo", "7000", "127.0.0.1")
    world.server("host", "udpecho", "5353", "127.0.0.1")
    world.server("host", "dns", "53", "127.0.0.1", "192.0.2.7")
    world.start_netstack("--udp-timeout=2")
    assert world.netstack is not None
    pid = world.netstack.pid
    base_rss, base_fds = rss_mib(pid), fd_count(pid)
    clients = [
        subprocess.Popen(
            ["ip", "netns", "exec", world.guest, PYTHON, "-c", MIXED, str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    pinger = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            world.guest,
            "ping",
            "-q",
            "-i",
            "0.05",
            "-w",
            str(int(seconds)),
            "10.0.2.2",
        ],
        stdout=subprocess.DEVNULL,
    )
    world.procs.extend([*clients, pinger])  # type: ignore[list-item]
    samples = []
    t0 = time.monotonic()
    while any(c.poll() is None for c in clients):
        samples.append((round(time.monotonic() - t0), round(rss_mib(pid), 1), fd_count(pid)))
        time.sleep(1)
    rounds = [int(c.communicate()[0] or 0) for c in clients]
    pinger.wait(10)
    # UDP flows expire after 2 s idle, TIME_WAIT after 2 s: their sockets go
    wait_until(lambda: fd_count(pid) == base_fds, timeout=15, what="the flows' sockets closed")
    end = (round(rss_mib(pid), 1), fd_count(pid))
    print(
        f"\nsoak {seconds:.0f} s, rounds per client {rounds}; (s, RSS MiB, fds): {samples}; "
        f"after: {end}"
    )
    assert all(r > 0 for r in rounds)
    assert max(s[1] for s in samples) < base_rss + 32
    assert end[1] == base_fds
