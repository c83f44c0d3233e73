"""TCP/IPv4 segments to the guest, built in one reusable frame buffer.

The payload is placed first (the connection peeks host data straight into
`payload_view`), then headers are written in front of it. On a vnet link one frame
carries up to 64 KiB: GSO at the guest's segment size, checksum left partial for the
guest kernel. On a plain link the same payload goes out as MSS-sized frames: each
frame's headers are written over the tail of the previous chunk, already sent, so no
payload byte is copied in user space.
"""

from __future__ import annotations

import itertools
import struct
from typing import NamedTuple

from netstack import _fast
from netstack.link.base import FRAME_BUFFER_SIZE, VNET_HEADROOM, LinkEndpoint
from netstack.wire import ethernet, ipv4, ipv6, tcp, vnet

_ETH_IP = struct.Struct("!6s6sHBBHHHBBH4s4s")  # Ethernet + IPv4 header, no options
_ETH = ethernet.HEADER
_TCP = tcp.HEADER
_TS_OPTION = struct.Struct("!BBBBII")
_CSUM = struct.Struct("!H")
_VNET = vnet.HEADER

L2L3_LEN = ethernet.HEADER_LEN + ipv4.HEADER_LEN
TS_OPTION_LEN = 12
# the IPv4 total_length field bounds one frame's payload
MAX_PACKET = 65535


class FlowAddrs(NamedTuple):
    """A flow's addresses as the guest sees them."""

    guest_mac: bytes
    guest_ip: bytes
    guest_port: int
    remote_ip: bytes
    remote_port: int


class SegmentWriter:
    def __init__(self, link: LinkEndpoint, src_mac: bytes) -> None:
        self.link = link
        self.src_mac = src_mac
        self.buf = bytearray(FRAME_BUFFER_SIZE + 64)  # + IPv6's longer header
        self.view = memoryview(self.buf)
        self._ident = itertools.count()
        self.frames_sent = 0
        self._c_buf = _fast.writable(self.buf) if _fast.FAST else None

    def payload_offset(self, tcp_hlen: int) -> int:
        """Where payload starts: room in front for the largest headers (IPv6); an IPv4
        frame simply starts 20 bytes later in the buffer."""
        return VNET_HEADROOM + ethernet.HEADER_LEN + ipv6.HEADER_LEN + tcp_hlen

    def payload_view(self, tcp_hlen: int, limit: int) -> memoryview:
        """Where the next segment's payload goes, at most `limit` bytes."""
        start = self.payload_offset(tcp_hlen)
        room = min(limit, MAX_PACKET - ipv4.HEADER_LEN - tcp_hlen)  # also fits IPv6's limit
        return self.view[start : start + room]

    def send(
        self,
        flow: FlowAddrs,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        ts: tuple[int, int] | None,
        payload_len: int,
        seg_size: int,
    ) -> None:
        """Send a segment whose payload is already in payload_view(...)."""
        hlen = tcp.HEADER_LEN + (TS_OPTION_LEN if ts is not None else 0)
        l3_len = ipv6.HEADER_LEN if len(flow.guest_ip) == 16 else ipv4.HEADER_LEN
        start = self.payload_offset(hlen) - (VNET_HEADROOM + ethernet.HEADER_LEN + l3_len + hlen)
        if payload_len <= seg_size or self.link.vnet:
            end = self._headers(
                start, flow, seq, ack, flags, window, ts, hlen, payload_len, seg_size
            )
            self.link.write(self.view[start:end])
            self.frames_sent += 1
            return
        # plain link: one frame per seg_size chunk; FIN/PSH only on the last
        done = 0
        while done < payload_len:
            n = min(seg_size, payload_len - done)
            last = done + n == payload_len
            f = flags if last else flags & ~(tcp.FIN | tcp.PSH)
            end = self._headers(start + done, flow, seq + done, ack, f, window, ts, hlen, n, n)
            self.link.write(self.view[start + done : end])
            self.frames_sent += 1
            done += n

    def send_syn(
        self, flow: FlowAddrs, seq: int, ack: int, flags: int, window: int, options: tcp.TcpOptions
    ) -> None:
        """A segment with arbitrary options and no payload (SYN, SYN-ACK)."""
        olen = tcp.options_len(options)
        hlen = tcp.HEADER_LEN + olen
        l3_len = ipv6.HEADER_LEN if len(flow.guest_ip) == 16 else ipv4.HEADER_LEN
        start = 0
        tcp.emit_options(
            options, self.buf, VNET_HEADROOM + ethernet.HEADER_LEN + l3_len + tcp.HEADER_LEN
        )
        end = self._headers(start, flow, seq, ack, flags, window, None, hlen, 0, 0)
        self.link.write(self.view[start:end])
        self.frames_sent += 1

    def _headers(
        self,
        start: int,
        flow: FlowAddrs,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        ts: tuple[int, int] | None,
        hlen: int,
        payload_len: int,
        seg_size: int,
    ) -> int:
        """Write the headers in front of the payload; returns the frame's end."""
        if self._c_buf is None or hlen != tcp.HEADER_LEN + (TS_OPTION_LEN if ts else 0):
            # the C builders know no option but the timestamp (a SYN has more)
            return self._headers_py(
                start, flow, seq, ack, flags, window, ts, hlen, payload_len, seg_size
            )
        common = (
            self._c_buf,
            len(self.buf),
            start,
            flow.guest_mac,
            self.src_mac,
            flow.remote_ip,
            flow.guest_ip,
            flow.remote_port,
            flow.guest_port,
            seq & 0xFFFFFFFF,
            ack & 0xFFFFFFFF,
            flags,
            window,
            ts is not None,
            ts[0] if ts else 0,
            ts[1] if ts else 0,
            payload_len,
        )
        if len(flow.guest_ip) == 16:
            end = _fast.tcp6_frame(*common, self.link.vnet, seg_size)
        else:
            end = _fast.tcp4_frame(*common, next(self._ident) & 0xFFFF, self.link.vnet, seg_size)
        if end < 0:
            raise ValueError("tcp frame does not fit the buffer")
        return int(end)

    def _headers_py(
        self,
        start: int,
        flow: FlowAddrs,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        ts: tuple[int, int] | None,
        hlen: int,
        payload_len: int,
        seg_size: int,
    ) -> int:
        """The builder in Python, both families: the twin of ns_tcp4_frame and
        ns_tcp6_frame. The TCP checksum is partial with a
        virtio-net header (GSO when the payload exceeds seg_size), complete otherwise."""
        buf = self.buf
        l2 = start + VNET_HEADROOM
        l3 = l2 + ethernet.HEADER_LEN
        l4_len = hlen + payload_len
        if len(flow.guest_ip) == 16:
            l4 = l3 + ipv6.HEADER_LEN
            _ETH.pack_into(buf, l2, flow.guest_mac, self.src_mac, ethernet.ETHERTYPE_IPV6)
            ipv6.HEADER.pack_into(
                buf,
                l3,
                6 << 28,
                l4_len,
                ipv6.NEXT_TCP,
                ipv6.DEFAULT_HOP_LIMIT,
                flow.remote_ip,
                flow.guest_ip,
            )
            pseudo = ipv6.pseudo_header_sum(flow.remote_ip, flow.guest_ip, ipv6.NEXT_TCP, l4_len)
            gso_type = vnet.GSO_TCPV6
        else:
            l4 = l3 + ipv4.HEADER_LEN
            _ETH_IP.pack_into(
                buf, l2, flow.guest_mac, self.src_mac, ethernet.ETHERTYPE_IPV4, 0x45, 0,
                ipv4.HEADER_LEN + l4_len, next(self._ident) & 0xFFFF, ipv4.FLAG_DF,
                ipv4.DEFAULT_TTL, ipv4.PROTO_TCP, 0, flow.remote_ip, flow.guest_ip,
            )  # fmt: skip
            _CSUM.pack_into(buf, l3 + 10, _fast.checksum(self.view[l3:l4]))
            pseudo = ipv4.pseudo_header_sum(flow.remote_ip, flow.guest_ip, ipv4.PROTO_TCP, l4_len)
            gso_type = vnet.GSO_TCPV4
        _TCP.pack_into(
            buf,
            l4,
            flow.remote_port,
            flow.guest_port,
            seq & 0xFFFFFFFF,
            ack & 0xFFFFFFFF,
            (hlen // 4) << 4,
            flags,
            window,
            0,
            0,
        )
        if ts is not None:
            _TS_OPTION.pack_into(
                buf,
                l4 + tcp.HEADER_LEN,
                tcp.OPT_NOP,
                tcp.OPT_NOP,
                tcp.OPT_TIMESTAMP,
                10,
                ts[0],
                ts[1],
            )
        end = l4 + hlen + payload_len
        if not self.link.vnet:
            _CSUM.pack_into(
                buf, l4 + tcp.CHECKSUM_OFFSET, _fast.checksum(self.view[l4:end], pseudo)
            )
            return end
        # partial checksum: the field holds the pseudo-header sum; the guest's kernel
        # (or its NIC path) finishes or trusts it
        _CSUM.pack_into(buf, l4 + tcp.CHECKSUM_OFFSET, pseudo)
        csum_start = l4 - start - VNET_HEADROOM
        gso = payload_len > seg_size > 0
        _VNET.pack_into(
            buf,
            start,
            vnet.F_NEEDS_CSUM,
            gso_type if gso else vnet.GSO_NONE,
            csum_start + hlen if gso else 0,
            seg_size if gso else 0,
            csum_start,
            tcp.CHECKSUM_OFFSET,
        )
        return end
