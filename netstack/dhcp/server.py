"""DHCPv4 server (sans-I/O): leases from the pool N+15..N+30 by client MAC, with router,
DNS and netmask, as libslirp hands them out. Lease time 86400 s."""

from __future__ import annotations

import struct

from netstack.stack.config import DHCP_POOL_SIZE, NetworkConfig
from netstack.wire import dhcpv4
from netstack.wire.dhcpv4 import DhcpMessage

LEASE_SECONDS = 86400


class DhcpServer:
    def __init__(self, config: NetworkConfig) -> None:
        self.config = config
        self.leases: dict[bytes, int] = {}  # client MAC -> pool index

    def _lease_for(self, mac: bytes) -> int | None:
        if mac in self.leases:
            return self.leases[mac]
        used = set(self.leases.values())
        for i in range(DHCP_POOL_SIZE):
            if i not in used:
                self.leases[mac] = i
                return i
        return None

    def handle(self, msg: DhcpMessage) -> DhcpMessage | None:
        """The reply to a client message, or None (nothing to say)."""
        if msg.op != dhcpv4.OP_REQUEST:
            return None
        kind = msg.message_type
        if kind == dhcpv4.RELEASE:
            self.leases.pop(msg.chaddr, None)
            return None
        if kind not in (dhcpv4.DISCOVER, dhcpv4.REQUEST):
            return None
        index = self._lease_for(msg.chaddr)
        if index is None:
            return None
        addr = self.config.dhcp_address(index)
        if kind == dhcpv4.REQUEST:
            wanted = msg.options.get(dhcpv4.OPT_REQUESTED_IP) or (
                msg.ciaddr if msg.ciaddr != b"\0\0\0\0" else None
            )
            server = msg.options.get(dhcpv4.OPT_SERVER_ID)
            if server is not None and server != self.config.gateway:
                return None  # the client chose another server
            if wanted is not None and wanted != addr:
                return self._reply(msg, dhcpv4.NAK, b"\0\0\0\0")
            return self._reply(msg, dhcpv4.ACK, addr)
        return self._reply(msg, dhcpv4.OFFER, addr)

    def _reply(self, msg: DhcpMessage, kind: int, addr: bytes) -> DhcpMessage:
        cfg = self.config
        options: dict[int, bytes] = {
            dhcpv4.OPT_MESSAGE_TYPE: bytes((kind,)),
            dhcpv4.OPT_SERVER_ID: cfg.gateway,
        }
        if kind != dhcpv4.NAK:
            options[dhcpv4.OPT_LEASE_TIME] = struct.pack("!I", LEASE_SECONDS)
            options[dhcpv4.OPT_SUBNET_MASK] = cfg.netmask
            options[dhcpv4.OPT_ROUTER] = cfg.gateway
            if cfg.dns_enabled:
                options[dhcpv4.OPT_DNS] = cfg.dns
        return DhcpMessage(
            dhcpv4.OP_REPLY, msg.xid, msg.flags, b"\0\0\0\0", addr, cfg.gateway, msg.chaddr, options
        )
