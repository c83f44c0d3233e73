"""An in-memory link for tests: frames written by the stack collect in `sent`; frames
for the stack are queued with `inject`."""

from __future__ import annotations

from collections import deque

from netstack.link.base import VNET_HEADROOM
from netstack.wire import vnet


class MemoryLink:
    def __init__(self, mtu: int = 1500, vnet_enabled: bool = False) -> None:
        self.mtu = mtu
        self.vnet = vnet_enabled
        self.sent: list[tuple[vnet.VnetHeader, bytes]] = []
        self.inbox: deque[bytes] = deque()

    def fileno(self) -> int:
        return -1

    def inject(self, frame: bytes, header: vnet.VnetHeader = vnet.PLAIN) -> None:
        self.inbox.append(vnet.HEADER.pack(*header) + frame)

    def read_into(self, buf: bytearray) -> int:
        if not self.inbox:
            return 0
        data = self.inbox.popleft()
        buf[: len(data)] = data
        return len(data)

    def write(self, frame: memoryview) -> None:
        header = vnet.parse(frame) if self.vnet else vnet.PLAIN
        self.sent.append((header, bytes(frame[VNET_HEADROOM:])))

    def take(self) -> list[bytes]:
        """Frames sent since the last call, without their virtio-net headers."""
        out = [f for _, f in self.sent]
        self.sent.clear()
        return out

    def close(self) -> None:
        pass
