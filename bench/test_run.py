"""bench/run's pieces that need no namespaces: the DNS probe against a small resolver on
loopback, and the report's per-MTU tables."""

from __future__ import annotations

import socket
import struct
import threading

from bench import probe, report


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
