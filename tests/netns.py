"""Test worlds built from network namespaces, so no test traffic leaves the machine.

    world ns  (192.0.2.2, a "remote" test host)
       | veth 192.0.2.0/24
    host ns   (netstack runs here: loopback services, its own resolv.conf)
       | TAP tap0, owned by netstack
    guest ns  (the container: the kernel's own TCP/IP, curl, ping, python)

The host namespace has no route but the world link and loopback: a guest packet to
any other address fails there with "network unreachable" and goes nowhere.
Tests may use `ip` to build the world; the product itself does not.
"""

from __future__ import annotations

import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netstack.cli.ctl import request

ROOT = Path(__file__).resolve().parent.parent
NETSTACK = str(ROOT / ".venv" / "bin" / "netstack")
PYTHON = sys.executable
SERVERS = str(ROOT / "tests" / "helpers" / "servers.py")

WORLD_HOST_IP = "192.0.2.2"
HOST_UPLINK_IP = "192.0.2.1"
WORLD_HOST_IP6 = "2001:db8::2"  # documentation prefix, only on the test's own veth
HOST_UPLINK_IP6 = "2001:db8::1"

# Developer knobs netstack reads from its environment. A test that does not set one
# gets netstack's default, whatever the shell running pytest exported.
KNOBS = (
    "NETSTACK_FASTPATH",
    "NETSTACK_VNET",
    "NETSTACK_DELACK_MS",
    "NETSTACK_CLOOP",
    "NETSTACK_SPIN_US",
    "NETSTACK_DNS_FAST",
    "NETSTACK_SYN_C",
    "NETSTACK_FWD_C",
)
IFF_VNET_HDR = 0x4000  # linux/if_tun.h, as /sys/class/net/<tap>/tun_flags shows it
# What netstack logs when it catches a bug (dispatcher, host event handlers)
INTERNAL_ERROR_LOGS = ("internal error", "handler failed", "client failed", "'internal_error'")


def wait_until(
    condition: Callable[[], object], timeout: float = 10, what: str = "condition"
) -> None:
    """Poll until condition() is true (every 20 ms); fail after timeout seconds. The
    way tests wait: never a bare sleep standing in for an event."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def sh(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout)


def api_request(path: str, execute: str, arguments: dict[str, Any] | None = None) -> Any:
    """One request to a JSON API socket (netstack's or netstackd's), as netstackctl
    sends it; returns the reply's "return" (asserting there is one)."""
    reply = request(path, execute, arguments or None)
    assert "return" in reply, reply
    return reply["return"]


class World:
    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.host = f"nsh-{tag}"
        self.guest = f"nsg-{tag}"
        self.world = f"nsw-{tag}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.netstack: subprocess.Popen[bytes] | None = None
        self.netstack_log = Path(f"/tmp/netstack-{tag}.log")
        self.etc_dirs = [Path("/etc/netns") / n for n in (self.host, self.guest)]
        self.api_sockets: list[str] = []  # every --api-socket netstack was given
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        for ns in (self.host, self.guest, self.world):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh(
            "ip",
            "link",
            "add",
            "up0",
            "netns",
            self.host,
            "type",
            "veth",
            "peer",
            "name",
            "wo0",
            "netns",
            self.world,
        )
        sh("ip", "-n", self.host, "addr", "add", f"{HOST_UPLINK_IP}/24", "dev", "up0")
        sh("ip", "-n", self.world, "addr", "add", f"{WORLD_HOST_IP}/24", "dev", "wo0")
        sh("ip", "-n", self.host, "addr", "add", f"{HOST_UPLINK_IP6}/64", "dev", "up0", "nodad")
        sh("ip", "-n", self.world, "addr", "add", f"{WORLD_HOST_IP6}/64", "dev", "wo0", "nodad")
        sh("ip", "-n", self.host, "link", "set", "up0", "up")
        sh("ip", "-n", self.world, "link", "set", "wo0", "up")
        self.in_host("sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
        for d in self.etc_dirs:
            d.mkdir(parents=True, exist_ok=True)
        self.set_host_resolv_conf("nameserver 127.0.0.1\n")
        (self.etc_dirs[1] / "resolv.conf").write_text("nameserver 10.0.2.3\n")

    def set_host_resolv_conf(self, text: str) -> None:
        """Rewrite in place: `ip netns exec` bind-mounted this very file."""
        path = self.etc_dirs[0] / "resolv.conf"
        with open(path, "a+") as f:
            f.seek(0)
            f.truncate()
            f.write(text)

    # ------------------------------------------------------------- processes
    def _exec(self, ns: str, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *cmd]

    def in_host(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._exec(self.host, *cmd), capture_output=True, text=True, timeout=timeout
        )

    def in_guest(
        self, *cmd: str, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._exec(self.guest, *cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )

    def in_world(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._exec(self.world, *cmd), capture_output=True, text=True, timeout=timeout
        )

    def guest_python(
        self, code: str, *args: str, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self.in_guest(PYTHON, "-c", code, *args, timeout=timeout)

    def spawn(self, ns: str, *cmd: str, wait_ready: bool = False) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            self._exec(getattr(self, ns), *cmd), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        self.procs.append(p)
        if wait_ready:
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.strip() == b"ready", f"{cmd} did not start: {line!r}"
        return p

    def server(self, ns: str, kind: str, *args: str) -> subprocess.Popen[bytes]:
        return self.spawn(ns, PYTHON, SERVERS, kind, *args, wait_ready=True)

    def start_netstack(
        self,
        *extra: str,
        env: dict[str, str] | None = None,
        configure: bool = True,
        timeout: float = 15,
        extra_fds: tuple[int, ...] = (),
    ) -> float:
        """Start netstack against the guest; returns seconds from launch to ready."""
        r, w = os.pipe()
        args = [
            NETSTACK,
            *(["-c"] if configure else []),
            "-r",
            str(w),
            *extra,
            "--netns-type=path",
            f"/run/netns/{self.guest}",
            "tap0",
        ]
        for i, a in enumerate(extra):
            if a == "--api-socket" and i + 1 < len(extra):
                self.api_sockets.append(extra[i + 1])
            elif a.startswith("--api-socket="):
                self.api_sockets.append(a.split("=", 1)[1])
        clean_env = {k: v for k, v in os.environ.items() if k not in KNOBS}
        readies = self._ready_lines()
        t0 = time.monotonic()
        with open(self.netstack_log, "ab") as log:
            self.netstack = subprocess.Popen(
                self._exec(self.host, *args),
                pass_fds=(w, *extra_fds),
                stdout=log,
                stderr=log,
                env={**clean_env, **(env or {})},
            )
        self.procs.append(self.netstack)
        os.close(w)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                ready, _, _ = select.select([r], [], [], 0.2)
                if ready:
                    data = os.read(r, 16)
                    assert data == b"1", f"ready-fd gave {data!r}; log:\n{self.log()}"
                    took = time.monotonic() - t0
                    # netstack closes the pipe just after the byte, then logs its ready
                    # line (importing logging then: netstack/log.py); once it has, its
                    # open files are what it runs with (a baseline for fd counts)
                    if select.select([r], [], [], 2)[0]:
                        os.read(r, 16)
                    settle = time.monotonic() + 2
                    while self._ready_lines() == readies and time.monotonic() < settle:
                        time.sleep(0.005)
                    return took
                if self.netstack.poll() is not None:
                    raise AssertionError(
                        f"netstack exited {self.netstack.returncode}:\n{self.log()}"
                    )
            raise AssertionError(f"netstack not ready in {timeout}s:\n{self.log()}")
        finally:
            os.close(r)

    def _ready_lines(self) -> int:
        try:
            return Path(self.netstack_log).read_bytes().count(b"netstack: ready: ")
        except FileNotFoundError:
            return 0

    def api(self, execute: str, path: str | None = None) -> Any:
        """One API command to the running netstack; returns the reply's "return"."""
        path = path or self.api_sockets[-1]
        return api_request(path, execute)

    def assert_mode(self, vnet: bool, flows_in_c: bool, c_loop: bool | None = None) -> None:
        """The variant ran as it says: the TAP has the virtio-net header (or not, as the
        kernel reports it), established flows ran in C (or C handled no frame) and, if
        c_loop is given, the loop waited in C (csrc/loop.c) or not."""
        r = self.in_guest("cat", "/sys/class/net/tap0/tun_flags")
        assert r.returncode == 0, r.stderr
        assert bool(int(r.stdout, 16) & IFF_VNET_HDR) is vnet, f"tun_flags {r.stdout}"
        fast = self.api("get_stats")["fast_path"]
        if flows_in_c:
            assert fast is not None, "the C flow path is off"
            assert fast["frames_from_guest_in_c"] > 0, fast
            assert fast["frames_to_guest_from_c"] > 0, fast
            if c_loop is not None:
                assert (fast["loop_waits"] > 0) is c_loop, fast
        else:
            assert fast is None or (
                fast["frames_from_guest_in_c"] == 0 and fast["frames_to_guest_from_c"] == 0
            ), fast

    def assert_no_internal_errors(self) -> None:
        """netstack caught no bug: its API stats (while it runs) and its log say so."""
        if self.netstack is None:
            return
        if (
            self.netstack.poll() is None
            and self.api_sockets
            and os.path.exists(self.api_sockets[-1])
        ):
            drops = self.api("get_stats")["drops"]
            assert drops.get("internal_error", 0) == 0, f"{drops}\n{self.log()}"
        try:
            text = self.netstack_log.read_text(errors="replace")
        except OSError:
            return
        bad = [line for line in text.splitlines() if any(m in line for m in INTERNAL_ERROR_LOGS)]
        assert not bad, "netstack caught internal errors:\n" + text[-4000:]

    def log(self) -> str:
        try:
            return self.netstack_log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def netstack_fds(self) -> dict[str, int]:
        """Counts of netstack's open fds by kind (socket, anon_inode, ...)."""
        assert self.netstack is not None
        kinds: dict[str, int] = {}
        fd_dir = Path(f"/proc/{self.netstack.pid}/fd")
        for entry in fd_dir.iterdir():
            try:
                target = os.readlink(entry)
            except OSError:
                continue
            kind = target.split(":", 1)[0] if ":" in target else "file"
            kinds[kind] = kinds.get(kind, 0) + 1
        return kinds

    def stop_netstack(self, timeout: float = 10) -> int:
        assert self.netstack is not None
        if self.netstack.poll() is None:
            self.netstack.send_signal(signal.SIGTERM)
        return self.netstack.wait(timeout)

    # --------------------------------------------------------------- cleanup
    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
            if p.stdout is not None:
                p.stdout.close()
        for ns in (self.guest, self.host, self.world):
            sh("ip", "netns", "del", ns, check=False)
        for d in self.etc_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.netstack_log.unlink(missing_ok=True)
