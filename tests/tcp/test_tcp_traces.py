"""The TCP proxy core as packet traces: scapy segments in from the guest, a fake host
socket on the other side, the stack's segments checked field by field."""

from __future__ import annotations

import errno

import pytest
from scapy.layers.inet import ICMP, IP, TCP, IPerror, TCPerror
from scapy.layers.l2 import Ether

from netstack.stack.config import NetworkConfig
from netstack.tcp import connection as tcpconn
from netstack.tcp import to_host
from netstack.tcp.interfaces import TcpState
from netstack.wire import vnet
from tests.fakes import GUEST_MAC, GW_MAC, FakeStream, Rig

GUEST = "10.0.2.100"
GW = "10.0.2.2"
SPORT = 40000
ISN = 1000
SYN = IP(src=GUEST, dst=GW) / TCP(
    sport=SPORT,
    dport=80,
    seq=ISN,
    flags="S",
    window=64240,
    options=[("MSS", 1460), ("WScale", 7), ("Timestamp", (5000, 0))],
)


def seg(flags: str, seq: int, ack: int, data: bytes = b"", window: int = 2000) -> IP:
    return (
        IP(src=GUEST, dst=GW)
        / TCP(
            sport=SPORT,
            dport=80,
            seq=seq,
            ack=ack,
            flags=flags,
            window=window,
            options=[("Timestamp", (5001, 1))],
        )
        / data
    )


def tcp_of(pkt: object) -> TCP:
    return pkt[TCP]  # type: ignore[index]


def assert_valid_checksums(frame: object) -> None:
    """Rebuild with scapy's checksums and compare."""
    ip_layer = frame[IP]  # type: ignore[index]
    t = ip_layer[TCP]
    want_ip, want_tcp = ip_layer.chksum, t.chksum
    del ip_layer.chksum
    del t.chksum
    rebuilt = IP(bytes(ip_layer))
    assert rebuilt.chksum == want_ip
    assert rebuilt[TCP].chksum == want_tcp


def established(rig: Rig) -> tuple[FakeStream, int]:
    """Handshake; returns the host stream and our ISS."""
    rig.send(SYN)
    assert rig.frames() == []  # nothing until the host side is connected
    stream = rig.connect_ok()
    (synack,) = rig.frames()
    iss = tcp_of(synack).seq
    rig.send(seg("A", ISN + 1, iss + 1))
    return stream, iss


def test_syn_becomes_a_host_connect_to_loopback_and_synack_follows() -> None:
    rig = Rig()
    rig.send(SYN)
    conn, targets, _ = rig.host.connects[0]
    assert targets == [("127.0.0.1", 80)]
    assert conn.state is TcpState.CONNECTING
    rig.connect_ok()
    (synack,) = rig.frames()
    t = tcp_of(synack)
    assert synack[IP].src == GW and synack[IP].dst == GUEST
    assert (t.sport, t.dport, t.flags, t.ack) == (80, SPORT, "SA", ISN + 1)
    opts = dict(t.options)
    assert opts["MSS"] == 1460 and opts["WScale"] == 7
    assert opts["Timestamp"][1] == 5000  # echoes the guest's TSval
    assert_valid_checksums(synack)
    rig.send(seg("A", ISN + 1, t.seq + 1))
    assert conn.state is TcpState.ESTABLISHED


def test_refused_connect_answers_rst() -> None:
    rig = Rig()
    rig.send(SYN)
    rig.connect_fail(errno.ECONNREFUSED)
    (rst,) = rig.frames()
    assert tcp_of(rst).flags == "RA" and tcp_of(rst).ack == ISN + 1
    assert rig.stack.tcp.conns == {}


@pytest.mark.parametrize("err,code", [(errno.ENETUNREACH, 0), (errno.EHOSTUNREACH, 1)])
def test_other_connect_failures_answer_icmp_unreachable(err: int, code: int) -> None:
    rig = Rig()
    rig.send(SYN)
    rig.connect_fail(err)
    (icmp,) = rig.frames()
    assert (icmp[ICMP].type, icmp[ICMP].code) == (3, code)
    quoted = icmp[IPerror]
    assert quoted.src == GUEST and quoted[TCPerror].sport == SPORT
    assert quoted[TCPerror].seq == ISN


def test_disabled_host_loopback_is_network_unreachable_without_any_connect() -> None:
    rig = Rig(NetworkConfig(host_loopback=False))
    rig.send(SYN)
    assert rig.host.connects == []
    (icmp,) = rig.frames()
    assert (icmp[ICMP].type, icmp[ICMP].code) == (3, 0)


@pytest.mark.parametrize("dst", ["127.0.0.1", "0.0.0.0", "10.0.2.77", "224.0.0.1", "169.254.1.1"])
def test_martian_destinations_are_dropped(dst: str) -> None:
    rig = Rig()
    rig.send(IP(src=GUEST, dst=dst) / TCP(sport=SPORT, dport=80, flags="S"))
    assert rig.host.connects == [] and rig.frames() == []
    assert rig.stack.stats.drops["tcp_destination_dropped"] == 1


def test_data_from_guest_goes_to_host_and_is_acked_once_per_batch() -> None:
    rig = Rig()
    stream, iss = established(rig)
    rig.send(seg("PA", ISN + 1, iss + 1, b"hello "))
    rig.send(seg("PA", ISN + 7, iss + 1, b"world"))
    assert bytes(stream.written) == b"hello world"
    acks = rig.frames()
    assert [tcp_of(a).ack for a in acks] == [ISN + 7, ISN + 12]
    # window: the host socket's free space plus the slack, scaled by 2^7
    window = min(stream.space + to_host.PENDING_SLACK, to_host.WINDOW_MAX)
    assert tcp_of(acks[-1]).window == window >> 7


def test_gap_gets_an_immediate_duplicate_ack_and_no_data_passes() -> None:
    rig = Rig()
    stream, iss = established(rig)
    rig.send(seg("PA", ISN + 101, iss + 1, b"later"))
    assert stream.written == b""
    (dup,) = rig.frames()
    assert tcp_of(dup).ack == ISN + 1


def test_retransmitted_overlap_is_trimmed() -> None:
    rig = Rig()
    stream, iss = established(rig)
    rig.send(seg("PA", ISN + 1, iss + 1, b"abcd"))
    rig.send(seg("PA", ISN + 3, iss + 1, b"cdef"))
    assert bytes(stream.written) == b"abcdef"


def test_host_refusing_bytes_keeps_them_pending_and_shrinks_the_window() -> None:
    rig = Rig()
    stream, iss = established(rig)
    stream.accept_limit = 3
    rig.send(seg("PA", ISN + 1, iss + 1, b"abcdefgh"))
    (ack,) = rig.frames()
    assert tcp_of(ack).ack == ISN + 9  # accepted: 3 written, 5 pending
    assert tcp_of(ack).window == (to_host.PENDING_SLACK - 5) >> 7
    stream.accept_limit = None
    conn = rig.host.connects[0][0]
    conn.on_host_writable(rig.now)
    assert bytes(stream.written) == b"abcdefgh"


def test_host_data_to_guest_is_peeked_and_dropped_only_when_acked() -> None:
    rig = Rig()
    stream, iss = established(rig)
    conn = rig.host.connects[0][0]
    stream.to_guest += b"x" * 3000
    conn.on_host_readable(rig.now)
    frames = rig.frames()
    assert [len(tcp_of(f).payload) for f in frames] == [1448, 1448, 104]  # MSS 1460 - 12 (TS)
    assert [tcp_of(f).seq for f in frames] == [iss + 1, iss + 1449, iss + 2897]
    for f in frames:
        assert_valid_checksums(f)
    assert len(stream.to_guest) == 3000  # still in the host socket
    rig.send(seg("A", ISN + 1, iss + 1 + 1448))
    assert len(stream.to_guest) == 3000 - 1448


def test_timeout_retransmits_from_the_oldest_unacked_byte() -> None:
    rig = Rig()
    stream, iss = established(rig)
    conn = rig.host.connects[0][0]
    stream.to_guest += b"y" * 100
    conn.on_host_readable(rig.now)
    assert len(rig.frames()) == 1
    rig.advance(tcpconn.RTO_INITIAL + 0.01)
    (again,) = rig.frames()
    assert tcp_of(again).seq == iss + 1 and bytes(tcp_of(again).payload) == b"y" * 100


def test_three_duplicate_acks_retransmit() -> None:
    rig = Rig()
    stream, iss = established(rig)
    conn = rig.host.connects[0][0]
    stream.to_guest += b"z" * 4000
    conn.on_host_readable(rig.now)
    rig.frames()
    for _ in range(4):  # one that advances, then three duplicates
        rig.send(seg("A", ISN + 1, iss + 1 + 1448))
    resent = rig.frames()
    assert tcp_of(resent[0]).seq == iss + 1 + 1448


def test_zero_window_probe_is_answered() -> None:
    rig = Rig()
    stream, iss = established(rig)
    rig.send(seg("A", ISN, iss + 1))  # seq one below rcv_nxt, no data: a probe
    (ack,) = rig.frames()
    assert tcp_of(ack).ack == ISN + 1 and tcp_of(ack).window > 0


def test_half_close_both_ways_then_time_wait_then_gone() -> None:
    rig = Rig()
    stream, iss = established(rig)
    conn = rig.host.connects[0][0]
    rig.send(seg("FA", ISN + 1, iss + 1, b"bye"))
    assert stream.shut_write and bytes(stream.written) == b"bye"
    (ack,) = rig.frames()
    assert tcp_of(ack).ack == ISN + 5
    stream.to_guest += b"reply"
    stream.eof = True
    conn.on_host_readable(rig.now)
    data, fin = rig.frames()
    assert bytes(tcp_of(data).payload) == b"reply"
    assert tcp_of(fin).flags == "FA" and tcp_of(fin).seq == iss + 6
    rig.send(seg("A", ISN + 5, iss + 7))
    assert conn.state is TcpState.TIME_WAIT
    assert stream.closed == "close"
    # nothing left unread at close: Linux would answer unread bytes with a RST
    assert stream.to_guest == b""
    rig.advance(tcpconn.TIME_WAIT + 0.1)
    assert rig.stack.tcp.conns == {}


def test_guest_reset_resets_the_host_socket() -> None:
    rig = Rig()
    stream, iss = established(rig)
    rig.send(seg("R", ISN + 1, 0))
    assert stream.closed == "reset"
    assert rig.stack.tcp.conns == {}


def test_host_error_resets_the_guest() -> None:
    rig = Rig()
    stream, iss = established(rig)
    conn = rig.host.connects[0][0]
    stream.error = errno.ECONNRESET
    rig.send(seg("PA", ISN + 1, iss + 1, b"data"))
    (rst,) = rig.frames()
    assert "R" in str(tcp_of(rst).flags)
    assert conn.state is TcpState.CLOSED


def test_segment_for_no_connection_gets_rst() -> None:
    rig = Rig()
    rig.send(seg("A", 5, 777))
    (rst,) = rig.frames()
    assert (tcp_of(rst).flags, tcp_of(rst).seq) == ("R", 777)


def test_silent_guest_is_given_up_on() -> None:
    rig = Rig()
    stream, iss = established(rig)
    conn = rig.host.connects[0][0]
    stream.to_guest += b"q" * 10
    conn.on_host_readable(rig.now)
    for _ in range(tcpconn.MAX_RETRIES + 2):
        rig.advance(tcpconn.RTO_MAX)
    assert conn.state is TcpState.CLOSED and stream.closed == "reset"


def test_vnet_link_sends_one_gso_frame_with_partial_checksum() -> None:
    rig = Rig(vnet_enabled=True)
    stream, iss = established(rig)
    conn = rig.host.connects[0][0]
    rig.link.sent.clear()
    conn.guest_window = 1 << 20
    stream.to_guest += b"g" * 60000
    conn.on_host_readable(rig.now)
    ((hdr, frame),) = rig.link.sent
    assert hdr.gso_type == vnet.GSO_TCPV4 and hdr.gso_size == 1448
    assert hdr.flags == vnet.F_NEEDS_CSUM
    assert (hdr.csum_start, hdr.csum_offset) == (34, 16)
    assert len(frame) == 14 + 20 + 32 + 60000


def test_guest_tso_super_segment_is_accepted() -> None:
    rig = Rig(vnet_enabled=True)
    stream, iss = established(rig)
    big = b"B" * 60000
    pkt = seg("PA", ISN + 1, iss + 1, big)
    rig.send(pkt, vnet.VnetHeader(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 66, 1448, 34, 16))
    assert bytes(stream.written) == big


def test_full_table_makes_room_from_time_wait_flows() -> None:
    rig = Rig()
    rig.stack.tcp.max_flows = 1
    stream, iss = established(rig)
    conn = rig.host.connects[0][0]
    rig.send(seg("FA", ISN + 1, iss + 1))
    stream.eof = True
    conn.on_host_readable(rig.now)
    rig.send(seg("A", ISN + 2, iss + 2))
    assert conn.state is TcpState.TIME_WAIT
    rig.stack.tcp.after(conn)
    rig.frames()
    other = IP(src=GUEST, dst=GW) / TCP(sport=SPORT + 1, dport=80, seq=5, flags="S")
    rig.send(other)
    assert len(rig.host.connects) == 2  # admitted: the TIME_WAIT flow gave way
    assert rig.stack.stats.drops["tcp_flow_limit"] == 0


def test_full_table_refuses_new_syns_with_rst() -> None:
    rig = Rig()
    rig.stack.tcp.max_flows = 1
    established(rig)
    rig.send(IP(src=GUEST, dst=GW) / TCP(sport=SPORT + 1, dport=80, seq=5, flags="S"))
    (rst,) = rig.frames()
    assert tcp_of(rst).flags == "RA" and rig.stack.stats.drops["tcp_flow_limit"] == 1


def test_short_peek_stops_reading_until_the_next_edge() -> None:
    rig = Rig()
    stream, iss = established(rig)
    conn = rig.host.connects[0][0]
    stream.to_guest += b"x" * 10
    conn.on_host_readable(rig.now)
    assert len(rig.frames()) == 1
    assert conn.host_readable is False


def test_small_segments_of_a_batch_are_written_with_one_send() -> None:
    rig = Rig()
    stream, iss = established(rig)
    calls = []
    real = stream.send
    stream.send = lambda data: calls.append(len(data)) or real(data)  # type: ignore[method-assign]
    for i in range(5):  # one batch: frames in, then end_of_batch once
        pkt = Ether(src=GUEST_MAC, dst=GW_MAC) / seg(
            "PA", ISN + 1 + 100 * i, iss + 1, bytes([65 + i]) * 100
        )
        buf = bytearray(bytes(10) + bytes(pkt))
        rig.stack.receive(buf, len(buf), rig.now)
    assert stream.written == b""  # nothing yet: gathered
    rig.stack.end_of_batch(rig.now)
    assert calls == [500]
    assert bytes(stream.written) == b"".join(bytes([65 + i]) * 100 for i in range(5))
    (ack,) = rig.frames()
    assert tcp_of(ack).ack == ISN + 501


def test_a_guest_ignoring_our_window_gets_nothing_past_its_right_edge() -> None:
    """A host peer that accepts and never reads: the guest pushes on regardless of the
    window; what it sends past the edge we advertised is neither taken nor ACKed."""
    rig = Rig()
    stream, iss = established(rig)
    stream.space = 0  # the socket is full and never drains
    stream.accept_limit = 0
    conn = rig.host.connects[0][0]
    seq = ISN + 1
    for _ in range(3000):  # 3 MB, in order, 1000 bytes a segment
        rig.send(seg("PA", seq, iss + 1, b"z" * 1000))
        seq += 1000
    acks = [tcp_of(f) for f in rig.frames()]
    # the SYN-ACK offered 64 KiB, the slack; once bytes wait it only shrinks
    assert len(conn.to_host.pending) <= to_host.PENDING_SLACK + 1
    assert conn.rcv_nxt == conn.rcv_adv == ISN + 1 + len(conn.to_host.pending)
    assert acks[-1].ack == conn.rcv_adv and acks[-1].window == 0
    assert rig.stack.stats.snapshot()["drops"]["tcp_beyond_window"] > 0


def test_pending_bytes_stay_within_the_budget_the_flows_share() -> None:
    rig = Rig()
    budget = rig.stack.tcp.pending_budget  # one for the table: every flow charges it
    budget.limit = 20_000
    stream, iss = established(rig)
    stream.space = 0
    stream.accept_limit = 0
    seq = ISN + 1
    for _ in range(300):
        rig.send(seg("PA", seq, iss + 1, b"z" * 1000))
        seq += 1000
    conn = rig.host.connects[0][0]
    assert budget.used == len(conn.to_host.pending) <= 20_000
    assert budget.refused > 0 and conn.rcv_nxt == ISN + 1 + budget.used
    assert tcp_of(rig.frames()[-1]).window == 0
    stream.accept_limit = None
    conn.on_host_writable(rig.now)
    assert budget.used == 0
