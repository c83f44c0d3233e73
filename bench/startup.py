"""bench/startup: launch-to-ready and idle RSS, netstack beside slirp4netns, and where
netstack's start-up goes.

Each run makes a fresh network namespace per system and launches it as a runtime does
(`-c -r FD --netns-type=path NS tap0`; the +sandbox rows add --enable-sandbox
--enable-seccomp, as podman and rootlesskit do; +api an --api-socket, as rootlesskit
does: its server runs on the stack's own loop), rotating which system goes first; "ready"
is the time from the launch to the ready-fd byte, "rss idle" VmRSS 0.3 s later.
Medians, with min and max to show the noise of a shared machine. Then one more
netstack launch under `python -X importtime`: the imports it made before the ready
byte, the costliest first (nested ones indented), so a new import on the start path
shows up here.

    python -m bench.startup [--runs 9] [--top 25] [--json PATH] [--systems ...]

Bytecode: the runs use the .pyc files that `python -m compileall` wrote (done here
first); a shell with PYTHONDONTWRITEBYTECODE=1 and no .pyc would compile every
netstack module on each start (~35 ms here).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = str(ROOT / ".venv" / "bin" / "python")
NETSTACK = str(ROOT / ".venv" / "bin" / "netstack")
SETTLE_S = 0.3  # as bench/run: RSS read once the process is idle
# each launch in a mount namespace of its own whose mounts are slaves of ours (as under
# bench/run's `ip netns exec`): slirp4netns --enable-sandbox run as root straight from
# the host's namespace unmounts the host's shared mounts (every /run/netns/NAME)
ISOLATE = ["unshare", "--mount", "--propagation", "slave", "--"]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def launch(argv: list[str], stderr_path: str | None = None) -> tuple[float, float]:
    """(ms to the ready byte, idle RSS MiB) of argv + `-c -r FD ... tap0` in a fresh netns."""
    ns = f"bns-{secrets.token_hex(3)}"
    api = f"/tmp/{ns}.sock"  # an --api-socket argument of "{api}" becomes this path
    argv = [a.replace("{api}", api) for a in argv]
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
    r, w = os.pipe()
    err = open(stderr_path, "w") if stderr_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        t0 = time.monotonic()
        p = subprocess.Popen(
            [*ISOLATE, *argv, "-c", "-r", str(w), "--netns-type=path", f"/run/netns/{ns}", "tap0"],
            pass_fds=(w,),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        os.close(w)
        w = -1
        try:
            ready, _, _ = select.select([r], [], [], 20)
            if not ready or os.read(r, 1) != b"1":
                raise RuntimeError(f"{argv[-1]} did not become ready")
            ready_ms = (time.monotonic() - t0) * 1000
            time.sleep(SETTLE_S)
            rss = rss_mib(p.pid)
        finally:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        return ready_ms, rss
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
        if err is not subprocess.DEVNULL:
            err.close()  # type: ignore[union-attr]
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if os.path.exists(api):
            os.unlink(api)


def import_costs(text: str) -> list[tuple[int, int, int, str]]:
    """`-X importtime` lines as (cumulative us, self us, depth, module), in order."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        self_us, cumulative, name = line[len("import time:") :].split("|")
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        rows.append((int(cumulative), int(self_us), depth, name.strip()))
    return rows


def top_imports(rows: list[tuple[int, int, int, str]], top: int, depth: int = 2) -> list[str]:
    """The `top` costliest imports down to `depth` levels, costliest first."""
    chosen = sorted((r for r in rows if r[2] <= depth), reverse=True)[:top]
    return [f"{c / 1000:7.1f} ms  {'  ' * d}{name}" for c, _s, d, name in chosen]


SANDBOX = ["--enable-sandbox", "--enable-seccomp"]  # as podman and rootlesskit launch it
SYSTEMS = {
    "netstack": [NETSTACK],
    "slirp4netns": ["slirp4netns"],
    "netstack+sandbox": [NETSTACK, *SANDBOX],
    "slirp+sandbox": ["slirp4netns", *SANDBOX],
    # the API server (its module, its socket) on the stack's own loop, as rootlesskit launches us
    "netstack+api": [NETSTACK, "--api-socket", "{api}"],
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/startup", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--top", type=int, default=25, help="import costs shown")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--json", help="write the figures here too")
    args = p.parse_args(argv)
    systems = args.systems.split(",")
    subprocess.run(
        [VENV_PYTHON, "-m", "compileall", "-q", str(ROOT / "netstack")],
        check=True,
        capture_output=True,
    )
    runs: dict[str, list[tuple[float, float]]] = {s: [] for s in systems}
    for i in range(args.runs):
        order = systems[i % len(systems) :] + systems[: i % len(systems)]
        for s in order:
            runs[s].append(launch(SYSTEMS[s]))
    out: dict[str, Any] = {"runs": args.runs, "load": os.getloadavg()[0], "systems": {}}
    print(f"{'':16} {'ready ms median':>16} {'(min-max)':>14} {'rss idle MiB':>13}")
    for s, values in runs.items():
        ready = [v[0] for v in values]
        rss = [v[1] for v in values]
        out["systems"][s] = {
            "ready_ms": statistics.median(ready),
            "ready_ms_min": min(ready),
            "ready_ms_max": max(ready),
            "rss_idle_mib": statistics.median(rss),
        }
        print(
            f"{s:16} {statistics.median(ready):16.1f} "
            f"{f'({min(ready):.0f}-{max(ready):.0f})':>14} {statistics.median(rss):13.1f}"
        )
    if "netstack" in systems:
        trace = f"/tmp/bench-startup-{secrets.token_hex(3)}.txt"
        try:
            launch([VENV_PYTHON, "-X", "importtime", NETSTACK], stderr_path=trace)
            rows = import_costs(Path(trace).read_text())
        finally:
            os.unlink(trace)
        total = sum(c for c, _s, d, _n in rows if d == 0)
        out["imports"] = {"modules": len(rows), "total_ms": total / 1000}
        print(f"\nnetstack imports to ready: {len(rows)} modules, {total / 1000:.1f} ms")
        print("(one run under -X importtime, which itself slows imports down)")
        for line in top_imports(rows, args.top):
            print(line)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
