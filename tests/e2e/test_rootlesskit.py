"""A real runtime: Debian's rootlesskit, run as an unprivileged user with subordinate
id ranges, launches netstack as its slirp4netns (with its slirp4netns port driver).
rootlesskit runs inside the test's host namespace, so nothing leaves the machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.unprivileged import ensure_user, tun_open_to_all
from tests.netns import NETSTACK, World

USER = "netstack-test"
SUBID_RANGE = "300000:65536"

pytestmark = pytest.mark.skipif(shutil.which("rootlesskit") is None, reason="no rootlesskit")


@pytest.fixture
def user_dir() -> Iterator[Path]:
    """An unprivileged user with subuid/subgid ranges, /dev/net/tun mode 0666 (as on
    a normal distribution), and a scratch folder it owns."""
    ensure_user(USER, SUBID_RANGE)
    d = Path(f"/tmp/netstack-rk-{os.getpid()}")
    with tun_open_to_all():
        d.mkdir(mode=0o755)
        shutil.chown(d, USER, USER)
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)


INNER = """
python3 -m http.server 80 --bind 0.0.0.0 --directory {d}/www >/dev/null 2>&1 &
server=$!
trap 'kill $server' EXIT
for i in $(seq 50); do
  curl -s -o /dev/null http://127.0.0.1:80/ && break
  sleep 0.1
done
ip -4 addr show tap0 | grep -o 'inet [0-9./]*'
curl -sS -m 10 http://10.0.2.2:18099/from-host.txt
for i in $(seq 30); do ping -6 -c 1 -W 1 fd00::2 >/dev/null 2>&1 && echo ping6-ok && break; done
touch {d}/inner-ready
for i in $(seq 200); do [ -e {d}/outer-done ] && break; sleep 0.1; done
"""


@pytest.mark.parametrize(
    "isolation",
    [[], ["--slirp4netns-sandbox=true", "--slirp4netns-seccomp=true", "--ipv6"]],
)
def test_rootlesskit_runs_on_netstack(world: World, user_dir: Path, isolation: list[str]) -> None:
    www = user_dir / "www"
    www.mkdir()
    (www / "in-container.txt").write_text("served from inside the container\n")
    (user_dir / "from-host.txt").write_text("served from the host\n")
    for p in (www, *www.iterdir(), user_dir / "from-host.txt"):
        shutil.chown(p, USER, USER)
    (user_dir / "inner.sh").write_text(INNER.format(d=user_dir))
    world.spawn(
        "host",
        "python3",
        "-m",
        "http.server",
        "18099",
        "--bind",
        "127.0.0.1",
        "--directory",
        str(user_dir),
    )
    cmd = [
        "setpriv",
        f"--reuid={USER}",
        f"--regid={USER}",
        "--init-groups",
        "env",
        f"HOME={user_dir}",
        f"XDG_RUNTIME_DIR={user_dir}",
        "rootlesskit",
        f"--state-dir={user_dir}/state",
        "--net=slirp4netns",
        f"--slirp4netns-binary={NETSTACK}",
        "--port-driver=slirp4netns",
        "-p",
        "127.0.0.1:18088:80/tcp",
        *isolation,
        "sh",
        f"{user_dir}/inner.sh",
    ]
    rk = subprocess.Popen(
        ["ip", "netns", "exec", world.host, *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    world.procs.append(rk)  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 30
        while not (user_dir / "inner-ready").exists():
            assert rk.poll() is None, rk.communicate()[0]
            assert time.monotonic() < deadline, "rootlesskit's child did not get going"
            time.sleep(0.1)
        # the published port, from the host side
        r = world.in_host("curl", "-sS", "-m", "10", "http://127.0.0.1:18088/in-container.txt")
        assert r.stdout == "served from inside the container\n", r.stderr
    finally:
        (user_dir / "outer-done").touch()
    out, _ = rk.communicate(timeout=30)
    assert rk.returncode == 0, out
    assert "inet 10.0.2.100/24" in out
    assert "served from the host" in out
    if "--ipv6" in isolation:
        assert "ping6-ok" in out  # SLAAC from our advertisement, then fd00::2 answers
