"""Where netstackd's sockets live by default (imported by netstack at start-up: keep it
free of other imports)."""

from __future__ import annotations

import os


def _outer_uid() -> int:
    """The effective uid as the parent user namespace sees it: rootless podman starts
    netstack as root of the user's own namespace, still that user's process."""
    uid = os.geteuid()
    try:
        with open("/proc/self/uid_map") as f:
            for line in f:
                inside, outside, count = (int(x) for x in line.split())
                if inside <= uid < inside + count:
                    return outside + uid - inside
    except (OSError, ValueError):
        pass
    return uid


def default_socket() -> str:
    """$XDG_RUNTIME_DIR/netstack/netstackd.sock, or /run/netstack/netstackd.sock for
    root: the per-user daemon's JSON API."""
    uid = _outer_uid()
    if uid == 0:
        return "/run/netstack/netstackd.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/netstack-{uid}"
    return os.path.join(runtime, "netstack", "netstackd.sock")
