"""One timer queue for every timed object (TCP connections, UDP flows, DNS queries).

An object exposes `deadline` (a time or None) and `on_timer(now)`. After anything
that may move its deadline, call `touch(obj)`. Entries are lazy: an entry whose
deadline is no longer the object's scheduled one is skipped when it comes up.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Protocol


class Timed(Protocol):
    @property
    def deadline(self) -> float | None: ...

    def on_timer(self, now: float) -> None: ...


class TimerQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timed]] = []
        self._scheduled: dict[int, float] = {}
        self._order = itertools.count()

    def touch(self, obj: Timed) -> None:
        d = obj.deadline
        if d is None:
            return
        key = id(obj)
        at = self._scheduled.get(key)
        if at is None or d < at:
            self._scheduled[key] = d
            heapq.heappush(self._heap, (d, next(self._order), obj))
            self._compact_if_stale()

    def forget(self, obj: Timed) -> None:
        self._scheduled.pop(id(obj), None)
        self._compact_if_stale()

    def _compact_if_stale(self) -> None:
        """Drop stale entries once they outnumber live ones: a stale entry holds its
        object (a closed flow, say) until its deadline, hours away for an idle timer."""
        if len(self._heap) > 2 * len(self._scheduled) + 64:
            scheduled = self._scheduled
            self._heap = [e for e in self._heap if scheduled.get(id(e[2])) == e[0]]
            heapq.heapify(self._heap)

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and self._scheduled.get(id(heap[0][2])) != heap[0][0]:
            heapq.heappop(heap)  # stale
        return heap[0][0] if heap else None

    def run(self, now: float) -> list[Timed]:
        """Fire everything due; returns the objects that ran."""
        ran: list[Timed] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, _, obj = heapq.heappop(heap)
            key = id(obj)
            if self._scheduled.get(key) != at:
                continue
            del self._scheduled[key]
            d = obj.deadline
            if d is not None and d <= now:
                obj.on_timer(now)
                ran.append(obj)
            self.touch(obj)
        return ran

    def __len__(self) -> int:
        return len(self._scheduled)
