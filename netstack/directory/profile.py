"""The OCI seccomp profile a runtime needs to hand a container to netstackd: our NOTIFY
rule first (the socket control calls), then the runtime's own rules with those names
taken out, and `listenerPath` pointing at netstackd's agent socket."""

from __future__ import annotations

import json
from typing import Any

TRAPPED_NAMES = ["connect", "bind", "listen", "accept", "accept4", "getsockname",
                 "getpeername"]
DEFAULT_BASES = ("/usr/share/containers/seccomp.json",)  # podman's (containers-common)


def load_base(path: str | None) -> dict[str, Any]:
    """The runtime's default profile: --base, else the distribution's, else allow-all."""
    for candidate in ([path] if path else list(DEFAULT_BASES)):
        try:
            with open(candidate) as f:
                base = json.load(f)
        except FileNotFoundError:
            if path:
                raise
            continue
        if not isinstance(base, dict):
            raise ValueError(f"{candidate}: not a seccomp profile (not a JSON object)")
        return base
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}


def build(base: dict[str, Any], listener_path: str, killable: bool = False) -> dict[str, Any]:
    if base.get("listenerPath") not in (None, "", listener_path):
        raise ValueError(f"the base profile already has a listener: {base['listenerPath']}")
    if base.get("defaultAction") == "SCMP_ACT_NOTIFY":
        raise ValueError("the base profile's defaultAction is NOTIFY")
    rules: list[dict[str, Any]] = []
    for rule in base.get("syscalls") or []:
        names = [n for n in rule.get("names", []) if n not in TRAPPED_NAMES]
        if rule.get("names") and not names:
            continue
        rules.append({**rule, "names": names} if "names" in rule else rule)
    profile = dict(base)
    profile["syscalls"] = [{"names": TRAPPED_NAMES, "action": "SCMP_ACT_NOTIFY"}, *rules]
    profile["listenerPath"] = listener_path
    if killable:  # runc >= 1.2 / crun with libseccomp >= 2.6: Go's SIGURG stops interrupting
        flags = list(profile.get("flags") or [])
        if "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV" not in flags:
            flags.append("SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV")
        profile["flags"] = flags
    return profile
