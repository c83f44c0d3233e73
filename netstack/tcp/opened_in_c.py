"""Flows C opens itself (csrc/flow_syn.c, csrc/flow_forward.c): the part of the C
context (tcp/fastpath.py's FastPath, which is one) that sets C up to answer a guest's
SYN to the gateway and to accept a port forward's connections, and that takes on the
flows C opened when Python must see them.

C answers a plain SYN to the gateway itself once Python has said what it maps to
(`open_syns`). Python has no connection for such a flow until it must see it:
`adopt_listed` has one built from C's state (the table's `adopt_from_c`); one closed
both ways, the guest first, is closed in C and Python never hears of it, and one closed
our FIN first lingers in TIME_WAIT in C. C also accepts a port forward's connections
(`open_forwards`, `listen`), and Python adopts those only as it adopts the others.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from netstack.tcp.params import DEFAULT_MSS, OUR_WSCALE, TIME_WAIT

# a flow C opened is Python's (adopted) this long after, if still open: before its
# first retransmission could be due (RTO_INITIAL), since its timers are Python's
ADOPT_AFTER = 0.1
V4_MAPPED = bytes(10) + b"\xff\xff"  # C keys IPv4 addresses as ::ffff:a.b.c.d


class OpenedInC:
    """SYNs and forwards' connections C opens, and their adoption. FastPath sets `ctx`,
    `lib` and `ffi` (its C context and cffi's)."""

    ctx: Any
    lib: Any
    ffi: Any

    def __init__(self) -> None:
        # builds a connection for a flow C opened (set with open_syns, open_forwards)
        self.adopt_from_c: Callable[[Any], object] | None = None
        # forwards' listeners C accepts on (open_forwards, listen): each one's taker of
        # the connections C accepted but left, by listener fd
        self.forwards_on = False
        self.listeners_left: dict[int, Callable[[int, float], None]] = {}

    def open_syns(
        self,
        epfd: int,
        v4: tuple[bytes, bytes, bytes, bytes] | None,
        v6: tuple[bytes, bytes, bytes] | None,
        mtu: int,
        max_flows: int,
        max_half_open: int,
        adopt: Callable[[Any], object],
    ) -> None:
        """C answers plain SYNs to the gateway, connecting to host loopback on the same
        port (the policy's mapping, which the caller has checked holds for each family
        given: the host loopback allowed, no outbound address) and adding the socket to
        epfd. v4: (network, netmask, gateway, DNS address); v6: (the /64 prefix's first
        8 bytes, the router's address, the DNS address)."""
        ctx = self.ctx
        if v4 is not None:
            ctx.syn_net, ctx.syn_mask, ctx.syn_gateway, ctx.syn_dns = v4
            ctx.syn_on = 1
        if v6 is not None:
            ctx.syn_prefix6, ctx.syn_host6, ctx.syn_dns6 = v6
            ctx.syn_on6 = 1
        self._opens_in_c(epfd, mtu, max_flows, max_half_open, adopt)

    def open_forwards(
        self,
        epfd: int,
        v4: tuple[bytes, bytes, bytes],
        host6: bytes,
        mtu: int,
        max_flows: int,
        max_half_open: int,
        adopt: Callable[[Any], object],
    ) -> None:
        """C accepts the connections of the listeners given to `listen` and opens them
        to the guest (csrc/flow_forward.c). v4: (network, netmask, gateway) for the
        address an IPv4 guest sees a client by; host6 the one an IPv6 guest sees."""
        ctx = self.ctx
        ctx.fwd_net, ctx.fwd_mask, ctx.fwd_gateway = v4
        ctx.fwd_host6 = host6
        self.forwards_on = True
        self._opens_in_c(epfd, mtu, max_flows, max_half_open, adopt)

    def _opens_in_c(
        self,
        epfd: int,
        mtu: int,
        max_flows: int,
        max_half_open: int,
        adopt: Callable[[Any], object],
    ) -> None:
        """What C needs to open flows of its own (SYNs, forwards): the epoll a new host
        socket joins, the options Python would pick, Python's limits."""
        ctx = self.ctx
        ctx.syn_epfd = epfd
        ctx.syn_mtu = mtu
        ctx.syn_our_wscale = OUR_WSCALE
        ctx.syn_default_mss = DEFAULT_MSS
        ctx.syn_flow_limit = max_flows
        ctx.syn_half_open_limit = max_half_open
        ctx.adopt_after = ADOPT_AFTER
        ctx.time_wait_s = TIME_WAIT
        self.adopt_from_c = adopt

    def listen(
        self, fd: int, guest_ip: bytes, guest_port: int, take_left: Callable[[int, float], None]
    ) -> bool:
        """C accepts on fd (an IPv4 listener in the loop's epoll) once `listener_mac`
        told it the guest's MAC; take_left(client fd, now) opens a connection it
        accepted but left. False: not with open_forwards, or no room."""
        if not self.forwards_on:
            return False
        v6 = len(guest_ip) == 16
        ip = guest_ip if v6 else V4_MAPPED + guest_ip
        if int(self.lib.ns_listen_add(self.ctx, fd, ip, guest_port, v6)) != 0:
            return False
        self.listeners_left[fd] = take_left
        return True

    def unlisten(self, fd: int) -> None:
        self.lib.ns_listen_remove(self.ctx, fd)
        self.listeners_left.pop(fd, None)

    def listener_mac(self, fd: int, mac: bytes | None) -> None:
        """The guest's MAC for listener fd (None: unknown, Python accepts; fd -1: all)."""
        self.lib.ns_listen_set_mac(self.ctx, fd, self.ffi.NULL if mac is None else mac)

    def adopt_tuple(self, guest_ip: bytes, guest_port: int, remote_ip: bytes, port: int) -> None:
        """Python is about to open this 4-tuple: a flow C opened on it that Python has
        not seen is taken on now, one lingering in TIME_WAIT in C gives way."""
        if not self.ctx.nunadopted and not self.ctx.ntime_wait:
            return
        v6 = len(guest_ip) == 16
        c = self.lib.ns_tuple_claim(
            self.ctx,
            guest_ip if v6 else V4_MAPPED + guest_ip,
            guest_port,
            remote_ip if v6 else V4_MAPPED + remote_ip,
            port,
        )
        if c != self.ffi.NULL and c.unadopted:
            self.lib.ns_adopted(self.ctx, c)
            if self.adopt_from_c is not None:
                self.adopt_from_c(c)

    def set_counts(self, flows: int, half_open: int) -> None:
        """Python's flows and half-open ones now (C counts its own against the limits)."""
        ctx = self.ctx
        ctx.py_flows = flows
        ctx.py_half_open = half_open

    def unadopted(self) -> int:
        """Flows C opened that Python has no connection for."""
        return int(self.ctx.nunadopted)

    def time_wait(self) -> int:
        """Flows C opened and closed, our FIN first, lingering in TIME_WAIT there
        (csrc/flow_time_wait.c): Python never sees them."""
        return int(self.ctx.ntime_wait)

    def time_wait_flows(self) -> Iterator[Any]:
        """Those flows, oldest first (C's structs: read them before the next C call)."""
        ctx = self.ctx
        slot = int(ctx.tw_head)
        while slot:
            f = ctx.flows[slot - 1]
            yield f
            slot = int(f.tw_next)

    def evict_time_wait(self) -> bool:
        """The oldest of those gives way (False: there is none)."""
        return bool(self.lib.ns_tw_evict_oldest(self.ctx))

    def adopt_listed(self) -> None:
        """Connections for the flows C listed: Python is about to see them."""
        ctx = self.ctx
        adopt = self.adopt_from_c
        while ctx.nadopts:
            c = ctx.flows + int(ctx.adopts[0])
            self.lib.ns_adopted(ctx, c)  # off the list
            if adopt is not None:
                adopt(c)

    def drop_unseen(self, c: Any) -> None:
        """Close a flow C opened, adopted by no connection, without a segment."""
        fd = int(c.fd)
        self.lib.ns_flow_close(self.ctx, c)
        os.close(fd)  # out of the epoll with it

    def _accepted_left(self, now: float) -> None:
        """Connections C accepted on a forward's listener and left to Python."""
        ctx = self.ctx
        left = [(int(ctx.fwd_py_listener[i]), int(ctx.fwd_py_fd[i])) for i in range(ctx.nfwd_py)]
        ctx.nfwd_py = 0
        for listener_fd, client_fd in left:
            take = self.listeners_left.get(listener_fd)
            if take is not None:
                take(client_fd, now)
            else:
                os.close(client_fd)  # its listener is gone

    def adopt_all(self) -> None:
        """Connections for every flow C opened (the API lists them; the stack closes)."""
        if self.ctx.nunadopted:
            self.lib.ns_adopt_all(self.ctx)
            self.adopt_listed()
