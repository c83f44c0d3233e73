"""Counters: named events and drops by reason, cheap enough for the data path.

Counts kept elsewhere (the C flow path counts its own datagrams) join through
`add_source`: each snapshot adds what the source reports."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

CountSource = Callable[[], dict[str, int]]


class Stats:
    def __init__(self) -> None:
        self.drops: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self._sources: list[tuple[CountSource, CountSource]] = []

    def drop(self, reason: str) -> None:
        self.drops[reason] += 1

    def count(self, event: str, n: int = 1) -> None:
        self.events[event] += n

    def add_source(self, events: CountSource, drops: CountSource) -> None:
        self._sources.append((events, drops))

    def snapshot(self) -> dict[str, dict[str, int]]:
        drops, events = dict(self.drops), dict(self.events)
        for more_events, more_drops in self._sources:
            for into, more in ((events, more_events()), (drops, more_drops())):
                for k, v in more.items():
                    if v:
                        into[k] = into.get(k, 0) + v
        return {"drops": drops, "events": events}
