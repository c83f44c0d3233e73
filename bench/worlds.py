"""One isolated world per system under test.

    dead-end ns (192.0.2.2: nothing listens, nothing routes on)
        | veth
    host ns    (servers on loopback/any; the stack runs here; default route to dead end)
        | TAP (netstack, slirp4netns, pasta) or veth (the rootful ceiling)
    guest ns   (iperf3 and the latency probe run here)

No traffic can leave: the host namespace's only route out ends in a namespace
that answers nothing. DNS: every command run in the host namespace sees a
resolv.conf of `nameserver 127.0.0.1` (`ip netns exec` bind-mounts
/etc/netns/HOST/resolv.conf over /etc/resolv.conf in the command's own mount
namespace), where bench/run starts a dnsmasq that answers the bench's name itself
and forwards nothing; each stack forwards its DNS address's queries there.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NETSTACK = str(ROOT / ".venv" / "bin" / "netstack")
NOBODY = "65534"
TUN = "/dev/net/tun"
NETNS_ETC = Path("/etc/netns")


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


class World:
    name = "?"
    latency_only = False  # measure only DNS, latency and connections (the floor)
    server_ip = ""
    server_ip6: str | None = None  # None: no IPv6 path to measure
    dns_ip: str | None = None  # the guest's DNS address (None: the system has none)
    api_path: str | None = None  # the stack's API socket (None: no port forwards here)

    def __init__(self, mtu: int, ipv6: bool = False) -> None:
        tag = secrets.token_hex(3)
        self.mtu = mtu
        self.ipv6 = ipv6
        self.host = f"bnh-{tag}"
        self.guest = f"bng-{tag}"
        self.dead = f"bnd-{tag}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stack_pid: int | None = None
        self.ready_seconds: float | None = None
        # the host namespace's resolver is the bench's, on its loopback (see above)
        (NETNS_ETC / self.host).mkdir(parents=True, exist_ok=True)
        (NETNS_ETC / self.host / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        for ns in (self.host, self.guest, self.dead):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            # a port whose connection closed first waits 60 s in TIME_WAIT; the
            # connection-rate runs make about 10,000 connections in 2 s, and three of
            # them in one namespace exhaust its 28,000 ephemeral ports (a 4,800/s rate
            # read 2,400 then 350/s): ports in TIME_WAIT are reused, as on loopback
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")
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
            "dn0",
            "netns",
            self.dead,
        )
        sh("ip", "-n", self.host, "addr", "add", "192.0.2.1/24", "dev", "up0")
        sh("ip", "-n", self.dead, "addr", "add", "192.0.2.2/24", "dev", "dn0")
        sh("ip", "-n", self.host, "link", "set", "up0", "up")
        sh("ip", "-n", self.dead, "link", "set", "dn0", "up")
        sh("ip", "-n", self.host, "route", "add", "default", "via", "192.0.2.2")

    def in_host(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.host, *cmd]

    def in_guest(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.guest, *cmd]

    def spawn_host(self, *cmd: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            self.in_host(*cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.procs.append(p)
        return p

    def start(self) -> None:
        raise NotImplementedError

    def _start_with_ready_fd(self, argv: list[str]) -> None:
        r, w = os.pipe()
        t0 = time.monotonic()
        p = subprocess.Popen(
            self.in_host(*[a.replace("{fd}", str(w)) for a in argv]),
            pass_fds=(w,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(w)
        self.procs.append(p)
        try:
            ready, _, _ = select.select([r], [], [], 20)
            if not ready or os.read(r, 1) != b"1":
                raise RuntimeError(f"{self.name} did not become ready")
        finally:
            os.close(r)
        self.ready_seconds = time.monotonic() - t0
        self.stack_pid = p.pid

    def wait_ipv6(self, timeout: float = 10) -> bool:
        """Until the guest has a usable global IPv6 address."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run(
                self.in_guest("ip", "-6", "addr", "show", "scope", "global"),
                capture_output=True,
                text=True,
            ).stdout
            if "inet6" in out and "tentative" not in out:
                return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for ns in (self.guest, self.host, self.dead):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(NETNS_ETC / self.host, ignore_errors=True)
        if self.api_path is not None and os.path.exists(self.api_path):
            os.unlink(self.api_path)

    def _api(self) -> str:
        """The API socket's path, as rootlesskit passes one (its port driver uses it)."""
        self.api_path = f"/tmp/{self.host}.api"
        return self.api_path

    def add_forward(self, host_port: int, guest_port: int, proto: str = "tcp") -> None:
        """A port forward from the host side's 127.0.0.1:host_port to the guest's
        guest_port, through the API socket (slirp4netns's add_hostfwd)."""
        assert self.api_path is not None
        request = {
            "execute": "add_hostfwd",
            "arguments": {
                "proto": proto,
                "host_addr": "127.0.0.1",
                "host_port": host_port,
                "guest_port": guest_port,
            },
        }
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(self.api_path)
            s.sendall(json.dumps(request).encode())
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        if b'"return"' not in reply:
            raise RuntimeError(f"add_hostfwd: {reply!r}")


class NetstackWorld(World):
    name = "netstack"
    server_ip = "10.0.2.2"
    server_ip6 = "fd00::2"
    dns_ip = "10.0.2.3"

    def start(self) -> None:
        # NETSTACK_PROFILE=path: netstack writes a cProfile dump there at exit
        profile = os.environ.get("NETSTACK_PROFILE")
        env = ["env", f"NETSTACK_PROFILE={profile}"] if profile else []
        self._start_with_ready_fd(
            [
                *env,
                NETSTACK,
                *(["-6"] if self.ipv6 else []),
                "-c",
                "-m",
                str(self.mtu),
                "-r",
                "{fd}",
                "--api-socket",
                self._api(),
                "--netns-type=path",
                f"/run/netns/{self.guest}",
                "tap0",
            ]
        )


class SlirpWorld(World):
    name = "slirp4netns"
    server_ip = "10.0.2.2"
    server_ip6 = "fd00::2"
    dns_ip = "10.0.2.3"

    def start(self) -> None:
        self._start_with_ready_fd(
            [
                "slirp4netns",
                *(["-6"] if self.ipv6 else []),
                "-c",
                "-m",
                str(self.mtu),
                "-r",
                "{fd}",
                "--api-socket",
                self._api(),
                "--netns-type=path",
                f"/run/netns/{self.guest}",
                "tap0",
            ]
        )


class VethWorld(World):
    """The physical ceiling: a rootful veth pair, the kernel on both ends."""

    name = "veth"
    server_ip = "10.0.42.1"
    server_ip6 = "fd42::1"
    dns_ip = "10.0.42.1"  # no stack: the resolver itself, across the veth

    def start(self) -> None:
        sh(
            "ip",
            "link",
            "add",
            "vh0",
            "netns",
            self.host,
            "mtu",
            str(self.mtu),
            "type",
            "veth",
            "peer",
            "name",
            "vg0",
            "netns",
            self.guest,
            "mtu",
            str(self.mtu),
        )
        sh("ip", "-n", self.host, "addr", "add", "10.0.42.1/24", "dev", "vh0")
        sh("ip", "-n", self.guest, "addr", "add", "10.0.42.2/24", "dev", "vg0")
        if self.ipv6:
            sh("ip", "-n", self.host, "addr", "add", "fd42::1/64", "dev", "vh0", "nodad")
            sh("ip", "-n", self.guest, "addr", "add", "fd42::2/64", "dev", "vg0", "nodad")
        sh("ip", "-n", self.host, "link", "set", "vh0", "up")
        sh("ip", "-n", self.guest, "link", "set", "vg0", "up")
        self.ready_seconds = 0.0


class LoopbackWorld(World):
    """The floor: no network at all. The "guest" is the host namespace itself and the
    server its loopback (its MTU set to the run's), so a client pays only for its own
    and the server's work: what no stack between them can beat."""

    name = "loopback"
    # throughput has no floor here (iperf3's UDP sender and receiver contend on one
    # device, and lose more than through a stack): only latency, connections and DNS
    latency_only = True
    server_ip = "127.0.0.1"
    server_ip6 = "::1"
    dns_ip = "127.0.0.1"  # the resolver itself

    def start(self) -> None:
        sh("ip", "-n", self.host, "link", "set", "lo", "mtu", str(self.mtu))
        self.ready_seconds = 0.0

    def in_guest(self, *cmd: str) -> list[str]:
        return self.in_host(*cmd)

    def wait_ipv6(self, timeout: float = 10) -> bool:
        return True  # ::1 is there from the start


class PastaWorld(World):
    """pasta will not enter a namespace root made, and drops root, so each guest-side
    command runs under its own `pasta --config-net -- CMD` as nobody, in the host
    namespace; the gateway (the dead end's address) is mapped to host loopback. DNS:
    pasta's forwarder, `--dns-forward 192.0.2.3` (pasta answers ARP for any address)."""

    name = "pasta"
    server_ip = "192.0.2.2"
    dns_ip = "192.0.2.3"

    def start(self) -> None:
        self.ready_seconds = None
        # pasta runs as nobody: /dev/net/tun must be 0666, as distributions ship it
        self._tun_mode = stat.S_IMODE(os.stat(TUN).st_mode)
        os.chmod(TUN, 0o666)

    def close(self) -> None:
        super().close()
        if getattr(self, "_tun_mode", None) is not None:
            os.chmod(TUN, self._tun_mode)

    def in_guest(self, *cmd: str) -> list[str]:
        return self.in_host(
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "pasta",
            "--config-net",
            "-q",
            "-m",
            str(self.mtu),
            "--dns-forward",
            self.dns_ip or "",
            "--",
            *cmd,
        )


SYSTEMS: dict[str, type[World]] = {
    "netstack": NetstackWorld,
    "slirp4netns": SlirpWorld,
    "pasta": PastaWorld,
    "veth": VethWorld,
    "loopback": LoopbackWorld,
}
