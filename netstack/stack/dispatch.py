"""The dispatcher: every frame from the guest enters here, is parsed layer by layer,
and goes to ARP, ICMP, DHCP, DNS, UDP or TCP. A malformed frame is dropped and counted
under its reason; no exception leaves `receive`.

Guest MACs are learned from the source of ARP, IPv4 and IPv6 frames and from NDP, for
addresses the guest can hold, into a bounded table whose idle entries expire
(stack/neighbours.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from netstack.dhcp.server import DhcpServer
from netstack.dns.forwarder import DnsForwarder
from netstack.icmp.echo import PingProxy
from netstack.link.base import VNET_HEADROOM, LinkEndpoint
from netstack.log import get_logger
from netstack.stack.config import DNS6, ROUTER_LL, NetworkConfig, virtual_mac
from netstack.stack.guest_output import GuestOutput
from netstack.stack.hostio import HostIO
from netstack.stack.limits import Limits
from netstack.stack.ndp import Ndp
from netstack.stack.neighbours import Neighbours
from netstack.stack.policy import Policy
from netstack.stack.reassembly import Reassembler
from netstack.stack.stats import Stats
from netstack.stack.timers import TimerQueue
from netstack.tcp.connection import TcpConnection
from netstack.tcp.output import SegmentWriter
from netstack.tcp.table import TcpTable
from netstack.udp.proxy import UdpProxy
from netstack.wire import (
    WireError,
    arp,
    dhcpv4,
    dhcpv6,
    dns,
    ethernet,
    icmpv4,
    icmpv6,
    ipv4,
    ipv6,
    tcp,
    udp,
    vnet,
)

if TYPE_CHECKING:  # the directory's modules load with --directory only
    from netstack.stack.vips import DirectorySettings, VipRoutes

log = get_logger(__name__)

MAX_MAC_WAITERS = 64
# a UDP GSO frame carries at most this many datagrams (the kernel's UDP_MAX_SEGMENTS
# since 6.2); more is a forged frame that would cost a send per byte
UDP_GSO_MAX_SEGMENTS = 128

_ETH = ethernet.HEADER


class UdpRouteToHost(Protocol):
    """A forwarded UDP client's way back: the guest's replies go out through it."""

    def to_client(self, payload: memoryview, now: float) -> None: ...


_ZERO_IP = b"\0\0\0\0"
_LIMITED_BROADCAST = b"\xff\xff\xff\xff"


class Stack:
    def __init__(
        self,
        config: NetworkConfig,
        link: LinkEndpoint,
        host: HostIO,
        stats: Stats | None = None,
        limits: Limits | None = None,
        directory: DirectorySettings | None = None,
        clock: Callable[[], float] = time.monotonic,  # what rate limits read
    ) -> None:
        limits = limits or Limits()
        self.limits = limits
        self.config = config
        self.link = link
        self.host = host
        self.stats = stats or Stats()
        self.timers = TimerQueue()
        self.output = GuestOutput(link, config, limits.icmp_errors_per_second, clock)
        # directory VIPs (--directory): routed by the view, never forwarded as addresses
        self.vips: VipRoutes | None = None
        if directory:
            from netstack.stack.vips import VipRoutes

            self.vips = VipRoutes(directory, self.stats, self.timers)
        self.policy = Policy(config, host.nameservers, self.vips, host.is_host_address)
        self.segments = SegmentWriter(link, config.gateway_mac)
        self.tcp = TcpTable(
            self.segments,
            config.mtu,
            host,
            self.policy.tcp_target,
            self,
            self.stats,
            self.timers,
            max_flows=limits.max_tcp_flows,
            max_half_open=limits.max_half_open,
        )
        self.udp = UdpProxy(
            host,
            self.output,
            self.stats,
            self.timers,
            self.policy.udp_target,
            self.policy.virtual_source,
            max_flows=limits.max_udp_flows,
            idle_timeout=limits.udp_timeout,
        )
        self.dns = DnsForwarder(
            host,
            self.output,
            self.stats,
            self.timers,
            max_queries=limits.max_dns_queries,
            names=directory.names if directory else None,
        )
        self.ping = PingProxy(
            host, self.output, self.stats, self.timers, max_flows=limits.max_icmp_flows
        )
        self.dhcp = DhcpServer(config)
        self.reassembler = Reassembler()
        self.neighbours = Neighbours(config)
        self.mac_waiters: dict[bytes, list[Callable[[], None]]] = {}
        # forwarded UDP: (guest ip, guest port, client's virtual ip, port) -> its route back
        self.udp_routes_to_host: dict[tuple[bytes, int, bytes, int], UdpRouteToHost] = {}
        self.ndp = Ndp(config, self.output, self.stats, self._learn_mac) if config.ipv6 else None
        v6_macs = (config.router_mac, virtual_mac(DNS6)) if config.ipv6 else ()
        self._our_macs = (config.gateway_mac, config.dns_mac, ethernet.BROADCAST, *v6_macs)
        self._spoofed_macs = (config.gateway_mac, config.dns_mac, bytes(6), *v6_macs)
        self._icmp_quote = b""
        # the current frame's UDP GSO size (virtio-net GSO_UDP_L4, with the TAP's USO):
        # its UDP payload is a run of datagrams of this size, the last maybe shorter
        self._udp_gso = 0

    # ----------------------------------------------------------------- input
    def receive(self, buf: bytearray, length: int, now: float) -> None:
        """One frame from the link: buf[:length], virtio-net header first."""
        try:
            self._receive(memoryview(buf)[:length], now)
        except WireError as e:
            self.stats.drop(e.reason)
        except Exception:  # a bug must not take the stack down with it
            self.stats.drop("internal_error")
            log.exception("dispatcher: internal error (frame dropped)")

    def end_of_batch(self, now: float) -> None:
        self.tcp.flush(now)

    def _receive(self, frame: memoryview, now: float) -> None:
        if len(frame) < VNET_HEADROOM + ethernet.HEADER_LEN:
            raise WireError("frame_short", f"{len(frame)} bytes")
        eth_dst, eth_src, ethertype = _ETH.unpack_from(frame, VNET_HEADROOM)
        if eth_dst not in self._our_macs and not (self.ndp and eth_dst[:2] == b"\x33\x33"):
            self.stats.drop("eth_not_for_us")
            return
        if eth_src[0] & 1:
            raise WireError("eth_multicast_source")
        if eth_src in self._spoofed_macs:
            raise WireError("eth_spoofed_source")
        l3 = frame[VNET_HEADROOM + ethernet.HEADER_LEN :]
        self._udp_gso = frame[4] | frame[5] << 8 if frame[1] == vnet.GSO_UDP_L4 else 0
        if ethertype == ethernet.ETHERTYPE_IPV4:
            # a frame the guest kernel left checksum-partial (vnet) still has a valid
            # IP header checksum; L4 checksums are never verified (a local link)
            self._ipv4(eth_src, l3, frame[0] & vnet.F_NEEDS_CSUM, now)
        elif ethertype == ethernet.ETHERTYPE_ARP:
            self._arp(eth_src, l3, now)
        elif ethertype == ethernet.ETHERTYPE_IPV6:
            if self.ndp is None:
                self.stats.drop("ipv6_not_served")
            else:
                self._ipv6(eth_src, l3, now)
        else:
            self.stats.drop("ethertype_unknown")

    def _arp(self, eth_src: bytes, l3: memoryview, now: float) -> None:
        pkt = arp.parse(l3)
        cfg = self.config
        if pkt.sender_mac != eth_src:
            self.stats.drop("arp_spoofed_sender")
            return
        self._learn_mac(pkt.sender_ip, pkt.sender_mac, now)
        if pkt.op != arp.OP_REQUEST:
            return
        if pkt.target_ip == cfg.gateway:
            mac = cfg.gateway_mac
        elif pkt.target_ip == cfg.dns:
            mac = cfg.dns_mac
        else:
            return
        self.output.send_arp(arp.OP_REPLY, mac, pkt.target_ip, pkt.sender_mac, pkt.sender_ip)
        self.stats.count("arp_replies")

    def _ipv4(self, eth_src: bytes, l3: memoryview, _partial: int, now: float) -> None:
        ip = ipv4.parse(l3)
        cfg = self.config
        src = ip.src
        if ip.is_fragment:
            whole = self.reassembler.add(ip, l3, now)
            if whole is None:
                return
            self.stats.count("ipv4_reassembled")
            l3 = memoryview(whole)
            ip = ip._replace(ihl=ipv4.HEADER_LEN, total_length=len(whole), flags_frag=0)
        if src == _ZERO_IP:
            if ip.proto == ipv4.PROTO_UDP:  # only a DHCP client speaks before it has an address
                self._udp(eth_src, ip, l3, now)
            else:
                self.stats.drop("ipv4_source_unspecified")
            return
        if not cfg.in_network(src) or src in (cfg.gateway, cfg.dns):
            self.stats.drop("ipv4_source_outside")
            return
        self._learn_mac(src, eth_src, now)
        proto = ip.proto
        if proto == ipv4.PROTO_TCP:
            payload = l3[ip.ihl : ip.total_length]
            seg = tcp.parse(payload)
            quote = bytes(l3[: ip.ihl + 8])
            self.tcp.on_segment(eth_src, src, ip.dst, seg, payload[seg.header_len :], quote, now)
        elif proto == ipv4.PROTO_UDP:
            self._udp(eth_src, ip, l3, now)
        elif proto == ipv4.PROTO_ICMP:
            self._icmp(eth_src, ip, l3, now)
        else:
            self.stats.drop("ipv4_proto_unknown")
            quote = bytes(l3[: ip.ihl + 8])
            self.output.send_icmp_error(
                eth_src, icmpv4.TYPE_DEST_UNREACHABLE, icmpv4.CODE_PROTO_UNREACHABLE, quote
            )

    def _udp_payloads(self, payload: memoryview) -> list[memoryview]:
        """The datagrams a UDP payload carries: itself, or a GSO frame's run."""
        seg = self._udp_gso
        if not seg or len(payload) <= seg:
            return [payload]
        if -(-len(payload) // seg) > UDP_GSO_MAX_SEGMENTS:
            raise WireError("udp_gso_segments", f"{len(payload)} bytes in {seg}-byte datagrams")
        return [payload[i : i + seg] for i in range(0, len(payload), seg)]

    def _udp(self, eth_src: bytes, ip: ipv4.Ipv4Header, l3: memoryview, now: float) -> None:
        datagram = l3[ip.ihl : ip.total_length]
        hdr = udp.parse(datagram)
        for payload in self._udp_payloads(datagram[udp.HEADER_LEN : hdr.length]):
            self._udp_datagram(eth_src, ip, l3, hdr, payload, now)

    def _udp_datagram(
        self,
        eth_src: bytes,
        ip: ipv4.Ipv4Header,
        l3: memoryview,
        hdr: udp.UdpHeader,
        payload: memoryview,
        now: float,
    ) -> None:
        cfg = self.config
        if hdr.dst_port == dhcpv4.SERVER_PORT and ip.dst in (_LIMITED_BROADCAST, cfg.gateway):
            self._dhcp(eth_src, payload)
            return
        if ip.src == _ZERO_IP:
            self.stats.drop("ipv4_source_unspecified")
            return
        route = self.udp_routes_to_host.get((ip.src, hdr.src_port, ip.dst, hdr.dst_port))
        if route is not None:
            route.to_client(payload, now)
            return
        if ip.dst == cfg.dns and hdr.dst_port == dns.PORT and cfg.dns_enabled:
            self.dns.from_guest(eth_src, ip.src, hdr.src_port, payload, now)
            return
        quote = bytes(l3[: ip.ihl + 8])
        self.udp.from_guest(
            eth_src, ip.src, hdr.src_port, ip.dst, hdr.dst_port, payload, quote, now
        )

    def _dhcp(self, eth_src: bytes, payload: memoryview) -> None:
        msg = dhcpv4.parse(payload)
        if msg.chaddr != eth_src:
            self.stats.drop("dhcp_chaddr_mismatch")
            return
        reply = self.dhcp.handle(msg)
        if reply is None:
            return
        self.output.send_udp(
            eth_src,
            self.config.gateway,
            dhcpv4.SERVER_PORT,
            _LIMITED_BROADCAST,
            dhcpv4.CLIENT_PORT,
            dhcpv4.emit(reply, self.config.gateway),
        )
        self.stats.count("dhcp_replies")

    def _icmp(self, eth_src: bytes, ip: ipv4.Ipv4Header, l3: memoryview, now: float) -> None:
        msg = l3[ip.ihl : ip.total_length]
        hdr = icmpv4.parse(msg)
        if hdr.type != icmpv4.TYPE_ECHO_REQUEST:
            self.stats.drop("icmp_type_ignored")
            return
        cfg = self.config
        payload = msg[icmpv4.HEADER_LEN :]
        if ip.dst in (cfg.gateway, cfg.dns):
            self.output.send_icmp(
                eth_src,
                ip.dst,
                ip.src,
                icmpv4.IcmpHeader(icmpv4.TYPE_ECHO_REPLY, 0, hdr.ident, hdr.seq),
                payload,
            )
            self.stats.count("icmp_echo_answered")
            return
        if self.policy.is_vip(ip.dst):
            self.stats.drop("icmp_to_vip")
            return
        if self.policy.tcp_target(ip.dst, 0) is None or ip.dst == cfg.dns:
            self.stats.drop("icmp_destination_dropped")
            return
        quote = bytes(l3[: ip.ihl + 8])
        self.ping.from_guest(eth_src, ip.src, ip.dst, hdr, payload, quote, now)

    def _ipv6(self, eth_src: bytes, l3: memoryview, now: float) -> None:
        assert self.ndp is not None
        ip = ipv6.parse(l3)
        ul = ipv6.upper_layer(ip, l3)
        if ul.fragment_at:
            whole = self.reassembler.add6(
                l3, ul.fragment_at, ipv6.HEADER_LEN + ip.payload_length, now
            )
            if whole is None:
                return
            self.stats.count("ipv6_reassembled")
            l3 = memoryview(whole)
            ip = ipv6.parse(l3)
            ul = ipv6.upper_layer(ip, l3)
        body = l3[ul.offset : ipv6.HEADER_LEN + ip.payload_length]
        src = ip.src
        if ul.proto == ipv6.NEXT_ICMPV6:
            hdr = icmpv6.parse(body)
            if self.ndp.on_message(eth_src, ip, hdr, body, now):
                return
        link_local_echo = ipv6.is_link_local(src) and (
            ul.proto == ipv6.NEXT_ICMPV6  # echo to fe80::2
            or (ul.proto == ipv6.NEXT_UDP and ip.dst in (dhcpv6.ALL_SERVERS, ROUTER_LL))
        )
        if (not self.config.in_prefix6(src) and not link_local_echo) or src in self.ndp.virtual:
            self.stats.drop("ipv6_source_outside")
            return
        self._learn_mac(src, eth_src, now)
        quote = bytes(l3[: ul.offset + 8])
        if ul.proto == ipv6.NEXT_TCP:
            seg = tcp.parse(body)
            self.tcp.on_segment(eth_src, src, ip.dst, seg, body[seg.header_len :], quote, now)
        elif ul.proto == ipv6.NEXT_UDP:
            hdr_u = udp.parse(body)
            for payload in self._udp_payloads(body[udp.HEADER_LEN : hdr_u.length]):
                self._udp6_datagram(eth_src, ip, src, hdr_u, payload, quote, now)
        elif ul.proto == ipv6.NEXT_ICMPV6:
            self._icmp6(eth_src, ip, body, quote, now)
        else:
            self.stats.drop("ipv6_proto_unknown")

    def _udp6_datagram(
        self,
        eth_src: bytes,
        ip: ipv6.Ipv6Header,
        src: bytes,
        hdr_u: udp.UdpHeader,
        payload: memoryview,
        quote: bytes,
        now: float,
    ) -> None:
        route = self.udp_routes_to_host.get((src, hdr_u.src_port, ip.dst, hdr_u.dst_port))
        if route is not None:
            route.to_client(payload, now)
        elif hdr_u.dst_port == dhcpv6.SERVER_PORT and ip.dst in (dhcpv6.ALL_SERVERS, ROUTER_LL):
            self._dhcpv6(eth_src, src, hdr_u.src_port, payload)
        elif ip.dst == DNS6 and hdr_u.dst_port == dns.PORT and self.config.dns_enabled:
            self.dns.from_guest(eth_src, src, hdr_u.src_port, payload, now, dns_ip=DNS6)
        else:
            self.udp.from_guest(
                eth_src, src, hdr_u.src_port, ip.dst, hdr_u.dst_port, payload, quote, now
            )

    def _dhcpv6(self, eth_src: bytes, src: bytes, sport: int, payload: memoryview) -> None:
        """Stateless DHCPv6: an information request gets the DNS address (RFC 8415
        18.2.6); addresses come from SLAAC, so solicits go unanswered."""
        msg = dhcpv6.parse(payload)
        if msg.msg_type != dhcpv6.INFORMATION_REQUEST:
            self.stats.drop("dhcpv6_not_information_request")
            return
        options = {dhcpv6.OPT_SERVERID: dhcpv6.duid_ll(self.config.router_mac)}
        if dhcpv6.OPT_CLIENTID in msg.options:
            options[dhcpv6.OPT_CLIENTID] = msg.options[dhcpv6.OPT_CLIENTID]
        if self.config.dns_enabled:
            options[dhcpv6.OPT_DNS_SERVERS] = DNS6
        reply = dhcpv6.emit(dhcpv6.Dhcpv6Message(dhcpv6.REPLY, msg.transaction_id, options))
        self.output.send_udp(eth_src, ROUTER_LL, dhcpv6.SERVER_PORT, src, sport, reply)
        self.stats.count("dhcpv6_replies")

    def _icmp6(
        self, eth_src: bytes, ip: ipv6.Ipv6Header, body: memoryview, quote: bytes, now: float
    ) -> None:
        assert self.ndp is not None
        hdr = icmpv6.parse(body)
        if hdr.type != icmpv6.TYPE_ECHO_REQUEST:
            self.stats.drop("icmpv6_type_ignored")
            return
        if ip.dst in self.ndp.virtual:
            self.output.send_icmp6(
                eth_src, ip.dst, ip.src, icmpv6.TYPE_ECHO_REPLY, 0, bytes(body[4:])
            )
            self.stats.count("icmp_echo_answered")
            return
        if self.policy.is_vip(ip.dst):
            self.stats.drop("icmp_to_vip")
            return
        if not isinstance(self.policy.tcp_target(ip.dst, 0), list):
            self.stats.drop("icmp_destination_dropped")
            return
        echo = icmpv4.IcmpHeader(hdr.type, hdr.code, hdr.word1, hdr.word2)
        self.ping.from_guest(eth_src, ip.src, ip.dst, echo, body[icmpv6.HEADER_LEN :], quote, now)

    def start(self, now: float) -> None:
        """The loop runs: announce ourselves (the first router advertisement)."""
        if self.ndp is not None:
            self.ndp.start(now)
            self.timers.touch(self.ndp)

    # ------------------------------------------------- what connections ask of us
    def guest_mac_for(
        self, ip: bytes, when_known: Callable[[], None] | None = None
    ) -> bytes | None:
        """The guest's MAC for ip, or None after asking with ARP; when_known then runs
        once the reply comes (at most MAX_MAC_WAITERS wait per address)."""
        mac = self.neighbours.mac_of(ip)
        if mac is None:
            waiters = self.mac_waiters.setdefault(ip, [])
            if when_known is not None and len(waiters) < MAX_MAC_WAITERS:
                waiters.append(when_known)
            cfg = self.config
            if len(ip) == 16:
                if self.ndp is not None:
                    self.ndp.solicit(ip)
            else:
                self.output.send_arp(arp.OP_REQUEST, cfg.gateway_mac, cfg.gateway, bytes(6), ip)
            self.stats.count("neighbour_requests")
        return mac

    def _learn_mac(self, ip: bytes, mac: bytes, now: float) -> None:
        if not self.neighbours.seen(ip, mac, now):
            return
        self.timers.touch(self.neighbours)
        waiters = self.mac_waiters.pop(ip, None)
        for fn in waiters or ():
            fn()

    def count_drop(self, reason: str) -> None:
        self.stats.drop(reason)

    def send_icmp_unreachable(self, code: int, quoted_ip_packet: bytes) -> None:
        v6 = quoted_ip_packet[0] >> 4 == 6
        guest_ip = quoted_ip_packet[8:24] if v6 else quoted_ip_packet[12:16]
        mac = self.neighbours.mac_of(guest_ip)
        if mac is None:
            return
        self.output.send_icmp_error(mac, icmpv4.TYPE_DEST_UNREACHABLE, code, quoted_ip_packet)

    # ----------------------------------------------------------------- timers
    def run_timers(self, now: float) -> None:
        for obj in self.timers.run(now):
            if isinstance(obj, TcpConnection):
                self.tcp.timer_fired(obj)

    def close(self) -> None:
        self.tcp.close_all()
        self.udp.close_all()
        self.dns.close_all()
        self.ping.close_all()
