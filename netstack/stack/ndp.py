"""IPv6 neighbour and router discovery for the virtual hosts (with -6).

Answers neighbour solicitations for the router (fe80::2, fd00::2) and the DNS address
(fe80::3, fd00::3), answers router solicitations, and advertises fd00::/64 for SLAAC,
the link MTU and (RFC 8106) the DNS address, unsolicited every 200-600 s as
slirp4netns does. Guest MACs are learned from the link-layer options.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

from netstack.stack.config import (
    DNS6,
    DNS_LL,
    HOST6,
    PREFIX6,
    ROUTER_LL,
    NetworkConfig,
    virtual_mac,
)
from netstack.stack.guest_output import GuestOutput
from netstack.stack.stats import Stats
from netstack.wire import WireError, icmpv6, ipv6

ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")
ALL_NODES_MAC = ipv6.multicast_mac(ALL_NODES)
UNSPECIFIED = bytes(16)

ROUTER_LIFETIME = 1800
PREFIX_VALID = 86400
PREFIX_PREFERRED = 14400
RDNSS_LIFETIME = 1800
RA_INTERVAL = (200.0, 600.0)


class Ndp:
    def __init__(
        self,
        config: NetworkConfig,
        output: GuestOutput,
        stats: Stats,
        learn: Callable[[bytes, bytes, float], None],
    ) -> None:
        self.config = config
        self.output = output
        self.stats = stats
        self.learn = learn
        router_mac = config.router_mac
        dns_mac = virtual_mac(DNS6)
        self.virtual = {HOST6: router_mac, ROUTER_LL: router_mac, DNS6: dns_mac, DNS_LL: dns_mac}
        self.next_ra: float | None = None

    # a Timed object: the periodic router advertisement
    @property
    def deadline(self) -> float | None:
        return self.next_ra

    def start(self, now: float) -> None:
        self.next_ra = now

    def on_timer(self, now: float) -> None:
        if self.next_ra is not None and now >= self.next_ra:
            self.send_ra(ALL_NODES_MAC, ALL_NODES)
            self.next_ra = now + random.uniform(*RA_INTERVAL)

    def on_message(
        self,
        eth_src: bytes,
        ip: ipv6.Ipv6Header,
        hdr: icmpv6.Icmpv6Header,
        msg: memoryview,
        now: float,
    ) -> bool:
        """Handle an NDP message; False if it is not one of ours to handle."""
        if hdr.type == icmpv6.TYPE_ROUTER_SOLICIT:
            self._check_ndp(ip)
            opts = icmpv6.parse_options(msg[8:])
            self._learn(ip.src, opts.get(icmpv6.OPT_SOURCE_LL), eth_src, now)
            self.send_ra(ALL_NODES_MAC, ALL_NODES)
            self.stats.count("ndp_router_adverts")
            return True
        if hdr.type == icmpv6.TYPE_NEIGHBOR_SOLICIT:
            self._check_ndp(ip)
            if len(msg) < 24:
                raise WireError("ndp_short")
            target = bytes(msg[8:24])
            opts = icmpv6.parse_options(msg[24:])
            self._learn(ip.src, opts.get(icmpv6.OPT_SOURCE_LL), eth_src, now)
            mac = self.virtual.get(target)
            if mac is None:
                return True  # not ours (the guest's own DAD, another guest address)
            flags = icmpv6.NA_OVERRIDE
            if target in (ROUTER_LL, HOST6):
                flags |= icmpv6.NA_ROUTER
            if ip.src == UNSPECIFIED:
                dst, dst_mac = ALL_NODES, ALL_NODES_MAC
            else:
                dst, dst_mac = ip.src, eth_src
                flags |= icmpv6.NA_SOLICITED
            body = struct.pack("!I16s", flags, target) + icmpv6.ll_option(icmpv6.OPT_TARGET_LL, mac)
            self.output.send_icmp6(
                dst_mac,
                target,
                dst,
                icmpv6.TYPE_NEIGHBOR_ADVERT,
                0,
                body,
                src_mac=mac,
                hop_limit=255,
            )
            self.stats.count("ndp_neighbor_adverts")
            return True
        if hdr.type == icmpv6.TYPE_NEIGHBOR_ADVERT:
            self._check_ndp(ip)
            if len(msg) >= 24:
                opts = icmpv6.parse_options(msg[24:])
                self._learn(bytes(msg[8:24]), opts.get(icmpv6.OPT_TARGET_LL), eth_src, now)
            return True
        return False

    def _check_ndp(self, ip: ipv6.Ipv6Header) -> None:
        if ip.hop_limit != 255:  # RFC 4861: NDP from off-link is forged
            raise WireError("ndp_hop_limit")

    def _learn(self, ip: bytes, ll: bytes | None, eth_src: bytes, now: float) -> None:
        """The learner keeps only addresses the guest can hold (stack/neighbours.py)."""
        if ip == UNSPECIFIED or ip in self.virtual:
            return
        mac = ll[:6] if ll and len(ll) >= 6 else eth_src
        if mac == eth_src:  # an option naming someone else's MAC is not believed
            self.learn(ip, mac, now)

    def solicit(self, target: bytes) -> None:
        """Ask for the guest's MAC for target (its answer reaches us as an NA)."""
        mac = self.config.router_mac
        dst = ipv6.solicited_node(target)
        body = struct.pack("!I16s", 0, target) + icmpv6.ll_option(icmpv6.OPT_SOURCE_LL, mac)
        self.output.send_icmp6(
            ipv6.multicast_mac(dst),
            ROUTER_LL,
            dst,
            icmpv6.TYPE_NEIGHBOR_SOLICIT,
            0,
            body,
            src_mac=mac,
            hop_limit=255,
        )

    def send_ra(self, dst_mac: bytes, dst: bytes) -> None:
        cfg = self.config
        body = struct.pack("!BBHII", 64, 0, ROUTER_LIFETIME, 0, 0)
        body += icmpv6.ll_option(icmpv6.OPT_SOURCE_LL, cfg.router_mac)
        body += icmpv6.mtu_option(cfg.mtu)
        body += icmpv6.prefix_option(
            PREFIX6.network_address.packed, 64, PREFIX_VALID, PREFIX_PREFERRED
        )
        if cfg.dns_enabled:
            body += icmpv6.rdnss_option([DNS6], RDNSS_LIFETIME)
        self.output.send_icmp6(
            dst_mac, ROUTER_LL, dst, icmpv6.TYPE_ROUTER_ADVERT, 0, body, hop_limit=255
        )
