"""bench/directory: what the service directory costs and saves, side by side in one run
of about a minute (`.venv/bin/python -m bench.directory`; needs root).

  throughput    iperf3, one stream, client -> server, the median of REPEATS runs of
                DURATION s each:
                  by name      client under netstack-run (supervised) -> the VIP of a
                               server container registered as `iperf`: the connect is
                               trapped once, then both ends are plain host sockets
                  loopback     two host processes on 127.0.0.1 (the ceiling)
                  tap          the client under netstack-run without the directory ->
                               10.0.2.2, i.e. netstack's TAP path to a host server
                  slirp4netns  the same through slirp4netns (bench/worlds.py), if installed
  trap cost     getsockname() in loops of COUNT/5, us per call in the best of 5: on a
                bypassed socket under supervision (a trap netstackd answers), on a
                container-local socket under supervision (a trap it continues), and
                unsupervised
  connect rate  connect/send/recv/close loops for CRR_SECONDS (bench/probe.py crr), the
                median of REPEATS: by name, to host loopback, and through the TAP path

Prints the JSON document and a markdown table (also written to --out); the table is
the row set of bench/DIRECTORY.md. Everything runs in one fresh namespace with loopback
only (tests/helpers/directory.py's DirectoryWorld), slirp4netns in its own world.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.__main__ import machine
from bench.worlds import SlirpWorld
from tests.helpers.directory import DirectoryWorld, line

PROBE = str(Path(__file__).resolve().parent / "probe.py")
PYTHON = "/usr/bin/python3"
IPERF_NAMED_PORT = 5201  # iperf3 -s in the `iperf` container
IPERF_HOST_PORT = 5202  # iperf3 -s as a plain host process
PROBE_NAMED_PORT = 7777
PROBE_HOST_PORT = 7778
TAP_GATEWAY = "10.0.2.2"  # netstack's (and slirp4netns's) way to host loopback
SLIRP_MTU = 1500  # netstack-run's netstack runs with the default MTU, 1500


def run_json(cmd: list[str], timeout: float) -> dict[str, Any]:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[-6:]} exited {r.returncode}: {r.stderr.strip()[-400:]}")
    return dict(json.loads(r.stdout))


def iperf_gbit_s(cmd: list[str], duration: float) -> float:
    out = run_json([*cmd, "-J", "-t", str(duration)], timeout=duration + 30)
    return float(out["end"]["sum_received"]["bits_per_second"]) / 1e9


def iperf_client(server: str, port: int) -> list[str]:
    return ["iperf3", "-c", server, "-p", str(port)]


def wait_listening(in_ns: list[str], port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run([*in_ns, "ss", "-Hltn", f"sport = :{port}"],
                             capture_output=True, text=True, timeout=10).stdout
        if out.strip():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on port {port}")
        time.sleep(0.05)


class DirectoryBench:
    """One DirectoryWorld with a named iperf3 and probe server, and host twins of both."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.world = DirectoryWorld()
        self.host_ns = ["ip", "netns", "exec", self.world.host]

    def start_servers(self) -> None:
        w = self.world
        w.procs.append(subprocess.Popen(
            w.run_args("iperf3", "-s", "-p", str(IPERF_NAMED_PORT), name="iperf"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        w.procs.append(subprocess.Popen(
            [*self.host_ns, "iperf3", "-s", "-p", str(IPERF_HOST_PORT)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        named = w.spawn(PYTHON, PROBE, "serve", str(PROBE_NAMED_PORT), name="probe")
        host = w.spawn_in_host(PYTHON, PROBE, "serve", str(PROBE_HOST_PORT))
        for server in (named, host):
            if line(server) != "ready":
                raise RuntimeError("probe server did not start")
        w.wait_served("iperf")
        w.wait_served("probe")
        wait_listening(self.host_ns, IPERF_HOST_PORT)

    def vip(self, name: str) -> str:
        return str(self.world.api("resolve", name=name)["vip"])

    def supervised(self, *cmd: str) -> list[str]:
        return self.world.run_args(*cmd)

    def tap(self, *cmd: str) -> list[str]:
        return self.world.run_args(*cmd, directory=False)

    def in_host(self, *cmd: str) -> list[str]:
        return [*self.host_ns, *cmd]

    def throughput(self) -> dict[str, float | None]:
        d, n = self.args.duration, self.args.repeats
        return {
            "by_name": median_of(n, lambda: iperf_gbit_s(
                self.supervised(*iperf_client(self.vip("iperf"), IPERF_NAMED_PORT)), d)),
            "loopback": median_of(n, lambda: iperf_gbit_s(
                self.in_host(*iperf_client("127.0.0.1", IPERF_HOST_PORT)), d)),
            "tap": median_of(n, lambda: iperf_gbit_s(
                self.tap(*iperf_client(TAP_GATEWAY, IPERF_HOST_PORT)), d)),
            "slirp4netns": slirp_gbit_s(d, n) if shutil.which("slirp4netns") else None,
        }

    def getsockname_us(self) -> dict[str, float]:
        n = str(self.args.count)
        timeout = 30 + self.args.count / 1000  # allows 1 ms per trapped call
        by_name = run_json(self.supervised(PYTHON, PROBE, "names", self.vip("probe"),
                                           str(PROBE_NAMED_PORT), n), timeout)
        host = run_json(self.in_host(PYTHON, PROBE, "names", "127.0.0.1",
                                     str(PROBE_HOST_PORT), n), timeout)
        return {
            "supervised_bypassed": by_name["connected_us"],
            "supervised_continued": by_name["local_us"],
            "unsupervised": host["connected_us"],
        }

    def connect_rate(self) -> dict[str, float]:
        s = str(self.args.crr_seconds)
        timeout = self.args.crr_seconds + 30

        def rate(cmd: list[str]) -> float:
            return median_of(self.args.repeats,
                             lambda: float(run_json(cmd, timeout)["conn_per_s"]))

        return {
            "by_name": rate(self.supervised(PYTHON, PROBE, "crr", self.vip("probe"),
                                            str(PROBE_NAMED_PORT), s)),
            "loopback": rate(self.in_host(PYTHON, PROBE, "crr", "127.0.0.1",
                                          str(PROBE_HOST_PORT), s)),
            "tap": rate(self.tap(PYTHON, PROBE, "crr", TAP_GATEWAY, str(PROBE_HOST_PORT), s)),
        }

    def close(self) -> None:
        self.world.close()


def median_of(repeats: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(repeats))


def slirp_gbit_s(duration: float, repeats: int) -> float:
    world = SlirpWorld(SLIRP_MTU)
    try:
        world.spawn_host("iperf3", "-s", "-p", str(IPERF_HOST_PORT))
        wait_listening(world.in_host(), IPERF_HOST_PORT)
        world.start()
        client = world.in_guest(*iperf_client(TAP_GATEWAY, IPERF_HOST_PORT))
        return median_of(repeats, lambda: iperf_gbit_s(client, duration))
    finally:
        world.close()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    bench = DirectoryBench(args)
    try:
        bench.start_servers()
        before = bench.world.stats()
        doc: dict[str, Any] = {
            "machine": machine(),
            "settings": {k: v for k, v in vars(args).items() if k != "out"},
            "throughput_gbit_s": bench.throughput(),
            "getsockname_us": bench.getsockname_us(),
            "connect_rate_per_s": bench.connect_rate(),
        }
        after = bench.world.stats()
        doc["netstackd"] = {k: after[k] - before[k] for k in
                            ("traps", "continued", "bypassed_connects", "accepts", "errors")}
        return doc
    finally:
        bench.close()


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def table(doc: dict[str, Any]) -> str:
    tput, names, rate = (doc["throughput_gbit_s"], doc["getsockname_us"],
                         doc["connect_rate_per_s"])
    m, st = doc["machine"], doc["settings"]
    rows = [
        ("by name (VIP, supervised: host sockets end to end)", tput["by_name"],
         rate["by_name"], names["supervised_bypassed"]),
        ("host loopback, two host processes (no netstack)", tput["loopback"],
         rate["loopback"], names["unsupervised"]),
        ("netstack TAP path (10.0.2.2 -> host loopback)", tput["tap"], rate["tap"], None),
        ("slirp4netns (10.0.2.2 -> host loopback)", tput["slirp4netns"], None, None),
        ("supervised, a trap continued (container-local socket)", None, None,
         names["supervised_continued"]),
    ]
    out = [
        f"Machine: {m['cpu']}, {m['cores']} cores, kernel {m['kernel']}, "
        f"Python {m['python']}, {m['date']}. Medians of {st['repeats']} runs: iperf3 1 stream "
        f"{st['duration']} s, connect loops {st['crr_seconds']} s; getsockname: the best of "
        f"5 rounds of {st['count'] // 5} calls.",
        "",
        "| path | iperf3 1 stream (Gbit/s) | new connections (conn/s) | "
        "getsockname (us/call) |",
        "|---|---|---|---|",
    ]
    for label, gbit, conns, us in rows:
        out.append(f"| {label} | {fmt(gbit)} | {fmt(conns, 0)} | {fmt(us)} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.directory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=2.0, help="seconds per iperf3 run")
    p.add_argument("--crr-seconds", type=float, default=1.5)
    p.add_argument("--count", type=int, default=20000, help="getsockname calls per loop")
    p.add_argument("--repeats", type=int, default=3,
                   help="iperf3 runs and connect loops per figure (the median is kept)")
    p.add_argument("--quick", action="store_true",
                   help="one 1 s iperf3 run, one 0.5 s connect loop and 2,000 calls per "
                        "figure (for tests)")
    p.add_argument("--out", help="also write the JSON document to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.crr_seconds, args.count, args.repeats = 1.0, 0.5, 2000, 1
    doc = measure(args)
    text = json.dumps(doc, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    print()
    print(table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
