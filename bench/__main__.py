"""bench/run: measure netstack, slirp4netns, pasta and a veth pair side by side, with
loopback (client and server in one namespace, no network between them) as the floor.

For each system and MTU: iperf3 TCP throughput both ways with 1 and 4 streams (and
the stack's CPU seconds per GB moved); iperf3 UDP both ways, unlimited rate
(`-u -b 0`), datagrams of 1400 B at MTU 1500 and 8192 B at MTU 65520 (one frame
each): the rate the receiver got and the loss, and both ways from a GSO sender
(probe.py gso, gsosend: a QUIC stack's 64 KiB UDP_SEGMENT writes, read coalesced on
the other side); DNS queries per second through the guest's DNS address (32 in flight, against
a dnsmasq on the host side's loopback that answers bench.test itself);
request/response latency (p50, p99), new connections per second (probe.py's Python
client and asyncio server, and bench/crr.c's C pair, which leaves the CPU to the
stack, also with its server closing first, and for netstack and slirp4netns also
through a port forward made on the API socket, which they are launched with, as
rootlesskit does; through such a forward iperf3 UDP too, both ways), launch-to-ready
time (also alone: a few launches with `-c` in fresh namespaces; and, for netstack, the
import time to ready under `python -X importtime`, as bench/startup shows in detail),
RSS idle and with 1,000 open flows. Writes
results.json, results.md (ratios to slirp4netns) and PNG charts.

--repeats N runs N rounds, and each round runs every system once (its world set up
afresh), starting each round with a different system: on a shared, noisy machine a slow
spell then falls on all systems alike instead of on the one measured during it. A
figure is the median of its rounds; results.json also keeps each round's value.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report, startup
from bench.worlds import SYSTEMS, World

PROBE = str(Path(__file__).resolve().parent / "probe.py")
PYTHON = "/usr/bin/python3"
IPERF_PORT = "5201"
FWD_IPERF_PORT = "5301"  # iperf3 -s in the guest, behind a port forward
PROBE_PORT = "7777"
CRR_C = Path(__file__).resolve().parent / "crr.c"
CRR_C_PORT = "7778"
CRR_C_CLOSING_PORT = "7779"  # the C pair's server that closes first
GSO_PORT = "7780"  # probe.py gsoserve (and its end marks from 7781)
HOLD_FLOWS = 1000
READY_LAUNCHES = 5  # launches per figure of "ready alone"
# UDP datagram (iperf3 -l) per MTU: the largest round size that fits one frame
UDP_LEN = {1500: 1400, 65520: 8192}
DNS_NAME = "q.bench.test"  # the bench's dnsmasq answers this itself...
DNS_ADDR = "192.0.2.77"  # ...with this (no other resolver would)
DNS_INFLIGHT = 32


def udp_len(mtu: int) -> int:
    return UDP_LEN.get(mtu, min(8192, mtu - 28))


class Dnsmasq:
    """The bench's resolver in the host namespace, on port 53 of every address there
    (127.0.0.1 for the stacks, the veth's for veth): answers DNS_NAME itself, forwards
    nothing (no upstream servers), counts what it answered (SIGUSR1 logs it)."""

    def __init__(self, world: World) -> None:
        self.log = Path(tempfile.mkstemp(prefix="bench-dnsmasq-", suffix=".log")[1])
        self.proc = subprocess.Popen(
            world.in_host(
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--pid-file=",
                f"--log-facility={self.log}",
                f"--address=/{DNS_NAME.split('.', 1)[1]}/{DNS_ADDR}",
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        world.procs.append(self.proc)
        deadline = time.monotonic() + 5
        while "started" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("dnsmasq did not start")
            time.sleep(0.05)

    def answered(self) -> int:
        """Queries answered so far (from its statistics, logged on SIGUSR1)."""
        mark = len(self.log.read_text())
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for line in self.log.read_text()[mark:].splitlines():
                if "queries answered locally" in line:
                    return int(line.rsplit(" ", 1)[1])
            time.sleep(0.05)
        raise RuntimeError("dnsmasq did not report its statistics")

    def close(self) -> None:
        self.log.unlink(missing_ok=True)


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Runner:
    """Every figure of every round, by (system, MTU, metric); a figure is the median of
    the rounds that measured it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.runs: dict[tuple[str, int, str], list[float]] = {}
        self.units: dict[tuple[str, int, str], str] = {}
        self.step = 0
        self.total = 0
        self.imports_top: dict[int, list[str]] = {}
        self.crr_c: str | None = None  # bench/crr.c built (None: no C compiler)

    def record(self, world: World, metric: str, value: float | None, unit: str) -> None:
        """One round's value of a figure (None: this round could not measure it)."""
        self.step += 1
        key = (world.name, world.mtu, metric)
        self.units[key] = unit
        self.runs.setdefault(key, [])
        if value is not None:
            self.runs[key].append(value)
        shown = "n/a" if value is None else f"{value:,.2f}"
        print(
            f"[{self.step:3d}/{self.total}] {world.name:<12} mtu {world.mtu:<6} "
            f"{metric:<34} {shown} {unit}",
            file=sys.stderr,
            flush=True,
        )

    def figures(self) -> list[dict[str, Any]]:
        """Each figure's median over its rounds (None if no round measured it), in the
        order first recorded, with the rounds' values."""
        return [
            {
                "system": system,
                "mtu": mtu,
                "metric": metric,
                "value": statistics.median(values) if values else None,
                "unit": self.units[(system, mtu, metric)],
                "runs": values,
            }
            for (system, mtu, metric), values in self.runs.items()
        ]

    def run_guest(self, world: World, *cmd: str, timeout: float = 120) -> str:
        r = subprocess.run(world.in_guest(*cmd), capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {r.stderr.strip()[-300:]}")
        return r.stdout

    def iperf_run(
        self, world: World, label: str, args: list[str]
    ) -> tuple[dict[str, Any] | None, float | None]:
        """One `iperf3 -c ... ARGS` in the guest: the receiving side's end.sum_received
        (None if the run failed), and the stack's CPU s per GB received."""
        before = proc_cpu_seconds(world.stack_pid) if world.stack_pid else None
        try:
            out = self.run_guest(
                world,
                "iperf3",
                "-p",
                IPERF_PORT,
                "-J",
                "-t",
                str(self.args.duration),
                *args,
                timeout=self.args.duration + 60,
            )
            # the receiver's figures, with or without -R (UDP's end.sum mixes the
            # sender's bytes and rate with the receiver's loss)
            data: dict[str, Any] = json.loads(out)["end"]["sum_received"]
        except (RuntimeError, subprocess.TimeoutExpired, ValueError, KeyError) as e:
            print(f"    {label}: {e!r}", file=sys.stderr)
            return None, None
        if before is None or not world.stack_pid:
            return data, None
        moved_gb = data["bytes"] / 1e9
        used = proc_cpu_seconds(world.stack_pid) - before
        # more CPU than the machine has in the run's time is a bad reading (seen
        # twice, unexplained yet): keep it out of the median
        if used > (self.args.duration + 1) * (os.cpu_count() or 1):
            return data, None
        return data, used / max(moved_gb, 1e-9)

    def record_rate(
        self, world: World, label: str, data: dict[str, Any] | None, cpu: float | None
    ) -> None:
        rate = data["bits_per_second"] / 1e9 if data else None
        self.record(world, label, rate, "Gbit/s")
        if world.stack_pid:
            self.record(world, f"cpu s/GB {label}", cpu, "s/GB")

    def iperf(self, world: World, streams: int, reverse: bool, v6: bool = False) -> None:
        label = f"tcp{'6' if v6 else ''} {'host->guest' if reverse else 'guest->host'} P{streams}"
        server = world.server_ip6 if v6 else world.server_ip
        assert server is not None
        args = ["-c", server, "-P", str(streams), *(["-R"] if reverse else [])]
        self.record_rate(world, label, *self.iperf_run(world, label, args))

    def udp(self, world: World, reverse: bool) -> None:
        """iperf3 UDP at no rate limit: what the receiver got, and the loss (lost /
        sent datagrams, as the receiver counts them from the sequence numbers)."""
        length = udp_len(world.mtu)
        label = f"udp {'host->guest' if reverse else 'guest->host'} {length} B"
        args = ["-c", world.server_ip, "-u", "-b", "0", "-l", str(length)]
        data, cpu = self.iperf_run(world, label, [*args, *(["-R"] if reverse else [])])
        self.record_rate(world, label, data, cpu)
        loss = 100 * data["lost_packets"] / data["packets"] if data and data["packets"] else None
        self.record(world, f"loss {label}", loss, "%")

    def udp_gso(self, world: World, reverse: bool) -> None:
        """UDP from a GSO sender (probe.py gso, gsosend: 64 KiB UDP_SEGMENT writes of
        iperf3's datagram size, read coalesced on the other side, as QUIC does): the rate
        received, the loss and the stack's CPU s per GB."""
        seg = udp_len(world.mtu)
        label = f"udp {'host->guest' if reverse else 'guest->host'} GSO {seg} B"
        before = proc_cpu_seconds(world.stack_pid) if world.stack_pid else None
        try:
            out = json.loads(
                self.run_guest(
                    world,
                    PYTHON,
                    PROBE,
                    "gso" if reverse else "gsosend",
                    world.server_ip,
                    GSO_PORT,
                    str(seg),
                    str(self.args.duration),
                    timeout=self.args.duration + 30,
                )
            )
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
            print(f"    {label}: {e!r}", file=sys.stderr)
            out = None
        self.record(world, label, out["gbit_s"] if out else None, "Gbit/s")
        self.record(world, f"loss {label}", out["loss_pct"] if out else None, "%")
        if world.stack_pid:
            cpu = None
            if before is not None and out:
                cpu = (proc_cpu_seconds(world.stack_pid) - before) / (out["bytes"] / 1e9)
            self.record(world, f"cpu s/GB {label}", cpu, "s/GB")

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
        """Request/response p50/p99 and new connections per second."""
        rr = self.probe(world, "rr", str(self.args.rr_count))
        crr = self.probe(world, "crr", str(self.args.crr_seconds))
        self.record(world, "latency p50", rr["p50_us"] if rr else None, "us")
        self.record(world, "latency p99", rr["p99_us"] if rr else None, "us")
        self.record(world, "new connections", crr["conn_per_s"] if crr else None, "conn/s")
        for port, metric in (
            (CRR_C_PORT, "new connections, C client and server"),
            (CRR_C_CLOSING_PORT, "new connections, C pair, server closes first"),
        ):
            self.record(world, metric, self.crr_c_rate(world, port), "conn/s")

    def crr_c_rate(self, world: World, port: str) -> float | None:
        """bench/crr.c's client against its server on port (None: not built, failed)."""
        if not self.crr_c:
            return None
        try:
            out = self.run_guest(
                world, self.crr_c, "client", world.server_ip, port, str(self.args.crr_seconds)
            )
            return float(json.loads(out)["conn_per_s"])
        except (RuntimeError, subprocess.TimeoutExpired, ValueError, KeyError) as e:
            print(f"    crr (C, port {port}): {e!r}", file=sys.stderr)
            return None

    def forwards(self, world: World) -> None:
        """netstack and slirp4netns: new connections through a port forward (add_hostfwd
        on the API socket, as rootlesskit and podman's slirp4netns port handler use it):
        bench/crr.c's client on the host side's 127.0.0.1, its server in the guest,
        echoing, then closing first."""
        if world.api_path is None:
            return
        # UDP first: after the connection runs slirp4netns's socket list holds thousands
        # of connections in TIME_WAIT, and it walks that list for every datagram (0.07
        # Gbit/s host->guest at 98 % loss, against 0.72 in a fresh world)
        self.forwarded_udp(world)
        # the guest's server closing first goes first: in the other run the stack closes
        # first towards the guest and keeps each connection in TIME_WAIT (slirp4netns
        # too, in its socket list, which then slows its next run)
        for mode, port, metric in (
            ("serve-closing", 7781, "forwarded connections, C pair, guest server closes first"),
            ("serve", 7780, "forwarded connections, C pair"),
        ):
            rate = None
            if self.crr_c:
                try:
                    srv = subprocess.Popen(
                        world.in_guest(self.crr_c, mode, str(port)), stdout=subprocess.PIPE
                    )
                    world.procs.append(srv)
                    assert srv.stdout is not None
                    if srv.stdout.readline().strip() != b"ready":
                        raise RuntimeError(f"crr {mode} did not start in the guest")
                    world.add_forward(10000 + port, port)
                    r = subprocess.run(
                        world.in_host(
                            self.crr_c,
                            "client",
                            "127.0.0.1",
                            str(10000 + port),
                            str(self.args.crr_seconds),
                        ),
                        capture_output=True,
                        text=True,
                        timeout=self.args.crr_seconds + 30,
                    )
                    rate = float(json.loads(r.stdout)["conn_per_s"])
                except (RuntimeError, OSError, ValueError, KeyError) as e:
                    print(f"    forwards ({mode}): {e!r}", file=sys.stderr)
                except subprocess.TimeoutExpired as e:
                    print(f"    forwards ({mode}): {e!r}", file=sys.stderr)
            self.record(world, metric, rate, "conn/s")

    def forwarded_udp(self, world: World) -> None:
        """iperf3 UDP at no rate limit through a port forward (TCP for its control
        connection and UDP on one port): the client on the host side's 127.0.0.1, the
        server in the guest; the receiver's rate and loss, both ways."""
        try:
            srv = subprocess.Popen(
                world.in_guest("iperf3", "-s", "-p", FWD_IPERF_PORT),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            world.procs.append(srv)
            time.sleep(0.3)
            for proto in ("tcp", "udp"):
                world.add_forward(10000 + int(FWD_IPERF_PORT), int(FWD_IPERF_PORT), proto)
        except (RuntimeError, OSError) as e:
            print(f"    forwarded udp: {e!r}", file=sys.stderr)
            return
        length = udp_len(world.mtu)
        for reverse in (False, True):
            label = f"forwarded udp {'guest->host' if reverse else 'host->guest'} {length} B"
            data = None
            try:
                r = subprocess.run(
                    world.in_host(
                        "iperf3",
                        "-c",
                        "127.0.0.1",
                        "-p",
                        str(10000 + int(FWD_IPERF_PORT)),
                        "-J",
                        "-t",
                        str(self.args.duration),
                        "-u",
                        "-b",
                        "0",
                        "-l",
                        str(length),
                        *(["-R"] if reverse else []),
                    ),
                    capture_output=True,
                    text=True,
                    timeout=self.args.duration + 60,
                )
                data = json.loads(r.stdout)["end"]["sum_received"]
            except (subprocess.TimeoutExpired, ValueError, KeyError) as e:
                print(f"    {label}: {e!r}", file=sys.stderr)
            self.record(world, label, data["bits_per_second"] / 1e9 if data else None, "Gbit/s")
            sent = data["packets"] if data else 0
            loss = 100 * data["lost_packets"] / sent if data and sent else None
            self.record(world, f"loss {label}", loss, "%")

    def dns(self, world: World, resolver: Dnsmasq) -> None:
        """Queries per second through the guest's DNS address, p50 latency and
        timeouts. The run counts only if every answer was the bench's address and the
        bench's resolver answered at least as many."""
        if not world.dns_ip:
            return
        out = self.dns_run(world, resolver)
        self.record(world, "dns qps", out["qps"] if out else None, "queries/s")
        self.record(world, "dns p50", out["p50_us"] if out else None, "us")
        self.record(world, "dns timeouts", out["timeouts"] if out else None, "queries")

    def dns_run(self, world: World, resolver: Dnsmasq) -> dict[str, float] | None:
        assert world.dns_ip is not None
        try:
            before = resolver.answered()
            out: dict[str, float] = json.loads(
                self.run_guest(
                    world,
                    PYTHON,
                    PROBE,
                    "dns",
                    world.dns_ip,
                    str(self.args.dns_seconds),
                    str(DNS_INFLIGHT),
                    DNS_NAME,
                    DNS_ADDR,
                    timeout=self.args.dns_seconds + 30,
                )
            )
            got = resolver.answered() - before
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
            print(f"    dns: {e!r}", file=sys.stderr)
            return None
        if out["wrong"] or got < out["answered"]:
            print(
                f"    dns: {out['wrong']:.0f} wrong answers, {out['answered']:.0f} "
                f"answered but the bench's resolver answered {got}: run dropped",
                file=sys.stderr,
            )
            return None
        return out

    def ready_alone(self, world: World) -> None:
        """netstack and slirp4netns: launch to ready with `-c` and this MTU alone, each
        in a fresh namespace (bench/startup's launch), the median of READY_LAUNCHES. The
        world's own launch (the "ready" row) adds -6 and comes right after another
        world's teardown, which the kernel finishes in the background."""
        if world.name not in ("netstack", "slirp4netns"):
            return
        values = []
        for _ in range(READY_LAUNCHES):
            try:
                argv = [*startup.SYSTEMS[world.name], "-m", str(world.mtu)]
                values.append(startup.launch(argv)[0])
            except (RuntimeError, OSError) as e:
                print(f"    ready alone: {e!r}", file=sys.stderr)
        median = statistics.median(values) if values else None
        self.record(world, f"ready alone, -c (median of {READY_LAUNCHES})", median, "ms")

    def imports(self, world: World) -> None:
        """netstack only: its imports to the ready byte, one launch under -X importtime
        (bench/startup prints the breakdown; the costliest few go to results.json)."""
        if world.name != "netstack":
            return
        trace = Path(tempfile.mkstemp(prefix="bench-importtime-")[1])
        try:
            startup.launch([startup.VENV_PYTHON, "-X", "importtime", startup.NETSTACK], str(trace))
            rows = startup.import_costs(trace.read_text())
        except (RuntimeError, OSError, ValueError) as e:
            print(f"    imports: {e!r}", file=sys.stderr)
            rows = []
        finally:
            trace.unlink()
        total = sum(c for c, _s, d, _n in rows if d == 0) / 1000 if rows else None
        self.record(world, "imports to ready (-X importtime)", total, "ms")
        self.imports_top[world.mtu] = startup.top_imports(rows, 10, depth=1)

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
        resolver: Dnsmasq | None = None
        try:
            world.spawn_host("iperf3", "-s", "-p", IPERF_PORT)
            srv = subprocess.Popen(
                world.in_host(PYTHON, PROBE, "serve", PROBE_PORT),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            world.procs.append(srv)
            assert srv.stdout is not None and srv.stdout.readline().strip() == b"ready"
            gso = subprocess.Popen(
                world.in_host(PYTHON, PROBE, "gsoserve", GSO_PORT), stdout=subprocess.PIPE
            )
            world.procs.append(gso)
            assert gso.stdout is not None and gso.stdout.readline().strip() == b"ready"
            if self.crr_c:
                for mode, port in (("serve", CRR_C_PORT), ("serve-closing", CRR_C_CLOSING_PORT)):
                    srv_c = subprocess.Popen(
                        world.in_host(self.crr_c, mode, port), stdout=subprocess.PIPE
                    )
                    world.procs.append(srv_c)
                    assert srv_c.stdout is not None
                    assert srv_c.stdout.readline().strip() == b"ready"
            resolver = Dnsmasq(world)
            world.start()
            time.sleep(0.3)
            self.record(
                world,
                "ready",
                None if world.ready_seconds is None else world.ready_seconds * 1000,
                "ms",
            )
            self.ready_alone(world)
            self.imports(world)
            self.record(
                world,
                "rss idle",
                proc_rss_mib(world.stack_pid) if world.stack_pid else None,
                "MiB",
            )
            if world.latency_only:
                self.dns(world, resolver)
                self.latency(world)
                return
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
            for reverse in (False, True):
                self.udp(world, reverse)
            for reverse in (False, True):
                self.udp_gso(world, reverse)
            self.dns(world, resolver)
            self.latency(world)
            self.hold_flows(world)
            # last: its thousands of short connections leave the stack's heap larger
            # (a 1,000-flow RSS measured after them read 40 MiB instead of 19)
            self.forwards(world)
        finally:
            world.close()
            if resolver is not None:
                resolver.close()


def build_crr_c(build: Path) -> str | None:
    """bench/crr.c built in BUILD (readable by all: pasta's guest commands run as
    nobody); None, and its row n/a, without a C compiler."""
    binary = build / "crr"
    try:
        subprocess.run(
            ["cc", "-O2", "-o", str(binary), str(CRR_C)], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"bench/crr.c not built, its row stays n/a: {e!r}", file=sys.stderr)
        return None
    build.chmod(0o755)
    return str(binary)


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
    p.add_argument("--systems", default="netstack,slirp4netns,pasta,veth,loopback")
    p.add_argument("--mtus", default="1500,65520")
    p.add_argument("--streams", default="1,4")
    p.add_argument("--duration", type=int, default=3, help="seconds per iperf3 run")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="rounds, each running every system once (a figure: the median of its rounds)",
    )
    p.add_argument("--rr-count", type=int, default=3000)
    p.add_argument("--crr-seconds", type=float, default=2.0)
    p.add_argument("--dns-seconds", type=float, default=3.0, help="seconds per DNS run (max 30)")
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
    # ready, rss idle; tcp rate (+ cpu) per streams and way, and tcp6 both ways; udp
    # and udp GSO rate (+ cpu) + loss each way; dns qps, p50, timeouts; latency p50,
    # p99, connections; rss with flows; netstack's imports; ready alone and the
    # forwards' two connection rates and UDP rate + loss each way. CPU: the stacks with
    # a process of their own (pasta's is a new one per command)
    for s in systems:
        cpu = 2 if s in ("netstack", "slirp4netns") else 1
        tcp_runs = len(args.streams) * 2 + (2 if args.ipv6 else 0)
        if SYSTEMS[s].latency_only:
            runner.total += len(mtus) * (2 + 3 + 5)
            continue
        runner.total += len(mtus) * (
            2
            + tcp_runs * cpu
            + 2 * 2 * (cpu + 1)
            + 3
            + 5
            + 1
            + (s == "netstack")
            + 7 * (s in ("netstack", "slirp4netns"))
        )
    runner.total *= args.repeats
    build = tempfile.mkdtemp(prefix="bench-crr-")
    try:
        runner.crr_c = build_crr_c(Path(build))
        for round_no in range(args.repeats):
            # each round starts with another system: none is always measured first
            first = round_no % len(systems)
            for mtu in mtus:
                for system in systems[first:] + systems[:first]:
                    try:
                        runner.one(system, mtu)
                    except Exception as e:  # one broken system must not sink the run
                        print(f"{system} mtu {mtu}: {e!r}", file=sys.stderr)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items()},
        "results": runner.figures(),
        "imports_to_ready": runner.imports_top,
    }
    (out / "results.json").write_text(json.dumps(doc, indent=2))
    md = report.markdown(doc)
    (out / "results.md").write_text(md)
    report.charts(doc, out)
    print(md)
    print(
        f"written: {out}/results.json, results.md, throughput.png, udp.png, latency.png",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
