"""Resource limits: what one guest may make the stack hold. Defaults suit a container;
the command line changes them (--max-tcp-flows and friends).

When a limit is reached the guest gets a proper refusal (RST, ICMP) and the event is
counted; flows already open keep working. Under a SYN flood the oldest half-open flow
gives way to the newest, so a real client's handshake (which completes in well under
a millisecond here) still gets through.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple


# NamedTuple, not a dataclass: the module is on the start path, and importing
# dataclasses alone takes ~5 ms of a ~50 ms start (bench/startup)
class Limits(NamedTuple):
    max_tcp_flows: int = 4096
    max_half_open: int = 512  # guest SYNs whose handshake has not completed
    max_udp_flows: int = 1024  # one host socket per guest UDP source
    max_icmp_flows: int = 256
    max_dns_queries: int = 256
    icmp_errors_per_second: int = 200  # ICMP errors we send the guest (token bucket)
    udp_timeout: int = 240  # seconds an idle UDP flow keeps its host socket (slirp's value)


class TokenBucket:
    """`rate` events per second, bursts up to `rate`."""

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self.tokens = float(rate)
        self.stamp = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(float(self.rate), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
