"""bench/run's pieces that need no namespaces: the DNS probe against a small resolver on
loopback, the GSO probe against its sender on loopback, the report's per-MTU tables,
and how rounds become figures."""

from __future__ import annotations

import argparse
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

from bench import probe, report
from bench.__main__ import Runner


def answer_a(query: bytes, addr: str) -> bytes:
    """The reply a resolver gives: the question repeated, one A record."""
    qid = struct.unpack_from("!H", query)[0]
    header = struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0)
    record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(addr)
    return header + query[12:] + record


def test_dns_query_is_an_a_question_for_the_name() -> None:
    q = probe.dns_query(0x1234, "q.bench.test")
    assert q[:12] == struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    assert q[12:] == b"\x01q\x05bench\x04test\x00\x00\x01\x00\x01"


def test_dns_probe_counts_answers_and_wrong_ones() -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    stop = threading.Event()
    seen = [0]

    def serve() -> None:
        while not stop.is_set():
            try:
                q, peer = srv.recvfrom(512)
            except TimeoutError:
                continue
            seen[0] += 1
            # every 10th answer names another address: counted as wrong
            srv.sendto(answer_a(q, "192.0.2.78" if seen[0] % 10 == 0 else "192.0.2.77"), peer)

    t = threading.Thread(target=serve)
    t.start()
    try:
        out = probe.dns("127.0.0.1", 0.3, 4, "q.bench.test", "192.0.2.77", port)
    finally:
        stop.set()
        t.join()
        srv.close()
    assert out["answered"] > 10 and out["wrong"] > 0
    assert out["answered"] + out["wrong"] <= out["sent"] <= seen[0] + 4
    assert out["qps"] > 0 and out["p50_us"] > 0 and out["timeouts"] == 0


def free_port_pair() -> int:
    """A UDP port on loopback whose next one is free too (gsoserve takes both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no free port pair")


def test_gso_probes_move_segment_writes_both_ways_and_count_the_loss() -> None:
    port = free_port_pair()
    srv = subprocess.Popen(
        [sys.executable, str(Path(probe.__file__)), "gsoserve", str(port)],
        stdout=subprocess.PIPE,
    )
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == b"ready"
        out = probe.gso("127.0.0.1", port, 1400, 0.3)
        again = probe.gso("127.0.0.1", port, 8192, 0.3)  # it serves one run after another
        sent = probe.gso_send("127.0.0.1", port, 1400, 0.3)  # and the other way
    finally:
        srv.kill()
        srv.wait()
    for o in (out, again, sent):
        assert o["gbit_s"] > 0.1 and o["bytes"] > 1_000_000
        assert 0 <= o["loss_pct"] < 100


def test_report_shows_each_mtu_its_own_rows() -> None:
    rows = [
        ("slirp4netns", 1500, "udp guest->host 1400 B", 0.5, "Gbit/s"),
        ("netstack", 1500, "udp guest->host 1400 B", 1.5, "Gbit/s"),
        ("slirp4netns", 65520, "udp guest->host 8192 B", 1.0, "Gbit/s"),
        ("netstack", 65520, "udp guest->host 8192 B", 2.0, "Gbit/s"),
        ("slirp4netns", 1500, "dns qps", 1000.0, "queries/s"),
        ("netstack", 1500, "dns qps", 3000.0, "queries/s"),
    ]
    doc = {
        "machine": {"cpu": "c", "cores": 2, "kernel": "k", "python": "3", "date": "d"},
        "results": [
            {"system": s, "mtu": m, "metric": k, "value": v, "unit": u} for s, m, k, v, u in rows
        ],
    }
    md = report.markdown(doc)
    mtu1500, mtu65520 = md.split("**MTU 65520**")
    assert "1400 B" in mtu1500 and "8192 B" not in mtu1500
    assert "8192 B" in mtu65520 and "1400 B" not in mtu65520
    # columns in order of first appearance, ratios to slirp4netns
    assert "| dns qps (queries/s) | 1,000 | 3,000 (3.0x) |" in mtu1500
    assert "| udp guest->host 8192 B (Gbit/s) | 1.00 | 2.00 (2.0x) |" in mtu65520


class FakeWorld:
    def __init__(self, name: str, mtu: int) -> None:
        self.name = name
        self.mtu = mtu


def test_a_figure_is_the_median_of_the_rounds_that_measured_it() -> None:
    args = argparse.Namespace(repeats=3)
    runner = Runner(args)
    ours, theirs = FakeWorld("netstack", 1500), FakeWorld("slirp4netns", 1500)
    # three rounds, the systems interleaved as bench.main runs them; one round failed
    for rate, base in ((5000.0, 3400.0), (None, 3300.0), (4800.0, 3500.0)):
        runner.record(ours, "new connections", rate, "conn/s")  # type: ignore[arg-type]
        runner.record(theirs, "new connections", base, "conn/s")  # type: ignore[arg-type]
    runner.record(theirs, "rss with 1000 flows", None, "MiB")  # type: ignore[arg-type]
    figures = runner.figures()
    assert [(f["system"], f["metric"]) for f in figures] == [
        ("netstack", "new connections"),
        ("slirp4netns", "new connections"),
        ("slirp4netns", "rss with 1000 flows"),
    ]
    assert figures[0]["value"] == 4900.0 and figures[0]["runs"] == [5000.0, 4800.0]
    assert figures[1]["value"] == 3400.0 and figures[1]["runs"] == [3400.0, 3300.0, 3500.0]
    assert figures[2]["value"] is None and figures[2]["runs"] == []
    assert all(f["unit"] for f in figures)
    # the report reads the medians
    md = report.markdown(
        {
            "machine": {"cpu": "x", "cores": 2, "kernel": "k", "python": "3", "date": "d"},
            "results": figures,
        }
    )
    assert "| new connections (conn/s) | 4,900 (1.4x) | 3,400 |" in md
