"""The host resolver's nameservers, from resolv.conf, re-read when the file changes
(checked at most once a second)."""

from __future__ import annotations

import ipaddress
import os
import time

from netstack.log import get_logger

log = get_logger(__name__)

RECHECK_INTERVAL = 1.0


def parse_nameservers(text: str) -> list[str]:
    servers: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:  # canonical form: replies come from the address as the kernel writes it
                addr = str(ipaddress.ip_address(fields[1].split("%", 1)[0]))
            except ValueError:
                continue
            if addr not in servers:
                servers.append(addr)
    return servers


class ResolvConf:
    def __init__(self, path: str = "/etc/resolv.conf") -> None:
        self.path = path
        self._servers: list[str] = []
        self._stamp: tuple[int, int, int, int] | None = None
        self._checked = -RECHECK_INTERVAL
        self.servers(log_change=False)  # announce() logs it, after the ready byte

    def announce(self) -> None:
        log.info("resolv.conf: nameservers %s", ", ".join(self._servers) or "none")

    def servers(self, log_change: bool = True) -> list[str]:
        now = time.monotonic()
        if now - self._checked < RECHECK_INTERVAL:
            return self._servers
        self._checked = now
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                with open(self.path) as f:
                    self._servers = parse_nameservers(f.read())
                self._stamp = stamp
                if log_change:
                    self.announce()
        except OSError as e:
            if self._stamp is not None or self._servers:
                log.warning("resolv.conf: %s", e)
            self._servers = []
            self._stamp = None
        return self._servers
