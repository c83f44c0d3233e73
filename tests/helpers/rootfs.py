"""A container root filesystem made from Debian's static busybox, for runtimes that
take a directory (`podman run --rootfs DIR`) where no image registry is reachable."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

BUSYBOX = "/bin/busybox"  # busybox-static: no libraries to copy

# files runtimes bind-mount over: present, so no runtime has to create them
MOUNT_TARGETS = ("etc/resolv.conf", "etc/hosts", "etc/hostname")


def make_busybox_rootfs(path: Path | str, busybox: str = BUSYBOX) -> Path:
    """Fill PATH (created if missing) with a busybox root filesystem: /bin/busybox,
    one link per applet in /bin, root in /etc/passwd and /etc/group, and the empty
    directories and files a runtime mounts over. Returns the path."""
    root = Path(path)
    for d in (
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "root",
        "var/tmp",
    ):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    shutil.copy2(busybox, root / "bin" / "busybox")
    applets = subprocess.run(
        [busybox, "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for name in applets:
        link = root / "bin" / name
        if name != "busybox" and not link.exists():
            link.symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    for f in MOUNT_TARGETS:
        (root / f).touch()
    return root
