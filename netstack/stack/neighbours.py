"""The guest's neighbour table: the MAC that answers for each guest address.

Entries are learned from the guest's own frames (ARP senders, IPv4 and IPv6 sources,
NDP link-layer options), and only for addresses the guest can hold: inside --cidr
(neither its network nor its broadcast address, nor the gateway's or DNS's), or in
fd00::/64 or fe80::/64 (not one of our virtual addresses). A guest may still name as
many of those as it likes, so the table is capped (the entry seen longest ago gives
way) and an entry not seen for IDLE seconds is forgotten; whoever needs it next asks
again (ARP, neighbour solicitation). Sans-I/O: time comes in as `now`.
"""

from __future__ import annotations

from collections import OrderedDict

from netstack.stack.config import DNS6, DNS_LL, HOST6, ROUTER_LL, NetworkConfig

# a container holds a few addresses (IPv4, a SLAAC and a link-local IPv6, some privacy
# addresses); 256 is ample, and 256 entries cost some 60 KiB
MAX_NEIGHBOURS = 256
IDLE = 600.0  # seconds; a live flow refreshes its guest's entry with every frame

_LINK_LOCAL64 = bytes.fromhex("fe80000000000000")
_VIRTUAL6 = (HOST6, DNS6, ROUTER_LL, DNS_LL)


class Neighbours:
    def __init__(
        self, config: NetworkConfig, max_entries: int = MAX_NEIGHBOURS, idle: float = IDLE
    ) -> None:
        self.config = config
        self.max_entries = max_entries
        self.idle = idle
        # address -> (MAC, last seen), the one seen longest ago first
        self.entries: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.entries)

    def mac_of(self, ip: bytes) -> bytes | None:
        entry = self.entries.get(ip)
        return None if entry is None else entry[0]

    def may_hold(self, ip: bytes) -> bool:
        """Whether the guest can have ip as its own address."""
        cfg = self.config
        if len(ip) == 4:
            return (
                cfg.in_network(ip)
                and ip not in (cfg.network, cfg.broadcast, cfg.gateway, cfg.dns)
            )
        if len(ip) != 16 or ip in _VIRTUAL6:
            return False
        return cfg.in_prefix6(ip) or ip[:8] == _LINK_LOCAL64

    def seen(self, ip: bytes, mac: bytes, now: float) -> bool:
        """ip was seen from mac: refresh or learn it. True if the entry is new or its
        MAC changed; False if unchanged or not an address the guest can hold."""
        entries = self.entries
        entry = entries.get(ip)
        if entry is not None and entry[0] == mac:
            entries[ip] = (mac, now)
            entries.move_to_end(ip)
            return False
        if not self.may_hold(ip):
            return False
        if entry is None and len(entries) >= self.max_entries:
            entries.popitem(last=False)
            self.evicted += 1
        entries[ip] = (mac, now)
        entries.move_to_end(ip)
        return True

    # a Timed object: the idlest entry's expiry
    @property
    def deadline(self) -> float | None:
        for _, seen in self.entries.values():
            return seen + self.idle
        return None

    def on_timer(self, now: float) -> None:
        entries = self.entries
        while entries:
            ip, (_, seen) = next(iter(entries.items()))
            if seen + self.idle > now:
                return
            del entries[ip]
