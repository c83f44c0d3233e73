"""Frames to the guest other than TCP segments: ARP, ICMP, UDP (fragmented when a
datagram exceeds the MTU), each built in a fresh buffer. Control traffic and
datagrams; the TCP fast path has its own writer (netstack.tcp.output)."""

from __future__ import annotations

import itertools
import struct
import time
from collections.abc import Callable
from typing import Any

from netstack import _fast
from netstack.link.base import VNET_HEADROOM, LinkEndpoint
from netstack.stack.config import HOST6, NetworkConfig
from netstack.stack.limits import TokenBucket
from netstack.wire import arp, ethernet, icmpv4, icmpv6, ipv4, ipv6, udp
from netstack.wire.ethernet import EthernetHeader
from netstack.wire.ipv4 import Ipv4Header

L2_OFFSET = VNET_HEADROOM
L3_OFFSET = VNET_HEADROOM + ethernet.HEADER_LEN


class GuestOutput:
    def __init__(
        self,
        link: LinkEndpoint,
        config: NetworkConfig,
        icmp_errors_per_second: int = 200,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link = link
        self.config = config
        self.icmp_errors = TokenBucket(icmp_errors_per_second, clock)
        self.icmp_errors_suppressed = 0
        self._ident = itertools.count(0x4000)
        self._udp_frame: Any = _fast.udp_frame if _fast.FAST else None
        self.frames_sent = 0

    def _write(self, buf: bytearray) -> None:
        self.link.write(memoryview(buf))
        self.frames_sent += 1

    def send_arp(
        self, op: int, src_mac: bytes, src_ip: bytes, dst_mac: bytes, dst_ip: bytes
    ) -> None:
        buf = bytearray(L3_OFFSET + arp.HEADER_LEN)
        eth_dst = dst_mac if op == arp.OP_REPLY else ethernet.BROADCAST
        ethernet.emit(EthernetHeader(eth_dst, src_mac, ethernet.ETHERTYPE_ARP), buf, L2_OFFSET)
        arp.emit(arp.ArpPacket(op, src_mac, src_ip, dst_mac, dst_ip), buf, L3_OFFSET)
        self._write(buf)

    def send_ipv4(
        self, dst_mac: bytes, src: bytes, dst: bytes, proto: int, l4: bytes | bytearray | memoryview
    ) -> None:
        """An IPv4 packet from src (a virtual or remote address) to the guest; the
        Ethernet source is always the gateway's MAC, as in slirp."""
        mtu = self.link.mtu
        ident = next(self._ident) & 0xFFFF
        if ipv4.HEADER_LEN + len(l4) <= mtu:
            self._send_fragment(dst_mac, src, dst, proto, ident, ipv4.FLAG_DF, l4)
            return
        step = (mtu - ipv4.HEADER_LEN) // 8 * 8
        for off in range(0, len(l4), step):
            chunk = l4[off : off + step]
            more = ipv4.FLAG_MF if off + step < len(l4) else 0
            self._send_fragment(dst_mac, src, dst, proto, ident, more | (off // 8), chunk)

    def _send_fragment(
        self,
        dst_mac: bytes,
        src: bytes,
        dst: bytes,
        proto: int,
        ident: int,
        flags_frag: int,
        data: bytes | bytearray | memoryview,
    ) -> None:
        buf = bytearray(L3_OFFSET + ipv4.HEADER_LEN + len(data))
        ethernet.emit(
            EthernetHeader(dst_mac, self.config.gateway_mac, ethernet.ETHERTYPE_IPV4),
            buf,
            L2_OFFSET,
        )
        total = ipv4.HEADER_LEN + len(data)
        ipv4.emit(
            Ipv4Header(20, 0, total, ident, flags_frag, ipv4.DEFAULT_TTL, proto, src, dst),
            buf,
            L3_OFFSET,
        )
        buf[L3_OFFSET + ipv4.HEADER_LEN :] = data
        self._write(buf)

    def send_ipv6(
        self,
        dst_mac: bytes,
        src: bytes,
        dst: bytes,
        next_header: int,
        payload: bytes,
        src_mac: bytes | None = None,
        hop_limit: int = ipv6.DEFAULT_HOP_LIMIT,
    ) -> None:
        """An IPv6 packet to the guest (from the router's MAC unless told otherwise).
        Larger than the MTU: fragmented with a fragment header."""
        mtu = self.link.mtu
        if ipv6.HEADER_LEN + len(payload) <= mtu:
            self._send_ipv6_packet(dst_mac, src, dst, next_header, payload, src_mac, hop_limit)
            return
        ident = next(self._ident)
        step = (mtu - ipv6.HEADER_LEN - 8) // 8 * 8
        for off in range(0, len(payload), step):
            chunk = payload[off : off + step]
            more = 1 if off + step < len(payload) else 0
            frag = struct.pack("!BBHI", next_header, 0, off | more, ident) + chunk
            self._send_ipv6_packet(dst_mac, src, dst, ipv6.NEXT_FRAGMENT, frag, src_mac, hop_limit)

    def _send_ipv6_packet(
        self,
        dst_mac: bytes,
        src: bytes,
        dst: bytes,
        next_header: int,
        payload: bytes,
        src_mac: bytes | None,
        hop_limit: int,
    ) -> None:
        buf = bytearray(L3_OFFSET + ipv6.HEADER_LEN + len(payload))
        ethernet.emit(
            EthernetHeader(dst_mac, src_mac or self.config.router_mac, ethernet.ETHERTYPE_IPV6),
            buf,
            L2_OFFSET,
        )
        ipv6.emit(
            ipv6.Ipv6Header(0, 0, len(payload), next_header, hop_limit, src, dst), buf, L3_OFFSET
        )
        buf[L3_OFFSET + ipv6.HEADER_LEN :] = payload
        self._write(buf)

    def send_icmp6(
        self,
        dst_mac: bytes,
        src: bytes,
        dst: bytes,
        type_: int,
        code: int,
        body: bytes,
        src_mac: bytes | None = None,
        hop_limit: int = 64,
    ) -> None:
        self.send_ipv6(
            dst_mac,
            src,
            dst,
            ipv6.NEXT_ICMPV6,
            icmpv6.emit(src, dst, type_, code, body),
            src_mac,
            hop_limit,
        )

    def send_udp(
        self,
        dst_mac: bytes,
        src: bytes,
        src_port: int,
        dst: bytes,
        dst_port: int,
        payload: bytes | bytearray | memoryview,
    ) -> None:
        length = udp.HEADER_LEN + len(payload)
        if length > 0xFFFF:
            return
        v6 = len(dst) == 16
        if self._udp_frame is not None and length + (40 if v6 else 20) <= self.link.mtu:
            # one frame, built in C (csrc/fast.c ns_udp_frame); the Python path below
            # is its twin, and the one that fragments
            buf = bytearray(L3_OFFSET + (40 if v6 else 20) + length)
            if not isinstance(payload, bytes):
                payload = bytes(payload)
            self._udp_frame(
                _fast.writable(buf),
                len(buf),
                dst_mac,
                self.config.router_mac if v6 else self.config.gateway_mac,
                src,
                dst,
                v6,
                src_port,
                dst_port,
                payload,
                len(payload),
                0 if v6 else next(self._ident) & 0xFFFF,
            )
            self._write(buf)
            return
        seg = bytearray(length)
        udp.emit(udp.UdpHeader(src_port, dst_port, length), src, dst, payload, seg)
        if v6:
            self.send_ipv6(dst_mac, src, dst, ipv6.NEXT_UDP, bytes(seg))
        else:
            self.send_ipv4(dst_mac, src, dst, ipv4.PROTO_UDP, seg)

    def send_icmp(
        self,
        dst_mac: bytes,
        src: bytes,
        dst: bytes,
        hdr: icmpv4.IcmpHeader,
        payload: bytes | bytearray | memoryview,
    ) -> None:
        msg = bytearray(icmpv4.HEADER_LEN + len(payload))
        icmpv4.emit(hdr, payload, msg)
        self.send_ipv4(dst_mac, src, dst, ipv4.PROTO_ICMP, msg)

    def send_icmp_error(self, dst_mac: bytes, type_: int, code: int, quote: bytes) -> None:
        """An ICMP error about a guest packet; quote = its IP header + 8 bytes.
        The gateway speaks for the network, as a router would. An IPv6 quote gets the
        ICMPv6 error that means the same."""
        if len(quote) < ipv4.HEADER_LEN:
            return
        if quote[0] >> 4 == 6:
            self._send_icmp6_error(dst_mac, type_, code, quote)
            return
        if not self.icmp_errors.take():
            self.icmp_errors_suppressed += 1  # a flood of bad packets gets no flood back
            return
        guest_ip = bytes(quote[12:16])
        self.send_icmp(
            dst_mac, self.config.gateway, guest_ip, icmpv4.IcmpHeader(type_, code, 0, 0), quote
        )

    def _send_icmp6_error(self, dst_mac: bytes, type_: int, code: int, quote: bytes) -> None:
        if len(quote) < ipv6.HEADER_LEN or not self.icmp_errors.take():
            self.icmp_errors_suppressed += 1
            return
        v6_code = {
            icmpv4.CODE_NET_UNREACHABLE: icmpv6.CODE_NO_ROUTE,
            icmpv4.CODE_HOST_UNREACHABLE: icmpv6.CODE_ADDRESS_UNREACHABLE,
            icmpv4.CODE_PORT_UNREACHABLE: icmpv6.CODE_PORT_UNREACHABLE,
            icmpv4.CODE_ADMIN_PROHIBITED: icmpv6.CODE_ADMIN_PROHIBITED,
        }.get(code, icmpv6.CODE_NO_ROUTE)
        guest_ip = bytes(quote[8:24])
        body = b"\0\0\0\0" + bytes(quote[: icmpv6.ERROR_QUOTE_MAX])
        self.send_icmp6(dst_mac, HOST6, guest_ip, icmpv6.TYPE_DEST_UNREACHABLE, v6_code, body)
