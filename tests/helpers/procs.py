"""Looking at processes through /proc: by parent, by namespace, alive or not."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def live_pids() -> Iterator[tuple[int, dict[str, str]]]:
    """(pid, /proc/PID/status fields) of every process that is not a zombie."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields.get("State", "Z")[0] not in "ZX":
            yield int(entry.name), fields


def ns_inode(pid: int | str, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def children(pid: int, needle: str) -> list[int]:
    """Pids of PID's live children whose command line has NEEDLE."""
    found = []
    for child, fields in live_pids():
        if int(fields["PPid"]) == pid:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if needle in cmdline.decode(errors="replace"):
                found.append(child)
    return found


def process_gone(pid: int) -> bool:
    """Exited: no /proc entry, or a zombie nobody has reaped yet."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status or "\nState:\tX" in status
