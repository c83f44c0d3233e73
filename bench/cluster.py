"""bench/cluster: the directory across two hosts, in well under a minute
(`.venv/bin/python -m bench.cluster`; needs root and Debian's etcd-server).

Two "hosts" from tests/helpers/cluster.py: network namespaces A (192.0.2.1) and B
(192.0.2.2) on one veth, a real etcd in A, a netstackd in each on it
(`--store etcd://... --publish-addr ...`). Traffic only between those namespaces.

  throughput    iperf3, one stream B -> A, the median of REPEATS runs of DURATION s:
                  by name   iperf3 -c VIP under netstack-run on B (supervised) -> an
                            iperf3 -s container on A registered as `iperf`: the connect
                            is trapped once, then a host socket on B talks to A's
                            published port (no encapsulation)
                  veth      iperf3 in B's namespace -> iperf3 -s in A's namespace on
                            192.0.2.1 (the raw path between the two hosts, the ceiling)
  visibility    COUNT registrations one after another: a supervised container on A
                listens on a new port of the name `vis`; the time from its listen()
                returning to the instance appearing in B's watch stream (what B's
                syscall path and TAP path route by): p50, p99, max in ms

Prints the JSON document and a markdown table (also written to --out).
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.__main__ import machine
from bench.directory import iperf_gbit_s, median_of, wait_listening
from tests.helpers.cluster import Cluster, Host

IPERF_NAMED_PORT = 5201
IPERF_VETH_PORT = 5202
VIS_BASE_PORT = 30000
PYTHON = "/usr/bin/python3"

# listens on BASE+i for every line read from stdin, printing `listened TIME PORT`
# (netstackd takes at most 64 instances per container: a new container every PER_LISTENER)
PER_LISTENER = 50
LISTENER = """
import socket, sys, time
base = int(sys.argv[1])
socks = []
print("ready", flush=True)
for i, _ in enumerate(sys.stdin):
    s = socket.socket()
    s.bind(("0.0.0.0", base + i))
    s.listen(4)
    print("listened", repr(time.time()), base + i, flush=True)
    socks.append(s)
"""


class Watch:
    """B's `watch` stream: whole views, newest last."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.sendall(b'{"execute": "watch"}')
        self.buf = b""

    def ports_of(self, name: str, deadline: float) -> tuple[float, set[int]] | None:
        """The next view (when it arrived, the ports name is served on), or None."""
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                return None
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("watch closed")
            self.buf += chunk
        arrived = time.time()
        text, self.buf = self.buf.split(b"\n", 1)
        for svc in json.loads(text)["view"]["services"]:
            if svc["name"] == name:
                return arrived, {i["port"] for i in svc["instances"]}
        return arrived, set()

    def close(self) -> None:
        self.sock.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class ClusterBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cluster = Cluster(ttl=5)

    @staticmethod
    def in_host(h: Host, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", h.host, *cmd]

    def throughput(self) -> dict[str, float]:
        a, b = self.cluster.a, self.cluster.b
        d, n = self.args.duration, self.args.repeats
        a.procs.append(subprocess.Popen(
            a.run_args("iperf3", "-s", "-p", str(IPERF_NAMED_PORT), name="iperf"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        a.procs.append(subprocess.Popen(
            self.in_host(a, "iperf3", "-s", "-B", a.addr, "-p", str(IPERF_VETH_PORT)),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        b.wait_served("iperf")
        wait_listening(self.in_host(a), IPERF_VETH_PORT)
        vip = str(b.api("resolve", name="iperf")["vip"])
        by_name = b.run_args("iperf3", "-c", vip, "-p", str(IPERF_NAMED_PORT))
        veth = self.in_host(b, "iperf3", "-c", a.addr, "-p", str(IPERF_VETH_PORT))
        before = b.stats()["bypassed_connects"]
        out = {"by_name": median_of(n, lambda: iperf_gbit_s(by_name, d)),
               "veth": median_of(n, lambda: iperf_gbit_s(veth, d))}
        if b.stats()["bypassed_connects"] <= before:
            raise RuntimeError("the by-name runs did not go through B's netstackd")
        return out

    def visibility(self) -> dict[str, float]:
        b = self.cluster.b
        watch = Watch(b.socket)
        samples: list[float] = []
        try:
            done = 0
            while done < self.args.count:
                n = min(PER_LISTENER, self.args.count - done)
                samples += self._register(watch, VIS_BASE_PORT + done, n)
                done += n
        finally:
            watch.close()
        return {"count": float(len(samples)), "p50_ms": percentile(samples, 0.5),
                "p99_ms": percentile(samples, 0.99), "max_ms": max(samples),
                "mean_ms": statistics.fmean(samples)}

    def _register(self, watch: Watch, base: int, n: int) -> list[float]:
        """n registrations from one container on A, each timed until B's view has it."""
        a = self.cluster.a
        listener = subprocess.Popen(a.run_args(PYTHON, "-c", LISTENER, str(base), name="vis"),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        a.procs.append(listener)  # type: ignore[arg-type]
        assert listener.stdin is not None and listener.stdout is not None
        samples: list[float] = []
        try:
            if listener.stdout.readline().strip() != "ready":
                raise RuntimeError("the listener did not start")
            for _ in range(n):
                listener.stdin.write("next\n")
                listener.stdin.flush()
                words = listener.stdout.readline().split()
                if len(words) != 3 or words[0] != "listened":
                    listener.kill()
                    err = listener.stderr.read() if listener.stderr else ""
                    raise RuntimeError(f"listener said {words!r}: {err[-1000:]}")
                listened, port = float(words[1]), int(words[2])
                deadline = time.monotonic() + 10
                while True:
                    got = watch.ports_of("vis", deadline)
                    if got is None:
                        raise RuntimeError(f"port {port} of vis never reached B")
                    if port in got[1]:
                        samples.append((got[0] - listened) * 1000)
                        break
        finally:
            listener.stdin.close()
            listener.wait(10)
        return samples

    def close(self) -> None:
        self.cluster.close()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    bench = ClusterBench(args)
    try:
        return {"machine": machine(),
                "settings": {k: v for k, v in vars(args).items() if k != "out"},
                "throughput_gbit_s": bench.throughput(),
                "visible_on_other_host_ms": bench.visibility()}
    finally:
        bench.close()


def table(doc: dict[str, Any]) -> str:
    t, v, m, st = (doc["throughput_gbit_s"], doc["visible_on_other_host_ms"], doc["machine"],
                   doc["settings"])
    return "\n".join([
        f"Machine: {m['cpu']}, {m['cores']} cores, kernel {m['kernel']}, Python "
        f"{m['python']}, {m['date']}. iperf3 1 stream, median of {st['repeats']} runs of "
        f"{st['duration']} s; visibility over {int(v['count'])} registrations.",
        "",
        "| across two hosts (namespaces on a veth, etcd 3.4) | figure |",
        "|---|---|",
        f"| by name: supervised iperf3 on B -> `iperf` on A (Gbit/s) | {t['by_name']:.2f} |",
        f"| raw veth: iperf3 host B -> host A (Gbit/s) | {t['veth']:.2f} |",
        f"| by name / raw veth | {t['by_name'] / t['veth']:.0%} |",
        f"| registration on A visible in B's view, p50 (ms) | {v['p50_ms']:.1f} |",
        f"| registration on A visible in B's view, p99 (ms) | {v['p99_ms']:.1f} |",
        f"| registration on A visible in B's view, max (ms) | {v['max_ms']:.1f} |",
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=3.0, help="seconds per iperf3 run")
    p.add_argument("--repeats", type=int, default=3, help="iperf3 runs per figure (median)")
    p.add_argument("--count", type=int, default=100, help="registrations timed")
    p.add_argument("--quick", action="store_true",
                   help="one 1 s iperf3 run per path and 10 registrations (for tests)")
    p.add_argument("--out", help="also write the JSON document to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.repeats, args.count = 1.0, 1, 10
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
