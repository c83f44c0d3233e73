"""The guest -> host direction of one connection: bytes handed to the host socket, the
ones it has not taken yet, and the window those allow the guest (sans-I/O apart from
the HostStream it is given; socket errors propagate as OSError to the connection).

Small segments of one batch of guest frames are gathered into one reused buffer and
written with one send() when the batch ends (a send per 1,448-byte segment is most of the cost when
the guest's TSO is off); TSO super-segments go out at once, since copying them would
cost more than it saves. What the socket does not take waits in `pending`.

The window is the host socket's free space plus PENDING_SLACK, or only what is left of
the slack once bytes wait: the slack makes a busy socket refuse a write (which arms its
write-space wakeup, so we hear when it drains) instead of our window quietly reaching
zero with nothing to wake us.

Bounds. The connection takes nothing past the right edge of the window it advertised
(TcpConnection.rcv_adv), so one flow's pending bytes stay under WINDOW_MAX (1 MiB: the
largest window we advertise; once bytes wait the window is only the rest of the slack).
All flows together hold at most PENDING_TOTAL_MAX pending (a PendingBudget the TCP
table shares): past it a flow takes no more into pending (the guest retransmits
what was not acknowledged) and advertises no slack. Two overshoots are charged all the
same, since those bytes were acknowledged already: a batch's gathered segments that
the socket refuses, and what the C flow path had gathered when it hands a flow back.
"""

from __future__ import annotations

from netstack.tcp.interfaces import HostStream

WINDOW_MAX = 1 << 20  # bounds what the guest may have in flight to us (and the TAP
#                      ring's load: 1 MiB at MTU 1500 is ~720 frames < txqueuelen 1000)
PENDING_SLACK = 64 * 1024
# What the guest had in flight when the socket filled (up to WINDOW_MAX) still lands in
# pending; beyond this, a guest that ignores our window gets nothing accepted.
PENDING_MAX = 2 * WINDOW_MAX
GATHER_MAX_SEGMENT = 16 * 1024
PENDING_TOTAL_MAX = 64 << 20  # pending bytes across all flows (64 flows' worth of 1 MiB)


class PendingBudget:
    """Pending guest bytes across all connections, against one limit."""

    def __init__(self, limit: int = PENDING_TOTAL_MAX) -> None:
        self.limit = limit
        self.used = 0
        self.refused = 0  # bytes not taken because the budget was spent

    def room(self) -> int:
        return max(0, self.limit - self.used)


class ToHost:
    def __init__(self, budget: PendingBudget | None = None) -> None:
        self.pending = bytearray()  # taken from the guest (and ACKed), not yet written
        self.gathered = bytearray()  # this batch's small segments, in order
        self.budget = budget or PendingBudget()
        self._space_known = 0
        self._written_since = 0

    def _room(self) -> int:
        """How much more pending may take."""
        return max(0, min(PENDING_MAX - len(self.pending), self.budget.room()))

    def queue(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes already taken (acknowledged) to pending, charged to the budget."""
        self.pending += data
        self.budget.used += len(data)

    def take(self, host: HostStream, payload: memoryview) -> int:
        """Hand guest bytes on; returns how many we took (the rest is not ACKed)."""
        if self.pending:
            chunk = payload[: self._room()]
            self.queue(chunk)
            self.budget.refused += len(payload) - len(chunk)
            return len(chunk)
        if len(payload) <= GATHER_MAX_SEGMENT:
            self.gathered += payload  # copied: the frame buffer is reused
            return len(payload)
        if self.gathered and not self.write_gathered(host):
            return self.take(host, payload)  # the socket filled: it queues
        n = host.send(payload)
        self._written_since += n
        if n < len(payload):
            rest = payload[n : n + self._room()]
            self.queue(rest)
            self.budget.refused += len(payload) - n - len(rest)
            n += len(rest)
        return n

    def write_gathered(self, host: HostStream) -> bool:
        """One send() for the gathered segments; True when all went."""
        gathered = self.gathered
        if not gathered:
            return True
        n = host.send(memoryview(gathered))
        self._written_since += n
        if n < len(gathered):
            self.queue(memoryview(gathered)[n:])
            gathered.clear()
            return False
        gathered.clear()
        return True

    def flush_pending(self, host: HostStream) -> bool:
        """Write what waits; True when nothing is left."""
        n = host.send(memoryview(self.pending))
        del self.pending[:n]
        self.budget.used -= n
        self._written_since += n
        return not self.pending

    def window(self, host: HostStream, fresh: bool = False) -> int:
        if self.pending:
            # the socket refused bytes: its free-space figure (bytes) overstates what it
            # takes (buffers are charged by their true size); only the slack is left
            return max(0, min(PENDING_SLACK - len(self.pending), self.budget.room()))
        slack = min(PENDING_SLACK, self.budget.room())
        return min(self._host_space(host, fresh) + slack, WINDOW_MAX)

    def _host_space(self, host: HostStream, fresh: bool) -> int:
        """The host socket's free send space. Two syscalls to ask, so between asks it is
        estimated as the last answer less what we wrote since (the socket only drains
        meanwhile, so the estimate errs low); asked again below half the last answer."""
        estimate = self._space_known - self._written_since
        if fresh or estimate <= self._space_known // 2:
            try:
                self._space_known = host.send_space()
            except OSError:
                self._space_known = 0
            self._written_since = 0
            return self._space_known
        return estimate

    def clear(self) -> None:
        self.budget.used -= len(self.pending)
        self.pending = bytearray()
        self.gathered = bytearray()
