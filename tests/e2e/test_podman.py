"""A real client: Debian's rootless podman 4.3.1 (with runc), run as an unprivileged user,
launches netstack exactly as it launches slirp4netns (`network_cmd_path`).

Containers run from a busybox root filesystem (`--rootfs`: no registry is reachable);
pods use podman's own pause image, built locally from catatonit. podman, its
containers and netstack all run in the test's host namespace (see tests/netns.py):
the servers are on its loopback and in the test's world namespace (192.0.2.2), and
nothing else is reachable. One podman storage serves the whole file.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netstack.cli.socket_remover import WATCHER_NAME
from tests.helpers.podman import RootlessPodman
from tests.helpers.procs import children, process_gone
from tests.helpers.rootfs import BUSYBOX, make_busybox_rootfs
from tests.helpers.unprivileged import chown_tree
from tests.netns import HOST_UPLINK_IP, NETSTACK, WORLD_HOST_IP, WORLD_HOST_IP6, World

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0
    or shutil.which("podman") is None
    or shutil.which("runc") is None
    or not os.path.exists(BUSYBOX),
    reason="needs root, podman, runc and busybox-static (scripts/setup.sh installs them)",
)

BLOB_SIZE = 8 << 20
HTTP_PORT = 18180  # world: files, IPv4 and IPv6
SINK_PORT = 18181  # world: uploads, answered with their sha256
LOOP_PORT = 18182  # host loopback: files
PEER_PORT = 18183  # world, IPv4 and IPv6: tells the client its address
OUTBOUND_IP = "192.0.2.11"  # second addresses of the host namespace, for outbound_addr*
OUTBOUND_IP6 = "2001:db8::11"

# busybox httpd runs it for /cgi-bin/peer: the client address the container sees
PEER_CGI = '#!/bin/sh\necho "Content-Type: text/plain"\necho\necho "$REMOTE_ADDR"\n'


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class Env:
    def __init__(self, world: World, podman: RootlessPodman, rootfs: Path, blob: bytes) -> None:
        self.world = world
        self.podman = podman
        self.rootfs = rootfs
        self.blob_sha = hashlib.sha256(blob).hexdigest()

    def until(self, what: str, ok: Callable[[], bool], timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def netstack_for(self, needle: str) -> tuple[int, str]:
        found: list[tuple[int, str]] = []

        def seen() -> bool:
            found[:] = [
                (pid, cmdline)
                for pid, cmdline in self.podman.processes(needle)
                if NETSTACK in cmdline and comm(pid) == "netstack"  # not its socket watcher
            ]
            return len(found) == 1

        self.until(f"one netstack with {needle}", seen)
        return found[0]

    def curl(self, ns: str, url: str) -> str:
        r = getattr(self.world, f"in_{ns}")("curl", "-sS", "-m", "10", url)
        assert r.returncode == 0, f"{url}: {r.stderr}"
        return str(r.stdout)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    world = World()
    podman: RootlessPodman | None = None
    try:
        # not pytest's tmp (root's only); short: podman's API socket path must fit in 108
        base = Path(f"/tmp/nspm-{os.getpid()}")
        podman = RootlessPodman(f"/run/netns/{world.host}", base, NETSTACK)
        rootfs = make_busybox_rootfs(base / "rootfs")
        (rootfs / "www" / "cgi-bin").mkdir(parents=True)
        (rootfs / "www" / "cgi-bin" / "peer").write_text(PEER_CGI)
        os.chmod(rootfs / "www" / "cgi-bin" / "peer", 0o755)
        files = base / "files"
        files.mkdir()
        blob = os.urandom(BLOB_SIZE)
        (files / "blob").write_bytes(blob)
        (files / "hello.txt").write_text("hello from the host's loopback\n")
        chown_tree(base, podman.user.pw_uid, podman.user.pw_gid)
        world.server("world", "http", str(files), str(HTTP_PORT), "::")
        world.server("world", "sink", str(SINK_PORT), WORLD_HOST_IP)
        world.server("host", "http", str(files), str(LOOP_PORT), "127.0.0.1")
        world.server("world", "peer", str(PEER_PORT), WORLD_HOST_IP)
        world.server("world", "peer", str(PEER_PORT), WORLD_HOST_IP6)
        yield Env(world, podman, rootfs, blob)
    finally:
        if podman is not None:
            podman.close()
        world.close()


def test_podman_info_names_netstack(env: Env) -> None:
    r = env.podman(
        "info", "--format", "{{.Host.Slirp4NetNS.Executable}}|{{.Host.Slirp4NetNS.Version}}"
    )
    executable, version = r.stdout.strip().split("|", 1)
    assert executable == NETSTACK
    assert version.startswith("netstack version") and "SLIRP_CONFIG_VERSION_MAX: 4" in version


# Run in the container: a download and an upload (both checked by sha256), IPv6, and
# the host's loopback (reachable as the gateway only with allow_host_loopback=true).
TRAFFIC = f"""
wget -q -O /tmp/blob http://{WORLD_HOST_IP}:{HTTP_PORT}/blob && sha256sum /tmp/blob
head -c 3000000 /dev/urandom > /tmp/up
echo "up $(sha256sum < /tmp/up)"
echo "sink $(nc {WORLD_HOST_IP} {SINK_PORT} < /tmp/up)"
for i in $(seq 100); do ip -6 addr show | grep -q 'inet6 fd00:' && break; sleep 0.1; done
echo "v6 $(wget -q -O - http://[{WORLD_HOST_IP6}]:{HTTP_PORT}/blob | sha256sum)"
echo "loopback $(timeout 10 wget -q -O - http://$1:{LOOP_PORT}/hello.txt 2>&1)"
"""


def check_traffic(env: Env, out: str, host_loopback: bool) -> None:
    assert f"{env.blob_sha}  /tmp/blob" in out, out
    up = re.search(r"^up (\w+)", out, re.M)
    sink = re.search(r"^sink (\w+) (\d+)", out, re.M)
    assert up and sink, out
    assert sink.group(1) == up.group(1) and sink.group(2) == "3000000"
    assert f"v6 {env.blob_sha}" in out, out
    loopback = re.search(r"^loopback (.*)$", out, re.M)
    assert loopback, out
    if host_loopback:
        assert loopback.group(1) == "hello from the host's loopback"
    else:
        assert "Network is unreachable" in loopback.group(1)


def test_our_port_handler_shows_the_client_address_and_stop_leaves_nothing(env: Env) -> None:
    """port_handler=slirp4netns: podman publishes through netstack's API socket, and the
    server in the container sees who connected. Then `podman stop`: the exit fd fires,
    netstack exits, and its API socket, its watcher and the netns file go too."""
    p = env.podman
    p(
        "run", "-d", "--name", "web-ours",
        "--network", "slirp4netns:port_handler=slirp4netns",
        "-p", "18090:8080", "-p", "[::1]:18091:8080",
        "--rootfs", str(env.rootfs), "httpd", "-f", "-p", "8080", "-h", "/www",
    )  # fmt: skip
    pid, cmdline = env.netstack_for("--api-socket")
    for flag in (
        "--disable-host-loopback", "--mtu=65520", "--enable-sandbox", "--enable-seccomp",
        "--enable-ipv6", "-c -e 3 -r 4", "--netns-type=path",
    ):  # fmt: skip
        assert flag in cmdline, cmdline
    api_socket = Path(cmdline.split("--api-socket ", 1)[1].split()[0])
    netns_file = Path(cmdline.split("--netns-type=path ", 1)[1].split()[0])
    assert api_socket.exists() and netns_file.exists()
    watchers = children(pid, WATCHER_NAME)
    assert watchers

    r = p("exec", "web-ours", "sh", "-c", TRAFFIC, "sh", "10.0.2.2")
    check_traffic(env, r.stdout, host_loopback=False)
    # the real client: the world host, reaching the host namespace's address
    seen = env.curl("world", f"http://{HOST_UPLINK_IP}:18090/cgi-bin/peer")
    assert seen.strip().strip("[]").removeprefix("::ffff:") == WORLD_HOST_IP
    seen6 = env.curl("host", "http://[::1]:18091/cgi-bin/peer")
    assert seen6.strip()  # [::1] is published; loopback clients appear as the gateway

    p("stop", "-t", "0", "web-ours")
    env.until("netstack to exit", lambda: process_gone(pid))
    env.until("the API socket to go", lambda: not api_socket.exists())
    env.until("the watcher to exit", lambda: all(process_gone(w) for w in watchers))
    env.until("the netns file to go", lambda: not netns_file.exists())
    p("rm", "web-ours")


def test_rootlesskit_port_handler_and_the_network_options(env: Env) -> None:
    """The default port handler (rootlessport), [::1] publishing, and every option of
    `--network slirp4netns:...` but the port handler: host loopback, MTU, CIDR and the
    outbound addresses (the world's server sees them as the source)."""
    env.world.in_host("ip", "addr", "add", f"{OUTBOUND_IP}/24", "dev", "up0")
    env.world.in_host("ip", "addr", "add", f"{OUTBOUND_IP6}/64", "dev", "up0", "nodad")
    p = env.podman
    options = (
        "allow_host_loopback=true,mtu=1500,cidr=10.41.0.0/24,"
        f"outbound_addr={OUTBOUND_IP},outbound_addr6={OUTBOUND_IP6}"
    )
    p(
        "run", "-d", "--name", "web-rk", "--network", f"slirp4netns:{options}",
        "-p", "127.0.0.1:18092:8080", "-p", "[::1]:18093:8080",
        "--rootfs", str(env.rootfs), "httpd", "-f", "-p", "8080", "-h", "/www",
    )  # fmt: skip
    try:
        pid, cmdline = env.netstack_for("--cidr")
        for flag in (
            "--cidr=10.41.0.0/24", "--mtu=1500",
            f"--outbound-addr={OUTBOUND_IP}", f"--outbound-addr6={OUTBOUND_IP6}",
        ):  # fmt: skip
            assert flag in cmdline, cmdline
        assert "--disable-host-loopback" not in cmdline
        r = p("exec", "web-rk", "ip", "addr", "show", "tap0")
        assert "mtu 1500" in r.stdout and "inet 10.41.0.100/24" in r.stdout, r.stdout
        r = p("exec", "web-rk", "sh", "-c", TRAFFIC, "sh", "10.41.0.2")
        check_traffic(env, r.stdout, host_loopback=True)
        r = p("exec", "web-rk", "sh", "-c",
              f"nc {WORLD_HOST_IP} {PEER_PORT} </dev/null; echo; "
              f"nc {WORLD_HOST_IP6} {PEER_PORT} </dev/null")  # fmt: skip
        v4, v6 = r.stdout.split()
        assert v4.rsplit(":", 1)[0] == OUTBOUND_IP and v6.rsplit(":", 1)[0] == OUTBOUND_IP6
        assert env.curl("host", "http://127.0.0.1:18092/cgi-bin/peer").strip()
        assert env.curl("host", "http://[::1]:18093/cgi-bin/peer").strip()
    finally:
        p("rm", "-f", "-t", "0", "web-rk")
    env.until("netstack to exit", lambda: process_gone(pid))


def test_pod(env: Env) -> None:
    p = env.podman
    p("pod", "create", "--name", "pod1", "-p", "127.0.0.1:18094:8080")
    try:
        p(
            "run", "-d", "--pod", "pod1", "--name", "pod1-web",
            "--rootfs", str(env.rootfs), "httpd", "-f", "-p", "8080", "-h", "/www",
        )  # fmt: skip
        pid, _ = env.netstack_for("--netns-type=path")
        assert env.curl("host", "http://127.0.0.1:18094/cgi-bin/peer").strip()
        r = p("run", "--rm", "--pod", "pod1", "--rootfs", str(env.rootfs), "sh", "-c",
              f"wget -q -O - http://{WORLD_HOST_IP}:{HTTP_PORT}/blob | sha256sum")  # fmt: skip
        assert r.stdout.split()[0] == env.blob_sha
    finally:
        p("pod", "rm", "-f", "-t", "0", "pod1")
    env.until("netstack to exit", lambda: process_gone(pid))


def test_user_defined_network(env: Env) -> None:
    """Bridge networks share one rootless netns, given its network by netstack
    (`-c -r 3 --netns-type=path`, no exit fd: podman kills it when the last goes)."""
    p = env.podman
    p("network", "create", "usernet")
    try:
        p(
            "run", "-d", "--name", "net-box", "--network", "usernet",
            "--rootfs", str(env.rootfs), "sleep", "300",
        )  # fmt: skip
        pid, cmdline = env.netstack_for("rootless-netns")
        assert "-c -r 3 " in cmdline and " -e " not in cmdline, cmdline
        r = p("exec", "net-box", "sh", "-c",
              f"wget -q -O - http://{WORLD_HOST_IP}:{HTTP_PORT}/blob | sha256sum")  # fmt: skip
        assert r.stdout.split()[0] == env.blob_sha
        p("rm", "-f", "-t", "0", "net-box")
        env.until("netstack to exit", lambda: process_gone(pid))
    finally:
        p("rm", "-f", "-t", "0", "net-box", check=False)
        p("network", "rm", "-f", "usernet", check=False)


def test_a_bad_option_fails_as_with_slirp4netns(env: Env) -> None:
    """mtu=70000 passes podman's own check (>= 68) and is refused by the stack: podman
    shows the stack's first error line, which is slirp4netns's."""
    run = ("run", "--rm", "--network", "slirp4netns:mtu=70000", "--rootfs", str(env.rootfs), "true")
    ours = env.podman(*run, check=False)
    assert ours.returncode != 0
    first_line = re.search(r'Error: (\S+) failed: "([^\\]*)\\n', ours.stderr)
    assert first_line, ours.stderr
    assert first_line.group(1) == NETSTACK
    assert first_line.group(2) == "MTU must be a positive integer (< 65522)"
    slirp4netns = shutil.which("slirp4netns")
    if slirp4netns is not None:
        theirs = env.podman(f"--network-cmd-path={slirp4netns}", *run, check=False)
        assert theirs.returncode == ours.returncode
        assert f'{slirp4netns} failed: "{first_line.group(2)}\\n' in theirs.stderr, theirs.stderr
