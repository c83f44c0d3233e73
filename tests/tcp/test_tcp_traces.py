"""The TCP proxy core as packet traces: scapy segments in from the guest, a fake host
socket on the other side, the stack's segments checked field by field."""

from __future__ import annotations

import errno
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, IPerror, TCPerror
from scapy.layers.l2 import ARP, Ether

from netstack import _fast
from netstack.stack.config import NetworkConfig
from netstack.tcp import connection as tcpconn
from netstack.tcp import to_host
from netstack.tcp.interfaces import TcpState
from netstack.tcp.output import FlowAddrs
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


def test_a_connect_complete_within_connect_is_answered_in_the_same_batch() -> None:
    # a loopback connect is established when connect() returns: the SYN-ACK goes with
    # the SYN's batch, not after the loop's next wait for the socket's event
    rig = Rig()
    rig.host.connect_at_once = True
    rig.send(SYN)
    (synack,) = rig.frames()
    assert tcp_of(synack).flags == "SA" and tcp_of(synack).ack == ISN + 1
    assert conn_of(rig).state is TcpState.SYN_RECEIVED


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


def test_keepalive_is_answered_with_our_window() -> None:
    rig = Rig()
    stream, iss = established(rig)
    rig.send(seg("A", ISN, iss + 1))  # seq one below rcv_nxt, no data: a keepalive
    (ack,) = rig.frames()
    assert tcp_of(ack).flags == "A" and tcp_of(ack).seq == iss + 1
    assert tcp_of(ack).ack == ISN + 1 and tcp_of(ack).window > 0
    assert stream.written == b""


def test_half_close_both_ways_the_guest_first_then_gone_at_once() -> None:
    # the guest closes first: we close passively, LAST-ACK -> CLOSED (RFC 9293 3.6)
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
    assert conn.state is TcpState.CLOSED
    assert stream.closed == "close"
    # nothing left unread at close: Linux would answer unread bytes with a RST
    assert stream.to_guest == b""
    assert rig.stack.tcp.conns == {}


def host_closes_first(rig: Rig) -> tuple[FakeStream, int, tcpconn.TcpConnection]:
    """Established, then the host's EOF (our FIN first), the guest's ACK of it and its
    own FIN, which we acknowledge: we closed actively."""
    stream, iss = established(rig)
    conn = conn_of(rig)
    stream.eof = True
    host_readable(rig, conn)
    (fin,) = rig.frames()
    assert tcp_of(fin).flags == "FA" and tcp_of(fin).seq == iss + 1
    rig.send(seg("A", ISN + 1, iss + 2))
    assert conn.state is TcpState.ESTABLISHED  # the guest's side is still open
    rig.send(seg("FA", ISN + 1, iss + 2))
    (ack,) = rig.frames()
    assert tcp_of(ack).ack == ISN + 2
    return stream, iss, conn


def test_half_close_both_ways_the_host_first_then_time_wait_then_gone() -> None:
    rig = Rig()
    stream, _, conn = host_closes_first(rig)
    assert conn.state is TcpState.TIME_WAIT and stream.shut_write
    assert stream.closed == "close"
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


@pytest.mark.parametrize("builder", ["c", "python"])
def test_vnet_link_sends_one_gso_frame_with_partial_checksum(builder: str) -> None:
    rig = Rig(vnet_enabled=True)
    if builder == "python":
        rig.stack.segments._c_buf = None  # the C frame builder's pure-Python twin
    elif not _fast.FAST:
        pytest.skip("C fast path not built")
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
    assert_partial_checksum(bytes(frame), hdr)


def assert_partial_checksum(frame: bytes, hdr: vnet.VnetHeader) -> None:
    """F_NEEDS_CSUM: the checksum field holds the pseudo-header sum (not inverted), so
    that the kernel (or NIC) finishing it, by summing from csum_start and storing the
    complement at csum_start + csum_offset, makes the segment's checksum right."""
    start, at = hdr.csum_start, hdr.csum_start + hdr.csum_offset
    ip_layer = Ether(frame)[IP]
    tcp_len = len(frame) - start
    pseudo = bytes(map(int, ip_layer.src.split("."))) + bytes(map(int, ip_layer.dst.split(".")))
    pseudo += bytes([0, 6]) + tcp_len.to_bytes(2, "big")
    assert int.from_bytes(frame[at : at + 2], "big") == fold(pseudo)
    finished = bytearray(frame)  # what the kernel does: the field is part of the sum
    struct.pack_into("!H", finished, at, 0xFFFF - fold(frame[start:]))
    assert_valid_checksums(Ether(bytes(finished)))


def fold(data: bytes) -> int:
    """The ones'-complement sum of data, folded to 16 bits (not inverted)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


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
    _, _, conn = host_closes_first(rig)
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


# ------------------------------------------------------------------------------------
# The rules of RFC 9293 / RFC 5961, one trace each, grouped by state.


def host_readable(rig: Rig, conn: tcpconn.TcpConnection) -> None:
    """The host socket has data: what the runtime does (the event, then bookkeeping)."""
    conn.on_host_readable(rig.now)
    rig.stack.tcp.after(conn)


def conn_of(rig: Rig, index: int = -1) -> tcpconn.TcpConnection:
    return rig.host.connects[index][0]


def in_flight(rig: Rig, stream: FakeStream, nbytes: int) -> tuple[tcpconn.TcpConnection, list]:
    conn = conn_of(rig)
    stream.to_guest += bytes(range(256)) * (nbytes // 256) + bytes(nbytes % 256)
    host_readable(rig, conn)
    return conn, rig.frames()


# --- CONNECTING: the host connect() is in progress


def test_connect_that_never_completes_times_out_as_host_unreachable() -> None:
    rig = Rig()
    rig.send(SYN)
    conn, _, stream = rig.host.connects[0]
    rig.advance(tcpconn.CONNECT_TIMEOUT - 1)
    assert rig.frames() == [] and conn.state is TcpState.CONNECTING
    rig.advance(1.01)
    (icmp,) = rig.frames()
    assert (icmp[ICMP].type, icmp[ICMP].code) == (3, 1)
    assert icmp[IPerror][TCPerror].seq == ISN
    assert conn.state is TcpState.CLOSED and stream.closed == "reset"
    assert rig.stack.tcp.conns == {}


def test_segments_before_our_synack_are_ignored() -> None:
    rig = Rig()
    rig.send(SYN)
    conn = conn_of(rig)
    rig.send(seg("PA", ISN + 1, 12345, b"early"))
    assert rig.frames() == [] and conn.state is TcpState.CONNECTING
    assert rig.host.connects[0][2].written == b""


# --- SYN_RECEIVED: our SYN-ACK is out, the guest's ACK is awaited


def test_lost_synack_is_retransmitted_then_the_handshake_is_given_up() -> None:
    rig = Rig()
    rig.send(SYN)
    stream = rig.connect_ok()
    conn = conn_of(rig)
    (first,) = rig.frames()
    iss = tcp_of(first).seq
    rto = tcpconn.RTO_INITIAL
    for _ in range(tcpconn.SYNACK_RETRIES):
        rig.advance(rto * 0.9)
        assert rig.frames() == []  # not before the timeout
        rig.advance(rto * 0.1 + 0.001)
        (again,) = rig.frames()
        t = tcp_of(again)
        assert (t.flags, t.seq, t.ack) == ("SA", iss, ISN + 1)
        assert dict(t.options)["MSS"] == 1460
        rto *= 2  # exponential backoff
    assert conn.state is TcpState.SYN_RECEIVED
    rig.advance(rto + 0.001)
    assert rig.frames() == []
    assert conn.state is TcpState.CLOSED and stream.closed == "reset"
    assert rig.stack.tcp.conns == {} and rig.stack.tcp.half_open == {}


def test_retransmitted_syn_gets_the_synack_again_at_once() -> None:
    rig = Rig()
    rig.send(SYN)
    rig.connect_ok()
    (first,) = rig.frames()
    rig.send(SYN)
    (again,) = rig.frames()
    assert (tcp_of(again).flags, tcp_of(again).seq) == ("SA", tcp_of(first).seq)


def test_handshake_ack_of_the_wrong_number_is_reset() -> None:
    rig = Rig()
    rig.send(SYN)
    rig.connect_ok()
    (synack,) = rig.frames()
    iss = tcp_of(synack).seq
    rig.send(seg("A", ISN + 1, iss + 5))
    (rst,) = rig.frames()
    assert (tcp_of(rst).flags, tcp_of(rst).seq) == ("R", iss + 5)
    assert conn_of(rig).state is TcpState.SYN_RECEIVED


# --- the guest's SYN options: MSS, window scaling, timestamps


def test_syn_without_timestamps_or_window_scaling() -> None:
    rig = Rig()
    rig.send(
        IP(src=GUEST, dst=GW)
        / TCP(sport=SPORT, dport=80, seq=ISN, flags="S", window=65535, options=[("MSS", 1460)])
    )
    stream = rig.connect_ok()
    (synack,) = rig.frames()
    opts = dict(tcp_of(synack).options)
    assert opts == {"MSS": 1460}  # neither offered: neither answered
    iss = tcp_of(synack).seq
    rig.send(
        IP(src=GUEST, dst=GW) / TCP(sport=SPORT, dport=80, seq=ISN + 1, ack=iss + 1, flags="A")
    )
    rig.send(
        IP(src=GUEST, dst=GW)
        / TCP(sport=SPORT, dport=80, seq=ISN + 1, ack=iss + 1, flags="PA", window=65535)
        / b"data"
    )
    (ack,) = rig.frames()
    assert tcp_of(ack).options == []
    # an unscaled window: the host's space plus the slack, capped at 16 bits
    assert tcp_of(ack).window == 0xFFFF
    stream.to_guest += b"w" * 3000
    host_readable(rig, conn_of(rig))
    frames = rig.frames()
    assert [len(tcp_of(f).payload) for f in frames] == [1460, 1460, 80]  # no 12-byte TS
    assert all(tcp_of(f).options == [] for f in frames)


@pytest.mark.parametrize(
    "mtu,guest_mss,our_mss,seg_size",
    [
        (1500, 1460, 1460, 1448),
        (1280, 1460, 1240, 1228),  # our MTU is the smaller: the guest's MSS is cut to it
        (9000, 8960, 8960, 8948),
        (9000, 1460, 8960, 1448),  # the guest's MSS is the smaller
        (1500, None, 1460, 536 - 12),  # no MSS option: 536 (RFC 9293 3.7.1)
    ],
)
def test_mss_comes_from_the_mtu(
    mtu: int, guest_mss: int | None, our_mss: int, seg_size: int
) -> None:
    rig = Rig(mtu=mtu)
    opts = [("Timestamp", (5000, 0))] + ([("MSS", guest_mss)] if guest_mss else [])
    rig.send(IP(src=GUEST, dst=GW) / TCP(sport=SPORT, dport=80, seq=ISN, flags="S", options=opts))
    stream = rig.connect_ok()
    (synack,) = rig.frames()
    assert dict(tcp_of(synack).options)["MSS"] == our_mss
    iss = tcp_of(synack).seq
    rig.send(seg("A", ISN + 1, iss + 1, window=60000))
    stream.to_guest += b"m" * (seg_size * 2 + 1)
    host_readable(rig, conn_of(rig))
    frames = rig.frames()
    assert [len(tcp_of(f).payload) for f in frames] == [seg_size, seg_size, 1]
    assert all(len(f[IP]) <= mtu for f in frames)


# --- ESTABLISHED: acknowledgements


def test_fast_retransmit_needs_three_duplicate_acks() -> None:
    rig = Rig()
    stream, iss = established(rig)
    conn, sent = in_flight(rig, stream, 4 * 1448)
    assert len(sent) == 4
    data = bytes(stream.to_guest)
    rig.send(seg("A", ISN + 1, iss + 1 + 1448))  # advances: not a duplicate
    assert rig.frames() == []
    for dup in (1, 2):
        rig.send(seg("A", ISN + 1, iss + 1 + 1448))
        assert rig.frames() == [], f"retransmitted after {dup} duplicate ACK(s)"
    rig.send(seg("A", ISN + 1, iss + 1 + 1448))
    (resent,) = rig.frames()  # the hole only: the guest holds what came after it
    assert tcp_of(resent).seq == iss + 1 + 1448
    assert bytes(tcp_of(resent).payload) == data[1448 : 2 * 1448]
    assert conn.snd_nxt == iss + 1 + 4 * 1448  # nothing else is sent again


def test_duplicates_after_a_fast_retransmit_start_no_other_one() -> None:
    # each segment after the hole brings the guest's duplicate ACK; resending on every
    # third would resend while the first retransmission is still on its way (the storm
    # that resent a whole window per three duplicates)
    rig = Rig()
    stream, iss = established(rig)
    conn, sent = in_flight(rig, stream, 8 * 1448)
    assert len(sent) == 8
    for _ in range(3):
        rig.send(seg("A", ISN + 1, iss + 1))
    assert [tcp_of(f).seq for f in rig.frames()] == [iss + 1]
    for _ in range(20):
        rig.send(seg("A", ISN + 1, iss + 1))
    assert rig.frames() == []
    rig.send(seg("A", ISN + 1, iss + 1 + 8 * 1448))  # the hole filled: all of it arrived
    assert conn.recover is None and conn.snd_una == conn.snd_nxt
    assert len(stream.to_guest) == 0


def test_a_partial_ack_resends_the_next_hole_at_once() -> None:
    rig = Rig()
    stream, iss = established(rig)
    conn, _ = in_flight(rig, stream, 6 * 1448)
    data = bytes(stream.to_guest)
    for _ in range(3):
        rig.send(seg("A", ISN + 1, iss + 1))
    assert [tcp_of(f).seq for f in rig.frames()] == [iss + 1]
    rig.send(seg("A", ISN + 1, iss + 1 + 3 * 1448))  # segments 1-3 arrived, 4 did not
    (resent,) = rig.frames()
    assert tcp_of(resent).seq == iss + 1 + 3 * 1448
    assert bytes(tcp_of(resent).payload) == data[3 * 1448 : 4 * 1448]
    rig.send(seg("A", ISN + 1, iss + 1 + 6 * 1448))
    assert conn.recover is None
    # recovery is over: the next loss is retransmitted again after three duplicates
    stream.to_guest += b"n" * 2 * 1448
    host_readable(rig, conn)
    assert len(rig.frames()) == 2
    for _ in range(3):
        rig.send(seg("A", ISN + 1, iss + 1 + 6 * 1448))
    (again,) = rig.frames()
    assert tcp_of(again).seq == iss + 1 + 6 * 1448 and bytes(tcp_of(again).payload) == b"n" * 1448


def test_after_a_timeout_duplicates_of_resent_segments_start_no_retransmission() -> None:
    rig = Rig()
    stream, iss = established(rig)
    conn, _ = in_flight(rig, stream, 4 * 1448)
    rig.advance(tcpconn.RTO_INITIAL + 0.01)
    assert [tcp_of(f).seq for f in rig.frames()] == [iss + 1 + 1448 * k for k in range(4)]
    for _ in range(6):  # the guest had segments 2-4: one duplicate ACK each, and more
        rig.send(seg("A", ISN + 1, iss + 1 + 1448))
    assert all(len(tcp_of(f).payload) == 0 for f in rig.frames())
    rig.send(seg("A", ISN + 1, iss + 1 + 4 * 1448))
    assert conn.recover is None and conn.snd_una == conn.snd_nxt


def test_an_ack_of_what_was_sent_before_a_timeout_is_taken() -> None:
    # after a timeout's rewind the guest may acknowledge past snd_nxt: it got the first
    # transmission after all; that is no "ACK of unsent data"
    rig = Rig()
    stream, iss = established(rig)
    conn, _ = in_flight(rig, stream, 4 * 1448)
    rig.send(seg("A", ISN + 1, iss + 1, window=0))  # the window closes
    rig.advance(tcpconn.RTO_INITIAL + 0.01)
    rig.frames()
    assert conn.snd_nxt == iss + 1  # rewound, and nothing may be resent into a closed window
    rig.send(seg("A", ISN + 1, iss + 1 + 4 * 1448))
    assert conn.snd_una == conn.snd_nxt == iss + 1 + 4 * 1448
    assert len(stream.to_guest) == 0 and conn.recover is None


def test_acks_carrying_data_or_a_new_window_are_not_duplicates() -> None:
    rig = Rig()
    stream, iss = established(rig)
    conn, _ = in_flight(rig, stream, 4 * 1448)
    for i in range(3):  # same ack, but each carries data (RFC 5681's definition)
        rig.send(seg("PA", ISN + 1 + i, iss + 1, b"d"))
    for w in (2001, 2002, 2003):  # same ack, but each moves the window
        rig.send(seg("A", ISN + 4, iss + 1, window=w))
    assert all(len(tcp_of(f).payload) == 0 for f in rig.frames())


def test_ack_of_unsent_data_is_answered_and_changes_nothing() -> None:
    rig = Rig()
    stream, iss = established(rig)
    conn, _ = in_flight(rig, stream, 100)
    rig.send(seg("A", ISN + 1, iss + 1 + 5000))  # acknowledges bytes never sent
    (ack,) = rig.frames()
    assert (tcp_of(ack).flags, tcp_of(ack).seq, tcp_of(ack).ack) == ("A", iss + 101, ISN + 1)
    assert conn.snd_una == iss + 1 and len(stream.to_guest) == 100  # nothing dropped
    rig.advance(tcpconn.RTO_INITIAL + 0.01)  # and the 100 bytes are still retransmitted
    (again,) = rig.frames()
    assert tcp_of(again).seq == iss + 1 and len(tcp_of(again).payload) == 100


@pytest.mark.xfail(strict=True, reason="RFC 9293 3.10.7.4: the segment is not dropped")
def test_data_with_an_ack_of_unsent_data_is_dropped() -> None:
    rig = Rig()
    stream, iss = established(rig)
    rig.send(seg("PA", ISN + 1, iss + 1 + 5000, b"bogus"))
    assert stream.written == b""


# --- ESTABLISHED: RST and SYN (RFC 5961)


def test_reset_at_the_expected_sequence_number_closes() -> None:
    rig = Rig()
    stream, iss = established(rig)
    conn = conn_of(rig)
    rig.send(seg("R", ISN + 1, 0))
    assert conn.state is TcpState.CLOSED and stream.closed == "reset"


@pytest.mark.parametrize(
    "offset",
    [-1, -1000, (1 << 20) + to_host.PENDING_SLACK + 1, 1 << 31, -(1 << 31)],
    ids=["one-below", "old", "past-window", "half-space", "minus-half-space"],
)
def test_reset_outside_the_window_is_ignored(offset: int) -> None:
    rig = Rig()
    stream, iss = established(rig)
    conn = conn_of(rig)
    rig.send(seg("R", (ISN + 1 + offset) & 0xFFFFFFFF, 0))
    rig.send(seg("RA", (ISN + 1 + offset) & 0xFFFFFFFF, iss + 1))
    assert conn.state is TcpState.ESTABLISHED and stream.closed is None
    rig.send(seg("PA", ISN + 1, iss + 1, b"still here"))
    assert bytes(stream.written) == b"still here"


@pytest.mark.xfail(strict=True, reason="RFC 5961 3.2: in-window RST closes instead")
def test_reset_in_the_window_but_not_exact_gets_a_challenge_ack() -> None:
    rig = Rig()
    stream, iss = established(rig)
    rig.send(seg("R", ISN + 100, 0))
    (challenge,) = rig.frames()
    assert tcp_of(challenge).ack == ISN + 1 and conn_of(rig).state is TcpState.ESTABLISHED


@pytest.mark.parametrize("syn_seq", [ISN, ISN + 1, ISN + 5000, ISN - 5000])
def test_syn_in_established_gets_a_challenge_ack(syn_seq: int) -> None:
    rig = Rig()
    stream, iss = established(rig)
    conn = conn_of(rig)
    rig.send(replace_tcp(SYN, seq=syn_seq & 0xFFFFFFFF))
    (challenge,) = rig.frames()
    t = tcp_of(challenge)
    assert (t.flags, t.seq, t.ack) == ("A", iss + 1, ISN + 1)
    assert conn.state is TcpState.ESTABLISHED and stream.closed is None
    assert len(rig.host.connects) == 1  # no second connection either
    rig.send(seg("PA", ISN + 1, iss + 1, b"go on"))
    assert bytes(stream.written) == b"go on"


def replace_tcp(pkt: IP, **fields: object) -> IP:
    out = pkt.copy()
    for k, v in fields.items():
        setattr(out[TCP], k, v)
    return out


# --- ESTABLISHED: windows


def test_zero_window_from_the_guest_is_probed_until_it_opens() -> None:
    rig = Rig()
    stream, iss = established(rig)
    conn = conn_of(rig)
    rig.send(seg("A", ISN + 1, iss + 1, window=0))
    stream.to_guest += b"p" * 100
    host_readable(rig, conn)
    assert rig.frames() == []  # nothing may be sent into a zero window
    rto = tcpconn.RTO_INITIAL
    for _ in range(3):
        rig.advance(rto + 0.001)
        (probe,) = rig.frames()
        t = tcp_of(probe)
        # a segment just below the window: the guest must answer with its window
        assert (t.flags, t.seq, t.ack, len(t.payload)) == ("A", iss, ISN + 1, 0)
        rig.send(seg("A", ISN + 1, iss + 1, window=0))  # still closed
        assert rig.frames() == []
        rto *= 2
    assert conn.retries == 0  # an answered probe is not a failed retransmission
    rig.send(seg("A", ISN + 1, iss + 1, window=2000))  # opens
    (data,) = rig.frames()
    assert (tcp_of(data).seq, bytes(tcp_of(data).payload)) == (iss + 1, b"p" * 100)


def test_writable_sends_no_update_while_the_guest_can_still_send() -> None:
    """The host socket's first "writable" after the handshake (and any later one) sends
    nothing while the guest has two full segments of window left: it is not waiting,
    and the ACK of what it sends carries the larger window."""
    rig = Rig()
    stream, iss = established(rig)
    conn = conn_of(rig)
    stream.space = 1 << 20
    assert conn.window_advertised <= 0xFFFF  # the SYN-ACK's window, unscaled
    conn.on_host_writable(rig.now)
    rig.stack.tcp.after(conn)
    assert rig.frames() == []
    rig.send(seg("PA", ISN + 1, iss + 1, b"x" * 100))
    (ack,) = rig.frames()
    assert tcp_of(ack).ack == ISN + 101
    assert tcp_of(ack).window << conn.our_wscale > 0xFFFF  # the window grew with it


def test_our_zero_window_is_advertised_and_reopened_with_an_update() -> None:
    rig = Rig()
    stream, iss = established(rig)
    conn = conn_of(rig)
    stream.accept_limit = 0  # the host socket is full
    stream.space = 0
    big = b"f" * to_host.PENDING_SLACK
    for off in range(0, len(big), 1448):
        rig.send(seg("PA", ISN + 1 + off, iss + 1, big[off : off + 1448]))
    acks = rig.frames()
    assert tcp_of(acks[-1]).ack == ISN + 1 + len(big) and tcp_of(acks[-1]).window == 0
    # the guest probes our zero window with one byte: answered, still zero
    rig.send(seg("PA", ISN + 1 + len(big), iss + 1, b"?"))
    (answer,) = rig.frames()
    assert tcp_of(answer).window == 0
    assert stream.written == b""
    stream.accept_limit = None  # the host reads: what waited is written, the window reopens
    stream.space = 1 << 20
    conn.on_host_writable(rig.now)
    rig.stack.tcp.after(conn)
    assert bytes(stream.written) == big + b"?"[: tcp_of(answer).ack - (ISN + 1 + len(big))]
    (update,) = rig.frames()
    assert tcp_of(update).window > 0 and tcp_of(update).ack == tcp_of(answer).ack


# --- closing


def test_unacknowledged_fin_is_retransmitted() -> None:
    rig = Rig()
    stream, iss = established(rig)
    conn = conn_of(rig)
    stream.eof = True
    host_readable(rig, conn)
    (fin,) = rig.frames()
    assert (tcp_of(fin).flags, tcp_of(fin).seq) == ("FA", iss + 1)
    rto = tcpconn.RTO_INITIAL
    for _ in range(2):
        rig.advance(rto + 0.001)
        (again,) = rig.frames()
        assert (tcp_of(again).flags, tcp_of(again).seq) == ("FA", iss + 1)
        rto *= 2
    rig.send(seg("A", ISN + 1, iss + 2))
    rig.advance(rto + 0.001)
    assert rig.frames() == []  # acknowledged: no more


def test_fin_retransmitted_in_time_wait_is_acked_again() -> None:
    rig = Rig()
    _, iss, conn = host_closes_first(rig)
    assert conn.state is TcpState.TIME_WAIT
    rig.advance(tcpconn.TIME_WAIT / 2)
    rig.send(seg("FA", ISN + 1, iss + 2))  # our ACK of its FIN was lost
    (ack,) = rig.frames()
    t = tcp_of(ack)
    assert (t.flags, t.seq, t.ack) == ("A", iss + 2, ISN + 2)
    rig.advance(tcpconn.TIME_WAIT)
    assert rig.stack.tcp.conns == {}


# --- the active open: a port forward, netstack sends the SYN


def forward(rig: Rig, guest: str = GUEST) -> tuple[tcpconn.TcpConnection, FakeStream]:
    stream = FakeStream()
    flow = FlowAddrs(bytes(6), packed(guest), 8080, packed("10.0.2.2"), 50000)
    conn = rig.stack.tcp.open_to_guest(flow, lambda _: stream, rig.now)  # type: ignore[arg-type,return-value]
    assert conn is not None
    return conn, stream


def packed(ip: str) -> bytes:
    import ipaddress

    return ipaddress.ip_address(ip).packed


def test_forward_asks_for_the_guest_mac_then_sends_the_syn() -> None:
    rig = Rig()
    conn, stream = forward(rig)
    (arp_req,) = rig.frames()
    assert arp_req[ARP].op == 1 and arp_req[ARP].pdst == GUEST
    rig.send(
        Ether(src=GUEST_MAC, dst=GW_MAC)
        / ARP(op=2, hwsrc=GUEST_MAC, psrc=GUEST, hwdst=GW_MAC, pdst="10.0.2.2")
    )
    (syn,) = rig.frames()
    t = tcp_of(syn)
    assert syn[Ether].dst == GUEST_MAC and (syn[IP].src, syn[IP].dst) == ("10.0.2.2", GUEST)
    assert (t.sport, t.dport, t.flags) == (50000, 8080, "S")
    opts = dict(t.options)
    assert opts["MSS"] == 1460 and opts["WScale"] == 7 and "Timestamp" in opts
    assert_valid_checksums(syn)
    # the guest accepts: our ACK, then the client's bytes flow
    stream.to_guest += b"hello guest"
    rig.send(
        IP(src=GUEST, dst=GW)
        / TCP(
            sport=8080,
            dport=50000,
            seq=7000,
            ack=t.seq + 1,
            flags="SA",
            window=1000,
            options=[("MSS", 1460), ("WScale", 2), ("Timestamp", (9, opts["Timestamp"][0]))],
        )
    )
    ack, data = rig.frames()
    assert (tcp_of(ack).flags, tcp_of(ack).ack) == ("A", 7001)
    assert (tcp_of(data).seq, bytes(tcp_of(data).payload)) == (t.seq + 1, b"hello guest")
    # a SYN's window is never scaled (RFC 7323 2.2); later ones are, by 2
    assert conn.state is TcpState.ESTABLISHED and conn.guest_window == 1000
    rig.send(replace_tcp(seg("A", 7001, t.seq + 12, window=1000), sport=8080, dport=50000))
    assert conn.guest_window == 1000 << 2


def test_forward_syn_is_retransmitted_then_given_up() -> None:
    rig = Rig()
    rig.send(IP(src=GUEST, dst="10.0.2.2") / ICMP())  # the guest's MAC is known
    rig.frames()
    conn, stream = forward(rig)
    (syn,) = rig.frames()
    rig.advance(tcpconn.RTO_INITIAL + 0.001)
    (again,) = rig.frames()
    assert (tcp_of(again).flags, tcp_of(again).seq) == ("S", tcp_of(syn).seq)
    rig.advance(tcpconn.CONNECT_TIMEOUT)
    assert conn.state is TcpState.CLOSED and stream.closed == "close"
    assert rig.stack.tcp.conns == {}


def test_forward_refused_by_the_guest_closes_and_a_bad_synack_is_reset() -> None:
    rig = Rig()
    rig.send(IP(src=GUEST, dst="10.0.2.2") / ICMP())
    rig.frames()
    conn, stream = forward(rig)
    (syn,) = rig.frames()
    iss = tcp_of(syn).seq
    bad = IP(src=GUEST, dst=GW) / TCP(sport=8080, dport=50000, seq=1, ack=iss + 9, flags="SA")
    rig.send(bad)
    (rst,) = rig.frames()
    assert (tcp_of(rst).flags, tcp_of(rst).seq) == ("R", iss + 9)
    assert conn.state is TcpState.SYN_SENT
    rig.send(IP(src=GUEST, dst=GW) / TCP(sport=8080, dport=50000, seq=0, ack=iss + 1, flags="RA"))
    assert conn.state is TcpState.CLOSED and stream.closed == "close"


# --- IPv6


GUEST6 = "fd00::100"


def test_ipv6_trace_handshake_data_both_ways_and_close() -> None:
    from scapy.layers.inet6 import IPv6

    rig = Rig(NetworkConfig(ipv6=True))

    def seg6(flags: str, seq: int, ack: int, data: bytes = b"", **kw: object) -> IPv6:
        return (
            IPv6(src=GUEST6, dst="2001:db8::9")
            / TCP(sport=SPORT, dport=443, seq=seq, ack=ack, flags=flags, window=2000, **kw)
            / data
        )

    rig.send(seg6("S", ISN, 0, options=[("MSS", 1440), ("WScale", 7), ("Timestamp", (1, 0))]))
    conn, targets, _ = rig.host.connects[0]
    assert targets == [("2001:db8::9", 443)]
    stream = rig.connect_ok()
    (synack,) = rig.frames()
    t = tcp_of(synack)
    assert (synack[IPv6].src, synack[IPv6].dst) == ("2001:db8::9", GUEST6)
    assert (t.flags, t.ack, dict(t.options)["MSS"]) == ("SA", ISN + 1, 1440)  # 1500 - 60
    want = t.chksum
    del t.chksum
    assert IPv6(bytes(synack[IPv6]))[TCP].chksum == want
    iss = t.seq
    rig.send(seg6("A", ISN + 1, iss + 1))
    rig.send(seg6("PA", ISN + 1, iss + 1, b"v6 data"))
    assert bytes(stream.written) == b"v6 data"
    (ack,) = rig.frames()
    assert tcp_of(ack).ack == ISN + 8
    stream.to_guest += b"r" * 3000
    stream.eof = True
    host_readable(rig, conn)
    frames = rig.frames()
    assert [len(tcp_of(f).payload) for f in frames] == [1428, 1428, 144, 0]  # 1440 - 12
    assert tcp_of(frames[-1]).flags == "FA"
    assert all(len(f[IPv6]) <= 1500 for f in frames)
    rig.send(seg6("FA", ISN + 8, iss + 3002))
    assert conn.state is TcpState.TIME_WAIT and stream.shut_write


def test_ipv6_syn_in_established_gets_a_challenge_ack() -> None:
    from scapy.layers.inet6 import IPv6

    rig = Rig(NetworkConfig(ipv6=True))
    base = IPv6(src=GUEST6, dst="2001:db8::9")
    rig.send(base / TCP(sport=SPORT, dport=443, seq=ISN, flags="S"))
    stream = rig.connect_ok()
    (synack,) = rig.frames()
    iss = tcp_of(synack).seq
    rig.send(base / TCP(sport=SPORT, dport=443, seq=ISN + 1, ack=iss + 1, flags="A"))
    rig.send(base / TCP(sport=SPORT, dport=443, seq=ISN + 77, flags="S"))
    (challenge,) = rig.frames()
    assert (tcp_of(challenge).flags, tcp_of(challenge).ack) == ("A", ISN + 1)
    assert conn_of(rig).state is TcpState.ESTABLISHED and stream.closed is None


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
