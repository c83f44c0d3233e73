"""--enable-sandbox and --enable-seccomp: after ready the process's root holds only etc
and run, only CAP_NET_BIND_SERVICE is left, a seccomp filter is on, and networking,
DNS and the API still work."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import needs_root
from tests.e2e.test_api import add
from tests.e2e.test_datapath import DHCP_CLIENT
from tests.e2e.test_ipv6 import wait_slaac
from tests.netns import NETSTACK, World


def test_sandbox_and_seccomp(world: World, tmp_path: Path) -> None:
    world.server("host", "sink", "9000", "127.0.0.1")
    world.server("host", "dns", "53", "127.0.0.1", "192.0.2.123")
    api = str(tmp_path / "api.sock")
    world.start_netstack("--enable-sandbox", "--enable-seccomp", "--api-socket", api)
    assert world.netstack is not None
    assert "WARNING: Support for seccomp is experimental" in world.log()  # as slirp4netns
    pid = world.netstack.pid
    assert sorted(os.listdir(f"/proc/{pid}/root")) == ["etc", "run"]
    status = dict(
        line.split(":\t", 1)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":\t" in line
    )
    assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 1 << 10
    assert int(status["CapBnd"], 16) == 1 << 10
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"
    r = world.guest_python(
        "import socket\ns = socket.create_connection(('10.0.2.2', 9000), timeout=5)\n"
        "s.sendall(b'hi'); s.shutdown(1); print(s.recv(100).decode())"
    )
    assert r.stdout.split()[1] == "2", r.stderr
    assert "192.0.2.123" in world.in_guest("getent", "ahostsv4", "x.test").stdout
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(api)
        s.sendall(b'{"execute":"list_hostfwd"}')
        assert s.recv(100).startswith(b'{"return":{"entries":[]}')
    assert world.netstack.poll() is None
    assert "seccomp: The following syscalls are blocked: execve" in world.log()


def test_parts_imported_on_first_use_serve_under_sandbox_and_seccomp(
    world: World, tmp_path: Path
) -> None:
    """The API server, forwarded ports, DNS, DHCP and IPv6 first used after the pivot
    and under seccomp: what they import lazily was preloaded (host.runtime.LAZY_MODULES)."""
    world.server("host", "dns", "53", "127.0.0.1", "192.0.2.123")
    world.server("guest", "sink", "8080", "0.0.0.0")
    api = str(tmp_path / "api.sock")
    world.start_netstack("-6", "--enable-sandbox", "--enable-seccomp", "--api-socket", api)
    assert world.netstack is not None
    assert sorted(os.listdir(f"/proc/{world.netstack.pid}/root")) == ["etc", "run"]
    # a forwarded port: its listener module is first needed now
    assert add(api, proto="tcp", host_addr="127.0.0.1", host_port=18080, guest_port=8080) == (
        b'{"return":{"id":1}}'
    )
    out = world.in_host(
        sys.executable,
        "-c",
        "import socket\ns = socket.create_connection(('127.0.0.1', 18080), timeout=5)\n"
        "s.sendall(b'hi'); s.shutdown(1); print(s.recv(100).decode())",
    )
    assert out.stdout.split()[1:] == ["2"], out.stderr + world.log()
    assert "192.0.2.123" in world.in_guest("getent", "ahostsv4", "x.test").stdout
    r = world.guest_python(DHCP_CLIENT)
    assert r.returncode == 0, r.stderr + world.log()
    assert r.stdout.split()[:2] == ["10.0.2.15", "10.0.2.2"]
    wait_slaac(world)
    for dst in ("fd00::2", "fd00::3"):
        r6 = world.in_guest("ping", "-6", "-c", "1", "-W", "2", dst)
        assert r6.returncode == 0, f"{dst}: {r6.stdout}"
    assert world.netstack.poll() is None, world.log()
    world.assert_no_internal_errors()


@needs_root
def test_sandbox_leaves_the_hosts_mounts_alone(tmp_path: Path) -> None:
    """Run as root straight from the host's mount namespace (not under `ip netns exec`,
    which makes every mount a slave first), the sandbox's new mount namespace starts
    as a peer of the host's: detaching its old root must not unmount the host's
    shared mounts, such as each /run/netns/NAME."""
    tag = os.getpid()
    target, witness = f"sbx-t-{tag}", f"sbx-w-{tag}"
    for name in (target, witness):
        subprocess.run(["ip", "netns", "add", name], check=True)
    r, w = os.pipe()
    proc = None
    try:
        with open(tmp_path / "log", "wb") as log:
            proc = subprocess.Popen(
                [NETSTACK, "-c", "-r", str(w), "--enable-sandbox", "--enable-seccomp",
                 "--netns-type=path", f"/run/netns/{target}", "tap0"],
                pass_fds=(w,), stdout=log, stderr=log,
            )
        os.close(w)
        w = -1
        assert select.select([r], [], [], 15)[0] and os.read(r, 1) == b"1", (
            (tmp_path / "log").read_text()
        )
        mounted = Path("/proc/self/mountinfo").read_text()
        assert f"/run/netns/{witness} " in mounted
        assert f"/run/netns/{target} " in mounted
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        for name in (target, witness):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


SECCOMP_CHILD = r"""
import os
from netstack.sandbox import seccomp
seccomp.install()
os.execv("/bin/true", ["true"])
"""


def test_seccomp_filter_kills_on_a_blocked_syscall() -> None:
    p = subprocess.run([sys.executable, "-c", SECCOMP_CHILD], capture_output=True, timeout=30)
    assert p.returncode == -signal.SIGSYS


def test_seccomp_filter_allows_ordinary_work() -> None:
    code = (
        "from netstack.sandbox import seccomp\nseccomp.install()\n"
        "import socket\ns = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
        "print('fine')"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and p.stdout.strip().endswith("fine"), p.stderr


SECCOMP_CALL = r"""
import ctypes, errno, sys, threading
from netstack.sandbox import seccomp
seccomp.install()
t = threading.Thread(target=print, args=("thread ran",))  # clone3 -> ENOSYS -> clone
t.start(); t.join()
libc = ctypes.CDLL(None, use_errno=True)
nr = seccomp.SYSCALLS[seccomp.os.uname().machine][sys.argv[1]]
args = [ctypes.c_ulong(int(a, 0)) for a in sys.argv[2:]]
args += [ctypes.c_ulong(0)] * (5 - len(args))
r = libc.syscall(ctypes.c_long(nr), *args)
print("returned", r, errno.errorcode.get(ctypes.get_errno(), ""), flush=True)
"""

CLONE_NEWUSER_NEWNET = hex(0x10000000 | 0x40000000 | 17)  # | SIGCHLD


@pytest.mark.parametrize(
    "call",
    [
        ("bpf", "0"),
        ("userfaultfd", "0"),
        ("io_uring_setup", "1", "0"),
        ("io_uring_enter", "0"),
        ("io_uring_register", "0"),
        ("keyctl", "0"),
        ("add_key", "0"),
        ("request_key", "0"),
        ("perf_event_open", "0"),
        ("mount_setattr", "0"),
        ("open_tree", "0"),
        ("move_mount", "0"),
        ("fsopen", "0"),
        ("fsconfig", "0"),
        ("fsmount", "0"),
        ("fspick", "0"),
        ("unshare", "0x10000000"),
        ("clone", CLONE_NEWUSER_NEWNET),
    ],
    ids=lambda c: c[0],
)
def test_seccomp_kills_on_each_dangerous_syscall(call: tuple[str, ...]) -> None:
    p = subprocess.run(
        [sys.executable, "-c", SECCOMP_CALL, *call], capture_output=True, text=True, timeout=30
    )
    assert p.returncode == -signal.SIGSYS, p.stdout + p.stderr
    assert "thread ran" in p.stdout  # threads (clone without namespace flags) still work


def test_seccomp_refuses_clone3_with_enosys() -> None:
    p = subprocess.run(
        [sys.executable, "-c", SECCOMP_CALL, "clone3", "0", "0"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "returned -1 ENOSYS" in p.stdout
