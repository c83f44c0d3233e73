"""Real clients through the service directory, each fetching a 2 MiB payload from a
service by its VIP and checking the bytes (sha256): a static busybox (wget, and nc
speaking HTTP by hand), curl, a Go program (net.Dial's nonblocking connect on epoll,
over the VIP and the VIP6, from 16 goroutines at once, and blocking raw syscalls) under
a SIGURG storm, a Go *server* reached by a Python client, busybox httpd (a C server
blocking in accept) reached by Go and busybox. netstackd's counters must show every
connect bypassed (`bypassed_connects`) and every connection accepted by the supervisor
(`accepts`).

Then what C-style programs do that the bypass must carry over, each next to the baseline
that shows the client is right: the client's address a server's accept shows after a
blocking connect or once the client has exited, socket options set before connect, an
epoll registration made before connect, a caught signal (SIGINT) while netstackd holds
a blocking accept (a connect waiting for its service stays uninterruptible by design: a
strict xfail), and a dual-stack server's view of an IPv4 client with IPv6 enabled. The Python
clients' own edge cases (waits, balancing, labels, fork, dup2, ...) are in
test_directory.py.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from netstack.directory.daemon import FULL_SWEEP_EVERY, SWEEP_S
from tests.conftest import needs_root
from tests.helpers.directory import PYTHON, DirectoryWorld, line, wait_until
from tests.netns import ROOT, SERVERS

pytestmark = [needs_root, pytest.mark.timeout(240)]

CLIENTS = str(ROOT / "tests" / "helpers" / "clients.py")
GOCLIENT_SRC = ROOT / "tests" / "e2e" / "data" / "goclient"
PAYLOAD_SIZE = 2 << 20
WEB_PORT = 8080
WEB_GO_PORT = 8081
WEB_BB_PORT = 8082
CLIENT_IP = "10.0.2.100"  # a netstack-run container's address (netstack -c)
FETCH_TIMEOUT_S = 60


@dataclass
class Web:
    """A world with `web` (Python's http.server) serving payload.bin on WEB_PORT."""

    world: DirectoryWorld
    vip: str
    vip6: str
    digest: str  # "sha256hex length" of the payload
    payload: Path


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    files = tmp_path_factory.mktemp("web")
    files.chmod(0o755)
    payload = files / "payload.bin"
    data = os.urandom(PAYLOAD_SIZE)
    payload.write_bytes(data)
    world = DirectoryWorld()
    try:
        server = world.spawn(PYTHON, SERVERS, "http", str(files), str(WEB_PORT), "0.0.0.0",
                             name="web")
        assert line(server) == "ready"
        world.wait_served("web")
        vips = world.api("resolve", name="web")
        yield Web(world, vips["vip"], vips["vip6"], digest(data), payload)
    finally:
        world.close()


@pytest.fixture(scope="module")
def goclient(tmp_path_factory: pytest.TempPathFactory) -> str:
    """tests/e2e/data/goclient built offline (standard library only) into a tmp dir."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("go is not installed (scripts/setup.sh installs golang-go)")
    tmp = tmp_path_factory.mktemp("go")
    binary = tmp / "goclient"
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOCACHE": str(tmp / "cache"),
           "GOPATH": str(tmp / "path"), "CGO_ENABLED": "0", "GOPROXY": "off",
           "GOTOOLCHAIN": "local"}
    r = subprocess.run([go, "build", "-o", str(binary), "."], cwd=GOCLIENT_SRC, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"go build failed:\n{r.stderr}"
    return str(binary)


@pytest.fixture(scope="module")
def busybox() -> str:
    path = shutil.which("busybox")
    if path is None:
        pytest.skip("busybox is not installed (scripts/setup.sh installs busybox-static)")
    return path


def run_binary(world: DirectoryWorld, *cmd: str,
               ipv6: bool = False) -> subprocess.CompletedProcess[bytes]:
    """CMD under netstack-run (supervised), stdout kept as bytes; must exit 0."""
    r = subprocess.run(world.run_args(*cmd, ipv6=ipv6), capture_output=True,
                       timeout=FETCH_TIMEOUT_S)
    assert r.returncode == 0, f"{cmd[0]} exited {r.returncode}: {r.stderr.decode()[-2000:]}"
    return r


def digest(data: bytes) -> str:
    return f"{hashlib.sha256(data).hexdigest()} {len(data)}"


def http_body(response: bytes) -> bytes:
    head, sep, body = response.partition(b"\r\n\r\n")
    assert sep and head.startswith(b"HTTP/1.0 200"), response[:200]
    return body


class Counted:
    """netstackd's counters across a block: `delta(name)` is what the block added."""

    def __init__(self, world: DirectoryWorld) -> None:
        self.world = world
        self.before = world.stats()

    def delta(self, name: str) -> int:
        return self.world.stats()[name] - self.before[name]


def assert_bypassed(counted: Counted, connects: int) -> None:
    """Each of `connects` connects went to a host socket and was accepted by us."""
    assert counted.delta("bypassed_connects") == connects, counted.world.stats()
    assert counted.delta("accepts") == connects, counted.world.stats()
    assert counted.delta("errors") == 0, counted.world.log()


# ------------------------------------------------------------------ busybox
def test_busybox_wget_fetches_web_by_vip(web: Web, busybox: str) -> None:
    counted = Counted(web.world)
    r = run_binary(web.world, busybox, "wget", "-q", "-O-",
                   f"http://{web.vip}:{WEB_PORT}/payload.bin")
    assert digest(r.stdout) == web.digest
    assert_bypassed(counted, 1)


def test_busybox_nc_speaks_http_to_web(web: Web, busybox: str) -> None:
    counted = Counted(web.world)
    script = (f"printf 'GET /payload.bin HTTP/1.0\\r\\n\\r\\n' | {busybox} nc {web.vip} "
              f"{WEB_PORT}")
    r = run_binary(web.world, busybox, "sh", "-c", script)
    assert digest(http_body(r.stdout)) == web.digest
    assert_bypassed(counted, 1)


def test_curl_fetches_web_by_vip(web: Web) -> None:
    """libcurl: nonblocking connect watched with poll(), then getsockname/getpeername."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed (scripts/setup.sh installs it)")
    counted = Counted(web.world)
    r = run_binary(web.world, curl, "-sS", "--max-time", "30",
                   f"http://{web.vip}:{WEB_PORT}/payload.bin")
    assert digest(r.stdout) == web.digest
    assert_bypassed(counted, 1)


# ----------------------------------------------------------------------- Go
@pytest.mark.parametrize("mode,ipv6,fetches", [
    ("get", False, 1), ("get", True, 1), ("get", False, 16), ("rawget", False, 1)],
    ids=["net.Dial", "net.Dial-vip6", "net.Dial-16-goroutines", "blocking-connect"])
def test_go_client_fetches_web_under_sigurg_storm(web: Web, goclient: str, mode: str,
                                                  ipv6: bool, fetches: int) -> None:
    """get: net.Dial (nonblocking connect, then the fd joins the runtime's epoll; it
    then asks getsockname and getpeername), once or from 16 goroutines at once; rawget:
    a blocking connect(2) on the goroutine's thread. All while every thread gets a
    SIGURG every 100 µs."""
    counted = Counted(web.world)
    vip = web.vip6 if ipv6 else web.vip
    args = [mode, vip, str(WEB_PORT), "/payload.bin"] + ([str(fetches)] if fetches > 1 else [])
    r = run_binary(web.world, "env", "URG=1", goclient, *args, ipv6=ipv6)
    assert r.stdout.decode().split("\n") == [web.digest] * fetches + [""]
    report = dict(ln.split(" ", 1) for ln in r.stderr.decode().splitlines() if " " in ln)
    assert int(report["urg"]) > 0  # the storm ran while the client worked
    if mode == "get":  # what the Go program believes it is connected to
        assert report["remote"] == (f"[{vip}]:{WEB_PORT}" if ipv6 else f"{vip}:{WEB_PORT}")
        local = report["local"].rsplit(":", 1)[0].strip("[]")
        assert not ipaddress.ip_address(local).is_loopback, report
    assert_bypassed(counted, fetches)


@pytest.fixture(scope="module")
def web_go(web: Web, goclient: str) -> tuple[subprocess.Popen[bytes], str]:
    """A Go server named web-go (net.Listen(":PORT"): a dual-stack AF_INET6 socket on
    ::, accepting with accept4 on epoll) under its own SIGURG storm; it and its VIP."""
    server = web.world.spawn("env", "URG=1", goclient, "serve", str(WEB_GO_PORT),
                             str(web.payload), name="web-go")
    assert line(server) == "ready"
    web.world.wait_served("web-go")
    return server, str(web.world.api("resolve", name="web-go")["vip"])


def printed_lines(p: subprocess.Popen[bytes], count: int, timeout: float = 10) -> list[str]:
    """The next `count` lines p prints (read from the pipe itself, unbuffered)."""
    assert p.stdout is not None
    fd, data = p.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while data.count(b"\n") < count:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([fd], [], [], left)[0], f"got only {data!r}"
        chunk = os.read(fd, 4096)
        assert chunk, f"{p.args} exited; got {data!r}"
        data += chunk
    return data.decode().splitlines()


def test_python_client_fetches_from_go_server(web: Web,
                                              web_go: tuple[subprocess.Popen[bytes], str]) -> None:
    server, vip = web_go
    counted = Counted(web.world)
    for _ in range(3):  # accept after accept on the Go server's poller
        r = run_binary(web.world, PYTHON, CLIENTS, "get", vip, str(WEB_GO_PORT), "/")
        assert r.stdout.decode().strip() == web.digest
    assert_bypassed(counted, 3)
    # accept4 wrote the client's container address, never the host socket's 127.0.0.1
    for peer in printed_lines(server, 3):
        assert peer.startswith(f"peer {CLIENT_IP}:"), peer


def test_dual_stack_go_server_sees_an_ipv4_client_as_ipv4(
        web: Web, web_go: tuple[subprocess.Popen[bytes], str]) -> None:
    """A client with IPv6 enabled (-6) connecting to the VIP (IPv4)."""
    server, vip = web_go
    r = run_binary(web.world, PYTHON, CLIENTS, "get", vip, str(WEB_GO_PORT), "/", ipv6=True)
    assert r.stdout.decode().strip() == web.digest
    (peer,) = printed_lines(server, 1)
    assert peer.startswith(f"peer {CLIENT_IP}:"), peer


def test_go_and_busybox_fetch_from_busybox_httpd(web: Web, goclient: str, busybox: str) -> None:
    """A C server that blocks in accept(2) (busybox httpd -f) under supervision."""
    server = web.world.spawn(busybox, "httpd", "-f", "-p", str(WEB_BB_PORT), "-h",
                             str(web.payload.parent), name="web-bb")
    web.world.wait_served("web-bb")
    assert server.poll() is None
    vip = web.world.api("resolve", name="web-bb")["vip"]
    counted = Counted(web.world)
    r = run_binary(web.world, "env", "URG=1", goclient, "get", vip, str(WEB_BB_PORT),
                   "/payload.bin")
    assert r.stdout.decode().strip() == web.digest
    r = run_binary(web.world, busybox, "wget", "-q", "-O-",
                   f"http://{vip}:{WEB_BB_PORT}/payload.bin")
    assert digest(r.stdout) == web.digest
    assert_bypassed(counted, 2)


# ------------------------------------------------ the peer an accept is shown
def spawn_with_stdin(world: DirectoryWorld, *cmd: str,
                     name: str | None = None) -> subprocess.Popen[bytes]:
    """CMD under netstack-run with a pipe to its stdin (the world stops it)."""
    p = subprocess.Popen(world.run_args(*cmd, name=name), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    world.procs.append(p)
    return p


def release(p: subprocess.Popen[bytes], text: bytes = b"") -> None:
    """Write text to p's stdin and close it (once; nothing if p has exited)."""
    if p.stdin is None or p.stdin.closed:
        return
    try:
        with p.stdin:
            p.stdin.write(text)
    except BrokenPipeError:
        pass


def accepting_server(web: Web, name: str, port: int, gated: bool = False
                     ) -> tuple[subprocess.Popen[bytes], str]:
    """`clients.py accept` registered as name: it blocks in accept() (held by
    netstackd), after a line on stdin when gated; the server and its VIP."""
    server = spawn_with_stdin(web.world, PYTHON, CLIENTS, "accept", str(port),
                              *(["gated"] if gated else []), name=name)
    if not gated:
        release(server)  # it never reads stdin
    line(server)  # its pid
    web.world.wait_served(name)
    return server, str(web.world.api("resolve", name=name)["vip"])


PEERS = 5


@pytest.mark.parametrize("mode", [
    "timeout",
    "blocking"])
def test_server_sees_the_client_container_address(web: Web, mode: str) -> None:
    """A server blocked in accept() and a client connecting by VIP, Python's way with a
    timeout (nonblocking) or plainly blocking: each accepted peer is the client
    container's address, never the host's loopback."""
    server, vip = accepting_server(web, f"peers-{mode}", 9100 + len(mode))
    client = spawn_with_stdin(web.world, PYTHON, CLIENTS, "connects", vip,
                              str(9100 + len(mode)), str(PEERS), mode)
    try:
        assert line(client) == "connected"
        assert printed_lines(server, PEERS) == [f"peer {CLIENT_IP}"] * PEERS
    finally:
        release(client)


def test_server_sees_the_address_of_a_client_that_has_gone(
        web: Web, request: pytest.FixtureRequest) -> None:
    """Short-lived clients (health checks) are often gone by the time a busy server
    accepts: the kernel still shows the address they connected from."""
    server, vip = accepting_server(web, "peers-late", 9110, gated=True)
    live = web.world.stats()["containers_live"]
    request.addfinalizer(lambda: release(server))
    client = spawn_with_stdin(web.world, PYTHON, CLIENTS, "connects", vip, "9110",
                              str(PEERS), "timeout")
    try:
        assert line(client) == "connected"
    finally:
        release(client)
    client.wait(10)
    wait_until(lambda: web.world.stats()["containers_live"] == live, 10, "client dropped")
    # at least one full sweep (it forgets sockets that no longer exist) before the accept
    time.sleep(SWEEP_S * FULL_SWEEP_EVERY + 0.5)
    release(server, b"accept\n")
    assert printed_lines(server, PEERS) == [f"peer {CLIENT_IP}"] * PEERS


# ------------------------------------------------- socket options set before connect
# kept because _copy_options compares with a fresh socket's defaults (the first three
# were copied from the start, the rest once this test found them lost)
LOST_OPTIONS = ("SO_RCVTIMEO", "SO_SNDTIMEO", "SO_RCVBUF", "SO_SNDBUF", "IP_TOS",
                "TCP_CONGESTION")
KEPT_OPTIONS = ("SO_KEEPALIVE", "TCP_NODELAY", "TCP_KEEPIDLE")


def client_json(world: DirectoryWorld, supervised: bool, *args: str) -> dict[str, Any]:
    """`clients.py ARGS`'s JSON line: under netstack-run, or a plain host process."""
    cmd = (PYTHON, CLIENTS, *args)
    if supervised:
        r = subprocess.run(world.run_args(*cmd), capture_output=True, text=True, timeout=60)
    else:
        r = world.in_host(*cmd)
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def web_host_socket(web: Web) -> tuple[str, str]:
    """Where web really listens: its host socket, reachable from the host netns."""
    inst = next(e for e in web.world.api("list_instances")["entries"] if e["name"] == "web")
    return inst["host"], str(inst["host_port"])


@pytest.fixture(scope="module")
def supervised_options(web: Web) -> dict[str, list[str]]:
    """[before, after] connect of each option, a client connecting to web's VIP."""
    return client_json(web.world, True, "options", web.vip, str(WEB_PORT))


def test_socket_options_survive_connect_without_supervision(web: Web) -> None:
    kept = client_json(web.world, False, "options", *web_host_socket(web))
    assert set(kept) == {*LOST_OPTIONS, *KEPT_OPTIONS}
    for name, (before, after) in kept.items():
        assert before == after, name


@pytest.mark.parametrize("name", [
    *KEPT_OPTIONS,
    *LOST_OPTIONS,
])
def test_socket_option_set_before_connect_survives_the_bypass(
        supervised_options: dict[str, list[str]], name: str) -> None:
    before, after = supervised_options[name]
    assert after == before


# ------------------------------------------- epoll registered before connect
EPOLL_WAIT_S = "3"


def test_epoll_registered_before_connect_works_without_supervision(web: Web) -> None:
    """The client itself is right: straight to web's host socket, in the host netns."""
    out = client_json(web.world, False, "epoll-first", *web_host_socket(web), "/payload.bin",
                      EPOLL_WAIT_S)
    assert out["stage"] == "done" and out["digest"] == web.digest, out
    assert out["first_events"] == ["EPOLLOUT"]


def test_epoll_registered_before_connect_completes_under_supervision(web: Web) -> None:
    out = client_json(web.world, True, "epoll-first", web.vip, str(WEB_PORT), "/payload.bin",
                      EPOLL_WAIT_S)
    assert out["stage"] == "done" and out["digest"] == web.digest, out


# ------------------------------------- a caught signal while netstackd holds the call
SIGNAL_GRACE_S = 3.0  # an interrupted blocking call returns at once; 3 s is generous
HELD_PORT = 9000


def sleeping_in(pid: int, call: str) -> str | None:
    """The task state ("S" interruptible, "D" killable) if pid sleeps in connect/accept."""
    numbers = {"accept": ("43", "288"), "connect": ("42",)}[call]
    try:
        nr = Path(f"/proc/{pid}/syscall").read_text().split()[0]
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    return state if nr in numbers and state in ("S", "D") else None


# netstackd receives these notifications from `clients.py accept` (bind, listen, accept)
# and `clients.py connect` (connect): once it has them all, the call sleeps in its hands.
TRAPS = {"accept": 3, "connect": 1}


def interrupted_in(world: DirectoryWorld, call: str, *args: str,
                   name: str | None = None) -> tuple[float | None, str]:
    """`clients.py CALL ARGS` under netstack-run, SIGINT once netstackd has received the
    call and it sleeps: the seconds it took to exit and what it printed, or (None, state
    after the signal) if it was still blocked after SIGNAL_GRACE_S (it is then killed)."""
    traps = world.stats()["traps"]
    p = world.spawn(PYTHON, CLIENTS, call, *args, name=name)
    pid = int(line(p))
    wait_until(lambda: sleeping_in(pid, call) and world.stats()["traps"] >= traps + TRAPS[call],
               10, f"{call} sleeping, received by netstackd")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGINT)
    try:
        p.wait(SIGNAL_GRACE_S)
    except subprocess.TimeoutExpired:
        state = sleeping_in(pid, call) or "?"
        os.kill(pid, signal.SIGKILL)
        p.wait(10)
        return None, f"still in {call}, state {state}"
    assert p.stdout is not None
    return time.monotonic() - t0, p.stdout.read().decode().strip()


def test_sigint_interrupts_an_accept_netstackd_does_not_hold(web: Web) -> None:
    """Without a name the accept runs in the netns: Ctrl-C ends it at once."""
    took, said = interrupted_in(web.world, "accept", str(HELD_PORT))
    assert took is not None and said == "interrupted", said


def test_sigint_interrupts_a_held_accept(web: Web) -> None:
    took, said = interrupted_in(web.world, "accept", str(HELD_PORT), name="held-accept")
    assert took is not None and said == "interrupted", said


@pytest.mark.xfail(strict=True, reason=(
    "by design: a connect answered EINTR goes on in the background, and there is nothing "
    "to connect to before the name is served, so this wait is not interruptible; it is "
    "bounded by --connect-wait instead"))
def test_sigint_interrupts_a_connect_waiting_for_its_service(web: Web) -> None:
    vip = web.world.api("resolve", name="not-yet")["vip"]
    took, said = interrupted_in(web.world, "connect", vip, "80")
    assert took is not None and said == "interrupted", said
