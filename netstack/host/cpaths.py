"""The C paths' set-up on a runtime (csrc/): established TCP flows (csrc/flow.c),
established UDP flows (csrc/udp.c) and UDP DNS queries (csrc/dns.c) in one context;
on EpollLoop the loop's wait in C (csrc/loop.c), guest SYNs to the gateway
(csrc/flow_syn.c) and port forwards' connections (csrc/flow_forward.c). Each has a
developer's knob that keeps it in Python, the twin the tests also run:
NETSTACK_FASTPATH=0 (all of them), NETSTACK_DNS_FAST=0, NETSTACK_CLOOP=0,
NETSTACK_SYN_C=0, NETSTACK_FWD_C=0; NETSTACK_SPIN_US sets the loop's polling.
"""

from __future__ import annotations

import os
import select
import socket
from typing import TYPE_CHECKING

from netstack.dns.fastpath import DnsFastPath
from netstack.host.interfaces import CPathsHost
from netstack.host.loop import EpollLoop
from netstack.link.tap import TapLink
from netstack.log import get_logger
from netstack.stack.config import DNS6, HOST6, PREFIX6, NetworkConfig, virtual_mac
from netstack.tcp.fastpath import FastPath
from netstack.udp.fastpath import UdpFastPath

if TYPE_CHECKING:
    from netstack.stack.vips import DirectorySettings

log = get_logger(__name__)

# The C loop's poll without sleeping after an event, in us (yielding the CPU between
# polls): an answer that comes within it costs no wakeup. 2026-11-29, 4 rounds side by
# side: request/response p50 77 us (50 us of polling: 94, none: 104; slirp4netns
# 113), new connections 3,614/s (3,313; slirp4netns 3,469); bulk TCP, UDP and DNS
# unchanged. The price: while a request/response loop runs netstack uses 90 % of a
# core against 34 % without polling (slirp4netns 34 %); an idle stack does not poll.
SPIN_US = 100


def attach(
    rt: CPathsHost, config: NetworkConfig, link: TapLink, directory: DirectorySettings | None
) -> None:
    """Give rt its C paths (the caller has checked the C extension is built)."""
    rt.fastpath = FastPath(
        link.fileno(),
        link.vnet,
        rt.rx_buf,
        config.gateway_mac,
        config.dns_mac,
        rt.stack.tcp.max_flows,
        router_mac=config.router_mac,
        dns6_mac=virtual_mac(DNS6),
    )
    rt.fastpath.touch_timer = rt.stack.timers.touch
    delack = os.environ.get("NETSTACK_DELACK_MS")  # a developer's knob: 0 turns it off
    if delack is not None:
        rt.fastpath.ctx.delack_delay = float(delack) / 1000
    rt.stack.tcp.fastpath = rt.fastpath
    # established UDP flows too (csrc/udp.c), in the same context
    try:
        rt.udp_fast = UdpFastPath(
            rt.fastpath,
            config,
            link.mtu,
            rt.stack.udp.max_flows,
            rt.stack.udp_routes_to_host,
        )
    except MemoryError:
        log.warning("no memory for the UDP flow path: UDP stays in Python")
    else:
        rt.stack.udp.fast = rt.udp_fast
        rt.stack.stats.add_source(rt.udp_fast.counters, rt.udp_fast.drops)
    # UDP DNS queries to the DNS address too (csrc/dns.c), unless --directory
    # answers names here or NETSTACK_DNS_FAST=0 (a developer's A/B knob)
    if directory is None and config.dns_enabled and os.environ.get("NETSTACK_DNS_FAST", "1") != "0":
        try:
            rt.dns_fast = DnsFastPath(
                rt.fastpath,
                rt.stack.dns,
                rt,
                config.dns,
                DNS6 if config.ipv6 else None,
                link.mtu,
            )
        except MemoryError:
            log.warning("no memory for the DNS path: DNS stays in Python")
        else:
            rt.stack.stats.add_source(rt.dns_fast.counters, rt.dns_fast.drops)
    # the C loop is the default on EpollLoop; NETSTACK_CLOOP=0 keeps the wait in
    # Python (the twin the tests also run)
    if isinstance(rt.loop, EpollLoop) and os.environ.get("NETSTACK_CLOOP", "1") == "1":
        # one epoll: host sockets join the loop's readers, and C waits on it
        rt.c_loop = True
        rt.epoll.close()
        rt.epoll = rt.loop.epoll
        rt.fastpath.use_loop()
        # after an event, C polls without sleeping this long: NETSTACK_SPIN_US
        # sets it (see csrc/loop.c and SPIN_US)
        spin_us = float(os.environ.get("NETSTACK_SPIN_US", SPIN_US))
        rt.fastpath.ctx.spin = spin_us / 1e6
        _open_syns(rt, config, link.mtu)
        _open_forwards(rt, config, link.mtu)
    elif rt.fastpath.delack_fd() >= 0:  # C reads it in ns_host_poll
        rt.epoll.register(rt.fastpath.delack_fd(), select.EPOLLIN)


def _open_syns(rt: CPathsHost, config: NetworkConfig, mtu: int) -> None:
    """Guest SYNs to the gateway (with -6 also the router's address) are answered in
    C (csrc/flow_syn.c) when the policy maps it to host loopback and nothing else is
    decided per connection: the host loopback allowed, no --outbound-addr for the
    family (C connects unbound), no directory. NETSTACK_SYN_C=0 keeps them in Python
    (the twin the tests run)."""
    fast = rt.fastpath
    if (
        fast is None
        or not config.host_loopback
        or rt.stack.vips is not None
        or os.environ.get("NETSTACK_SYN_C", "1") == "0"
    ):
        return
    v4 = None
    if rt.outbound[socket.AF_INET] is None:
        v4 = (config.network, config.netmask, config.gateway, config.dns)
    v6 = None
    if config.ipv6 and rt.outbound[socket.AF_INET6] is None:
        v6 = (PREFIX6.network_address.packed[:8], HOST6, DNS6)
    if v4 is None and v6 is None:
        return
    table = rt.stack.tcp
    fast.open_syns(
        rt.epoll.fileno(),
        v4,
        v6,
        mtu,
        table.max_flows,
        table.max_half_open,
        table.adopt_from_c,
    )
    ctx = fast.ctx
    rt.stack.stats.add_source(
        lambda: {
            "tcp_flows_opened": int(ctx.syns_in_c),
            "tcp_flows_closed": int(ctx.closed_in_c),
        },
        dict,
    )


def _open_forwards(rt: CPathsHost, config: NetworkConfig, mtu: int) -> None:
    """A TCP port forward's connections (on an IPv4 listener) are accepted in C and
    opened to the guest there (csrc/flow_forward.c); NETSTACK_FWD_C=0 keeps them in
    Python (the twin the tests run)."""
    fast = rt.fastpath
    if fast is None or os.environ.get("NETSTACK_FWD_C", "1") == "0":
        return
    table = rt.stack.tcp
    fast.open_forwards(
        rt.epoll.fileno(),
        (config.network, config.netmask, config.gateway),
        HOST6,
        mtu,
        table.max_flows,
        table.max_half_open,
        table.adopt_from_c,
    )
    ctx = fast.ctx
    rt.stack.stats.add_source(
        lambda: {"tcp_forwards_opened": int(ctx.forwards_in_c)},
        lambda: {"tcp_forward_tuple_busy": int(ctx.forwards_busy)},
    )
