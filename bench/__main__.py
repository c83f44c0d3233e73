"""bench/run: measure netstack, slirp4netns, pasta and a veth pair side by side.

For each system and MTU: iperf3 TCP throughput both ways with 1 and 4 streams (and
the stack's CPU seconds per GB moved), request/response latency (p50, p99), new
connections per second, launch-to-ready time, RSS idle and with 1,000 open flows.
Writes results.json, results.md (ratios to slirp4netns) and PNG charts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.worlds import SYSTEMS, World

PROBE = str(Path(__file__).resolve().parent / "probe.py")
PYTHON = "/usr/bin/python3"
IPERF_PORT = "5201"
PROBE_PORT = "7777"
HOLD_FLOWS = 1000


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results: list[dict[str, Any]] = []
        self.step = 0
        self.total = 0

    def record(self, world: World, metric: str, value: float | None, unit: str) -> None:
        self.step += 1
        self.results.append(
            {"system": world.name, "mtu": world.mtu, "metric": metric, "value": value, "unit": unit}
        )
        shown = "n/a" if value is None else f"{value:,.2f}"
        print(
            f"[{self.step:3d}/{self.total}] {world.name:<12} mtu {world.mtu:<6} "
            f"{metric:<34} {shown} {unit}",
            file=sys.stderr,
            flush=True,
        )

    def run_guest(self, world: World, *cmd: str, timeout: float = 120) -> str:
        r = subprocess.run(world.in_guest(*cmd), capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {r.stderr.strip()[-300:]}")
        return r.stdout

    def iperf(self, world: World, streams: int, reverse: bool, v6: bool = False) -> None:
        label = f"tcp{'6' if v6 else ''} {'host->guest' if reverse else 'guest->host'} P{streams}"
        server = world.server_ip6 if v6 else world.server_ip
        assert server is not None
        values, cpu = [], []
        for _ in range(self.args.repeats):
            before = proc_cpu_seconds(world.stack_pid) if world.stack_pid else None
            try:
                out = self.run_guest(
                    world,
                    "iperf3",
                    "-c",
                    server,
                    "-p",
                    IPERF_PORT,
                    "-J",
                    "-t",
                    str(self.args.duration),
                    "-P",
                    str(streams),
                    *(["-R"] if reverse else []),
                    timeout=self.args.duration + 60,
                )
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                print(f"    {label}: {e}", file=sys.stderr)
                continue
            data = json.loads(out)["end"]["sum_received"]
            values.append(data["bits_per_second"] / 1e9)
            if before is not None and world.stack_pid:
                moved_gb = data["bytes"] / 1e9
                used = proc_cpu_seconds(world.stack_pid) - before
                # more CPU than the machine has in the run's time is a bad reading
                # (seen twice, unexplained yet): keep it out of the median
                if used <= (self.args.duration + 1) * (os.cpu_count() or 1):
                    cpu.append(used / max(moved_gb, 1e-9))
        self.record(world, label, statistics.median(values) if values else None, "Gbit/s")
        if world.stack_pid:
            self.record(world, f"cpu s/GB {label}", statistics.median(cpu) if cpu else None, "s/GB")

    def probe(self, world: World, kind: str, arg: str) -> dict[str, float] | None:
        """One probe.py run in the guest against the host's probe server."""
        try:
            out: dict[str, float] = json.loads(
                self.run_guest(world, PYTHON, PROBE, kind, world.server_ip, PROBE_PORT, arg)
            )
            return out
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print(f"    {kind}: {e}", file=sys.stderr)
            return None

    def latency(self, world: World) -> None:
        """Request/response p50/p99 and new connections per second, each the median of
        --repeats runs (a 2-core machine shared by client, server and stack is noisy)."""
        p50: list[float] = []
        p99: list[float] = []
        rates: list[float] = []
        for _ in range(self.args.repeats):
            rr = self.probe(world, "rr", str(self.args.rr_count))
            if rr is not None:
                p50.append(rr["p50_us"])
                p99.append(rr["p99_us"])
            crr = self.probe(world, "crr", str(self.args.crr_seconds))
            if crr is not None:
                rates.append(crr["conn_per_s"])
        self.record(world, "latency p50", statistics.median(p50) if p50 else None, "us")
        self.record(world, "latency p99", statistics.median(p99) if p99 else None, "us")
        self.record(world, "new connections", statistics.median(rates) if rates else None, "conn/s")

    def hold_flows(self, world: World) -> None:
        if not world.stack_pid or isinstance(world, SYSTEMS["pasta"]):
            self.record(world, f"rss with {HOLD_FLOWS} flows", None, "MiB")
            return
        with tempfile.TemporaryDirectory() as d:
            flag = Path(d) / "held"
            p = subprocess.Popen(
                world.in_guest(
                    PYTHON, PROBE, "hold", world.server_ip, PROBE_PORT, str(HOLD_FLOWS), str(flag)
                ),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            deadline = time.monotonic() + 60
            while not flag.exists() and p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            value = proc_rss_mib(world.stack_pid) if flag.exists() else None
            assert p.stdin is not None
            p.stdin.close()
            p.wait(60)
        self.record(world, f"rss with {HOLD_FLOWS} flows", value, "MiB")

    def one(self, system: str, mtu: int) -> None:
        world = SYSTEMS[system](mtu, ipv6=self.args.ipv6)
        try:
            world.spawn_host("iperf3", "-s", "-p", IPERF_PORT)
            srv = subprocess.Popen(
                world.in_host(PYTHON, PROBE, "serve", PROBE_PORT),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            world.procs.append(srv)  # type: ignore[arg-type]
            assert srv.stdout is not None and srv.stdout.readline().strip() == b"ready"
            world.start()
            time.sleep(0.3)
            self.record(
                world,
                "ready",
                None if world.ready_seconds is None else world.ready_seconds * 1000,
                "ms",
            )
            self.record(
                world,
                "rss idle",
                proc_rss_mib(world.stack_pid) if world.stack_pid and system != "veth" else None,
                "MiB",
            )
            for streams in self.args.streams:
                for reverse in (False, True):
                    self.iperf(world, streams, reverse)
            if self.args.ipv6:
                if world.server_ip6 is not None and world.wait_ipv6():
                    for reverse in (False, True):
                        self.iperf(world, 1, reverse, v6=True)
                else:
                    for reverse in (False, True):
                        d = "host->guest" if reverse else "guest->host"
                        self.record(world, f"tcp6 {d} P1", None, "Gbit/s")
                        if world.stack_pid:
                            self.record(world, f"cpu s/GB tcp6 {d} P1", None, "s/GB")
            self.latency(world)
            self.hold_flows(world)
        finally:
            world.close()


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "kernel": platform.release(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main() -> int:
    p = argparse.ArgumentParser(
        prog="bench/run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--systems", default="netstack,slirp4netns,pasta,veth")
    p.add_argument("--mtus", default="1500,65520")
    p.add_argument("--streams", default="1,4")
    p.add_argument("--duration", type=int, default=3, help="seconds per iperf3 run")
    p.add_argument("--repeats", type=int, default=1, help="runs per figure (median kept)")
    p.add_argument("--rr-count", type=int, default=3000)
    p.add_argument("--crr-seconds", type=float, default=2.0)
    p.add_argument(
        "--ipv6",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure TCP over IPv6 (netstack and slirp4netns with -6, veth)",
    )
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args()
    args.streams = [int(s) for s in args.streams.split(",")]
    systems = args.systems.split(",")
    mtus = [int(m) for m in args.mtus.split(",")]
    for s in systems:
        if s not in SYSTEMS:
            p.error(f"unknown system {s}; known: {', '.join(SYSTEMS)}")
    runner = Runner(args)
    per_world = 2 + len(args.streams) * 2 * 2 + 3 + 1 + (4 if args.ipv6 else 0)
    runner.total = per_world * len(systems) * len(mtus)
    for mtu in mtus:
        for system in systems:
            try:
                runner.one(system, mtu)
            except Exception as e:  # one broken system must not sink the run
                print(f"{system} mtu {mtu}: {e!r}", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items()},
        "results": runner.results,
    }
    (out / "results.json").write_text(json.dumps(doc, indent=2))
    md = report.markdown(doc)
    (out / "results.md").write_text(md)
    report.charts(doc, out)
    print(md)
    print(f"written: {out}/results.json, results.md, throughput.png, latency.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
