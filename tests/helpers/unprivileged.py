"""What a runtime needs to run as an unprivileged user, as on a normal distribution:
the user with subordinate id ranges, /dev/net/tun open to everyone, files it owns."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def ensure_user(name: str, fallback_subids: str) -> pwd.struct_passwd:
    """The user, created if missing, with subuid and subgid ranges (FALLBACK_SUBIDS,
    "start:count", only where useradd did not assign one)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/bin/sh", name], check=True)
    for f in ("/etc/subuid", "/etc/subgid"):
        text = Path(f).read_text() if Path(f).exists() else ""
        if not any(line.startswith(name + ":") for line in text.splitlines()):
            with open(f, "a") as out:
                out.write(f"{name}:{fallback_subids}\n")
    return pwd.getpwnam(name)


@contextmanager
def tun_open_to_all() -> Iterator[None]:
    """/dev/net/tun mode 0666 (Debian's own default) for the block, then as it was."""
    mode = stat.S_IMODE(os.stat("/dev/net/tun").st_mode)
    os.chmod("/dev/net/tun", 0o666)
    try:
        yield
    finally:
        os.chmod("/dev/net/tun", mode)


def chown_tree(root: Path, uid: int, gid: int) -> None:
    os.lchown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            os.lchown(os.path.join(dirpath, n), uid, gid)
