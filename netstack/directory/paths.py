"""Where netstackd's sockets live by default (imported by netstack at start-up: keep it
free of other imports)."""

from __future__ import annotations

import os


def default_socket() -> str:
    """$XDG_RUNTIME_DIR/netstack/netstackd.sock, or /run/netstack/netstackd.sock for
    root: the per-user daemon's JSON API."""
    if os.geteuid() == 0:
        return "/run/netstack/netstackd.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/netstack-{os.geteuid()}"
    return os.path.join(runtime, "netstack", "netstackd.sock")
