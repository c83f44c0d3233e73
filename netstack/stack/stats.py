"""Counters: named events and drops by reason, cheap enough for the data path."""

from __future__ import annotations

from collections import Counter


class Stats:
    def __init__(self) -> None:
        self.drops: Counter[str] = Counter()
        self.events: Counter[str] = Counter()

    def drop(self, reason: str) -> None:
        self.drops[reason] += 1

    def count(self, event: str, n: int = 1) -> None:
        self.events[event] += n

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {"drops": dict(self.drops), "events": dict(self.events)}
