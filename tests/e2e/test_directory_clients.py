"""Real clients through the service directory, each fetching a 2 MiB payload from a
service by its VIP and checking the bytes (sha256): a static busybox (wget, and nc
speaking HTTP by hand), a Go program (net.Dial's nonblocking connect on epoll, and
blocking raw syscalls) under a SIGURG storm, a Go *server* reached by a Python client,
and a C-style event loop that registers its socket with epoll before connecting.

netstackd's counters must show every connect bypassed (`bypassed_connects`) and every
connection accepted by the supervisor (`accepts`). The Python clients' own edge cases
(waits, balancing, labels, fork, dup2, ...) are in test_directory.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import needs_root
from tests.helpers.directory import PYTHON, DirectoryWorld, line
from tests.netns import ROOT, SERVERS

pytestmark = [needs_root, pytest.mark.timeout(240)]

CLIENTS = str(ROOT / "tests" / "helpers" / "clients.py")
GOCLIENT_SRC = ROOT / "tests" / "e2e" / "data" / "goclient"
PAYLOAD_SIZE = 2 << 20
WEB_PORT = 8080
WEB_GO_PORT = 8081
FETCH_TIMEOUT_S = 60


@dataclass
class Web:
    """A world with `web` (Python's http.server) serving payload.bin on WEB_PORT."""

    world: DirectoryWorld
    vip: str
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
        vip = world.api("resolve", name="web")["vip"]
        yield Web(world, vip, f"{hashlib.sha256(data).hexdigest()} {len(data)}", payload)
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


def run_binary(world: DirectoryWorld, *cmd: str) -> subprocess.CompletedProcess[bytes]:
    """CMD under netstack-run (supervised), stdout kept as bytes; must exit 0."""
    r = subprocess.run(world.run_args(*cmd), capture_output=True, timeout=FETCH_TIMEOUT_S)
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


# ----------------------------------------------------------------------- Go
@pytest.mark.parametrize("mode", ["get", "rawget"])
def test_go_client_fetches_web_under_sigurg_storm(web: Web, goclient: str, mode: str) -> None:
    """get: net.Dial (nonblocking connect, then the fd joins the runtime's epoll);
    rawget: a blocking connect(2) on the goroutine's thread. Both while every thread
    gets a SIGURG every 100 µs, so trapped calls are interrupted and restarted."""
    counted = Counted(web.world)
    r = run_binary(web.world, "env", "URG=1", goclient, mode, web.vip, str(WEB_PORT),
                   "/payload.bin")
    assert r.stdout.decode().strip() == web.digest
    signals = int(r.stderr.decode().split("urg ", 1)[1].split()[0])
    assert signals > 0  # the storm ran while the client worked
    assert_bypassed(counted, 1)


@pytest.fixture(scope="module")
def web_go(web: Web, goclient: str) -> str:
    """A Go server named web-go (net.Listen(":PORT"): a dual-stack AF_INET6 socket on
    ::, accepting with accept4 on epoll) under its own SIGURG storm; its VIP."""
    server = web.world.spawn("env", "URG=1", goclient, "serve", str(WEB_GO_PORT),
                             str(web.payload), name="web-go")
    assert line(server) == "ready"
    web.world.wait_served("web-go")
    return str(web.world.api("resolve", name="web-go")["vip"])


def test_python_client_fetches_from_go_server(web: Web, web_go: str) -> None:
    counted = Counted(web.world)
    for _ in range(3):  # accept after accept on the Go server's poller
        r = run_binary(web.world, PYTHON, CLIENTS, "get", web_go, str(WEB_GO_PORT), "/")
        assert r.stdout.decode().strip() == web.digest
    assert_bypassed(counted, 3)


# ------------------------------------------- epoll registered before connect
def epoll_first(world: DirectoryWorld, host: str, port: int,
                supervised: bool) -> dict[str, object]:
    args = (PYTHON, CLIENTS, "epoll-first", host, str(port), "/payload.bin", "3")
    if supervised:
        r = subprocess.run(world.run_args(*args), capture_output=True, text=True, timeout=60)
    else:
        r = world.in_host(*args)
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def test_epoll_registered_before_connect_works_without_supervision(web: Web) -> None:
    """The client itself is right: straight to web's host socket, in the host netns."""
    inst = next(e for e in web.world.api("list_instances")["entries"] if e["name"] == "web")
    out = epoll_first(web.world, inst["host"], inst["host_port"], supervised=False)
    assert out["stage"] == "done" and out["digest"] == web.digest, out
    assert out["first_events"] == ["EPOLLOUT"]


@pytest.mark.xfail(strict=True, reason=(
    "ADDFD replaces the fd's open file, and epoll keys its registrations on the file: "
    "the socket registered before connect() is gone, so the loop either sees that "
    "socket's stale EPOLLOUT|EPOLLHUP (unconnected) and EPOLL_CTL_MOD fails with "
    "ENOENT, or, once the old file is released, never hears of the connection"))
def test_epoll_registered_before_connect_completes_under_supervision(web: Web) -> None:
    out = epoll_first(web.world, web.vip, WEB_PORT, supervised=True)
    assert out["stage"] == "done" and out["digest"] == web.digest, out
