"""Rootless podman as a new user would run it, confined to a test's network namespace.

An unprivileged user with subordinate id ranges, /dev/net/tun mode 0666 (as on a normal
distribution), and every piece of podman state (configuration, storage, run dir) in one
folder of the test's: containers.conf selects runc (crun 1.8.1 refuses this machine's
hybrid cgroup layout) and points `network_cmd_path` at netstack; storage is vfs, so no
fuse-overlayfs is needed.

Every podman command runs under `nsenter --net=NS`, so podman, its pause process, conmon
and netstack all live in the test's namespace, where only loopback and the test's own
links exist. Not `ip netns exec`: it mounts a fresh /sys, which hides the cgroup mounts
runc needs ("no cgroup mount found in mountinfo").

`close()` removes everything, also after a failure: containers, pods, networks and
storage (`podman system reset`), then, by pid, any process still in the user namespace
of this instance's pause process (or the user's in the test's namespace), then the
folder. Another run's podman, under the same user, is left alone.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

from tests.helpers.procs import live_pids, ns_inode
from tests.helpers.unprivileged import chown_tree, ensure_user, tun_open_to_all

USER = "netstack-podman"
FALLBACK_SUBIDS = "400000:65536"  # only where useradd did not assign a range


class RootlessPodman:
    def __init__(self, netns: str, base: Path, netstack: str, run_dir: Path | None = None) -> None:
        self.netns = netns  # a path: /run/netns/NAME
        self.base = base
        # XDG_RUNTIME_DIR; under /run (as /run/user/UID is) when netstack, sandboxed
        # (podman passes --enable-sandbox), must still reach sockets there
        self.run_dir = run_dir or base / "run"
        self.netstack = netstack
        self.user = ensure_user(USER, FALLBACK_SUBIDS)
        self.usernses: set[int] = set()  # the user namespaces of this instance's pause process
        self._restore = ExitStack()  # what close() puts back as it was
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        self._restore.enter_context(tun_open_to_all())
        self.base.mkdir(mode=0o755)
        (self.base / "cfg" / "containers").mkdir(parents=True)
        self.run_dir.mkdir(mode=0o700)
        (self.base / "cfg" / "containers" / "containers.conf").write_text(
            "[containers]\n"
            'log_driver = "k8s-file"\n'
            "[engine]\n"
            'runtime = "runc"\n'
            f'network_cmd_path = "{self.netstack}"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
        )
        (self.base / "cfg" / "containers" / "storage.conf").write_text(
            "[storage]\n"
            'driver = "vfs"\n'
            f'graphroot = "{self.base}/storage"\n'
            f'runroot = "{self.run_dir}/storage"\n'
        )
        chown_tree(self.base, self.user.pw_uid, self.user.pw_gid)
        chown_tree(self.run_dir, self.user.pw_uid, self.user.pw_gid)

    def argv(self, *args: str) -> list[str]:
        return self.as_user("podman", *args)

    def as_user(self, *cmd: str) -> list[str]:
        """CMD as the user, in the test's namespace, with this instance's environment."""
        return [
            "nsenter",
            f"--net={self.netns}",
            "setpriv",
            f"--reuid={self.user.pw_uid}",
            f"--regid={self.user.pw_gid}",
            "--init-groups",
            "env",
            "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            f"HOME={self.base}",
            f"XDG_RUNTIME_DIR={self.run_dir}",
            f"XDG_CONFIG_HOME={self.base}/cfg",
            f"XDG_DATA_HOME={self.base}/data",
            *cmd,
        ]

    def __call__(
        self, *args: str, timeout: float = 90, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        try:
            r = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout)
        finally:
            self._note_userns()
        if check:
            assert r.returncode == 0, f"podman {' '.join(args)}: rc {r.returncode}\n{r.stderr}"
        return r

    def _note_userns(self) -> None:
        """Every process this podman starts lives in its pause process's user namespace."""
        try:
            pause = (self.run_dir / "libpod" / "tmp" / "pause.pid").read_text().strip()
        except OSError:
            return
        if (ino := ns_inode(pause, "user")) is not None:
            self.usernses.add(ino)

    def ours(self) -> list[int]:
        """Processes of this instance only (another run may use the same user): in one
        of its user namespaces, or the user's own in the test's network namespace."""
        try:
            netns = os.stat(self.netns).st_ino
        except OSError:
            netns = -1
        found = []
        for pid, fields in live_pids():
            if ns_inode(pid, "user") in self.usernses or (
                int(fields["Uid"].split()[0]) == self.user.pw_uid and ns_inode(pid, "net") == netns
            ):
                found.append(pid)
        return found

    def processes(self, needle: str) -> list[tuple[int, str]]:
        """(pid, command line) of the user's live processes whose command line has NEEDLE."""
        found = []
        for pid in self.ours():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if needle in cmdline.decode(errors="replace"):
                found.append((pid, cmdline.decode(errors="replace").strip()))
        return found

    def close(self) -> None:
        if (self.run_dir / "libpod").exists():
            for cmd in (
                ("pod", "rm", "-af", "-t", "0"),
                ("rm", "-af", "-t", "0"),
                ("system", "reset", "-f"),
            ):
                try:
                    self(*cmd, timeout=60, check=False)
                except subprocess.TimeoutExpired:
                    pass
        deadline = time.monotonic() + 10
        while (pids := self.ours()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        shutil.rmtree(self.base, ignore_errors=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self._restore.close()
