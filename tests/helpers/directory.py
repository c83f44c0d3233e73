"""A test world for the service directory: one "host" network namespace (loopback only,
so nothing a test does can leave the machine) with netstackd running in it; containers
are `netstack-run` processes started there, each in a fresh netns with netstack.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.netns import ROOT, api_request, sh

NETSTACKD = str(ROOT / ".venv" / "bin" / "netstackd")
NETSTACK_RUN = str(ROOT / ".venv" / "bin" / "netstack-run")
PYTHON = sys.executable


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


class DirectoryWorld:
    def __init__(self, *daemon_args: str) -> None:
        tag = secrets.token_hex(3)
        self.host = f"ndh-{tag}"
        self.dir = Path(f"/tmp/ndw-{tag}")
        self.socket = str(self.dir / "netstackd.sock")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_log = self.dir / "netstackd.log"
        try:
            self.dir.mkdir(mode=0o755)
            sh("ip", "netns", "add", self.host)
            sh("ip", "-n", self.host, "link", "set", "lo", "up")
            self.start_daemon(*daemon_args)
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- daemon
    def start_daemon(self, *args: str) -> None:
        with open(self.daemon_log, "ab") as log:
            self.daemon = subprocess.Popen(
                ["ip", "netns", "exec", self.host, NETSTACKD, "--socket", self.socket, *args],
                stdout=log, stderr=log)
        self.procs.append(self.daemon)
        wait_until(lambda: self._answers() or self.daemon.poll() is not None, 10,
                   "netstackd's socket")
        assert self.daemon.poll() is None, f"netstackd exited:\n{self.log()}"

    def _answers(self) -> bool:
        try:
            self.api("info")
        except OSError:
            return False
        return True

    def stop_daemon(self, sig: int = signal.SIGTERM) -> None:
        assert self.daemon is not None
        self.daemon.send_signal(sig)
        self.daemon.wait(10)

    def log(self) -> str:
        try:
            return self.daemon_log.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def api(self, execute: str, **arguments: Any) -> Any:
        return api_request(self.socket, execute, arguments)

    def stats(self) -> dict[str, int]:
        return dict(self.api("stats"))

    def services(self) -> dict[str, dict[str, Any]]:
        return {e["name"]: e for e in self.api("list_services")["entries"]}

    def wait_served(self, name: str, count: int = 1, timeout: float = 15) -> dict[str, Any]:
        try:
            return dict(wait_until(
                lambda: (self.services().get(name) or {}).get("instances", 0) >= count
                and self.services()[name], timeout, f"{count} instance(s) of {name}"))
        except AssertionError as e:
            raise AssertionError(f"{e}; netstackd's log:\n{self.log()}") from None

    # ------------------------------------------------------------ containers
    def run_args(self, *cmd: str, name: str | None = None, labels: tuple[str, ...] = (),
                 ipv6: bool = False, disable_host_loopback: bool = False,
                 directory: bool = True) -> list[str]:
        args = ["ip", "netns", "exec", self.host, NETSTACK_RUN,
                "--log", str(self.dir / "netstack.log")]
        if directory:
            args += ["--directory", self.socket]
        if name:
            args += ["--name", name]
        for label in labels:
            args += ["--label", label]
        if ipv6:
            args.append("-6")
        if disable_host_loopback:
            args.append("--disable-host-loopback")
        return [*args, "--", *cmd]

    def run(self, *cmd: str, timeout: float = 60, input: str | None = None,
            **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.run_args(*cmd, **kw), capture_output=True, text=True,
                              timeout=timeout, input=input)

    def python(self, code: str, *args: str, timeout: float = 60,
               **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run(PYTHON, "-c", code, *args, timeout=timeout, **kw)

    def spawn(self, *cmd: str, **kw: Any) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(self.run_args(*cmd, **kw), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        self.procs.append(p)
        return p

    def spawn_python(self, code: str, *args: str, **kw: Any) -> subprocess.Popen[bytes]:
        return self.spawn(PYTHON, "-c", code, *args, **kw)

    def in_host(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.host, *cmd], capture_output=True,
                              text=True, timeout=timeout)

    def spawn_in_host(self, *cmd: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(["ip", "netns", "exec", self.host, *cmd], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        self.procs.append(p)
        return p

    # --------------------------------------------------------------- cleanup
    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            for stream in (p.stdout, p.stderr):
                if stream is not None:
                    stream.close()
        sh("ip", "netns", "del", self.host, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def line(p: subprocess.Popen[bytes], timeout: float = 15) -> str:
    """The next line a spawned process prints (stdout), or fail with its stderr."""
    import select

    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    if not ready:
        raise AssertionError("no output in time")
    text = p.stdout.readline().decode().strip()
    if not text and p.poll() is not None:
        err = p.stderr.read().decode() if p.stderr else ""
        raise AssertionError(f"process exited {p.returncode}: {err}")
    return text
