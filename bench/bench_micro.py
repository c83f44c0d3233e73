"""pytest-benchmark micro-benchmarks of the hot functions, C against the pure-Python
twin. Run: .venv/bin/pytest bench/bench_micro.py --benchmark-enable

Not collected by the test suite (not named test_*.py): these measure, they do not
test. Each still checks that what it timed did the work (a right checksum, a frame
built, a segment delivered), so a benchmark of a path that drops everything fails
instead of looking fast."""

from __future__ import annotations

import os

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from netstack import _fast
from netstack.wire import ipv4, tcp
from tests.fakes import GUEST_MAC, GW_MAC, Rig

PAYLOAD_1500 = os.urandom(1500)
PAYLOAD_64K = os.urandom(65536)


@pytest.mark.parametrize("impl", ["c", "python"])
@pytest.mark.parametrize("size", [1500, 65536])
def test_checksum(benchmark: object, impl: str, size: int) -> None:
    data = PAYLOAD_1500 if size == 1500 else PAYLOAD_64K
    fn = _fast.checksum if impl == "c" else _fast.py_checksum
    assert benchmark(fn, data) == _fast.py_checksum(data)  # type: ignore[operator]


FRAME = bytes(
    Ether(src=GUEST_MAC, dst=GW_MAC)
    / IP(src="10.0.2.100", dst="10.0.2.2")
    / TCP(sport=40000, dport=80, seq=1, ack=1, flags="A", options=[("Timestamp", (1, 2))])
    / PAYLOAD_1500[:1400]
)


def test_parse_ipv4_tcp(benchmark: object) -> None:
    l3 = memoryview(FRAME)[14:]

    def parse() -> tcp.TcpHeader:
        ip = ipv4.parse(l3)
        return tcp.parse(l3[ip.ihl : ip.total_length])

    seg = benchmark(parse)  # type: ignore[operator]
    assert (seg.src_port, seg.dst_port, seg.seq, seg.options.ts_val) == (40000, 80, 1, 1)


@pytest.mark.parametrize("impl", ["c", "python"])
def test_emit_tcp_segment(benchmark: object, impl: str) -> None:
    rig = Rig()
    from tests.tcp.test_tcp_traces import established

    stream, _ = established(rig)
    conn = rig.host.connects[0][0]
    if impl == "python":
        conn.writer._c_buf = None
    stream.to_guest += PAYLOAD_1500[:1000]

    def one() -> int:
        conn.writer.send(conn.flow, conn.snd_nxt, conn.rcv_nxt, tcp.ACK, 1000, (1, 2), 1000, 1448)
        (frame,) = rig.link.take()
        return len(frame)

    assert benchmark(one) == 14 + 20 + 32 + 1000  # type: ignore[operator]


def test_guest_segment_to_host(benchmark: object) -> None:
    """The whole per-segment path guest -> host: dispatch, parse, flow lookup, send."""
    import struct

    rig = Rig()
    from tests.tcp.test_tcp_traces import ISN, established, seg

    stream, iss = established(rig)
    pkt = bytes(Ether(src=GUEST_MAC, dst=GW_MAC) / seg("A", ISN + 1, iss + 1, b"x" * 1000))
    buf = bytearray(10) + bytearray(pkt)
    state = {"seq": ISN + 1}

    def one() -> None:
        # TCP checksums from the guest are not verified, so patching seq is enough
        struct.pack_into("!I", buf, 10 + 14 + 20 + 4, state["seq"])
        rig.stack.receive(buf, len(buf), rig.now)
        state["seq"] += 1000
        conn.to_host.gathered.clear()  # as if written: the batch never ends here

    conn = rig.host.connects[0][0]
    benchmark(one)  # type: ignore[operator]
    assert conn.rcv_nxt == state["seq"]  # every segment was taken, in order
    assert not rig.stack.stats.drops
