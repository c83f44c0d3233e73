"""Calls received but not yet answered, in memory the keeper holds too.

The kernel hands a notification out once: if netstackd dies between receiving a call
and answering it, no successor can receive it again, and the caller would wait for
good. So every notification is received straight into a slot of a shared memory file
(memfd) that the keeper holds along with the listener; the slot is cleared once the
call is answered. A new netstackd maps the same file and answers what it finds there
(if SECCOMP_IOCTL_NOTIF_ID_VALID says the call still waits). Nothing is sent per call:
it costs a memory write.
"""

from __future__ import annotations

import mmap
import os
import struct

from netstack.directory import notify

SLOT = 96  # struct seccomp_notif (80), then the caller's file flags we changed (+1)
_ID = struct.Struct("=Q")
_SAVED_FLAGS = struct.Struct("=Q")
_SAVED_AT = 80


class InFlight:
    def __init__(self, slots: int, fd: int | None = None) -> None:
        if fd is None:
            fd = os.memfd_create("netstack-inflight", os.MFD_CLOEXEC)
            os.ftruncate(fd, slots * SLOT)
        self.fd = fd
        self.slots = os.fstat(fd).st_size // SLOT
        self.map = mmap.mmap(fd, self.slots * SLOT)
        self._free = [i for i in range(self.slots - 1, -1, -1) if not self._used(i)]

    def _used(self, index: int) -> bool:
        return bool(_ID.unpack_from(self.map, index * SLOT)[0])

    def receive(self, listener: int) -> tuple[int, notify.Notification] | None:
        """RECV into a free slot: (slot, notification), or None (nothing, or no slot
        free: the call stays queued in the kernel until one is)."""
        if not self._free:
            return None
        index = self._free.pop()
        view = memoryview(self.map)[index * SLOT:index * SLOT + notify.NOTIF_SIZE]
        try:
            n = notify.recv_into(listener, view)
        finally:
            view.release()
        if n is None:
            self._clear(index)
            return None
        return index, n

    def release(self, index: int) -> None:
        if self.map.closed:  # the container is gone, and its memory with it
            return
        self._clear(index)

    def _clear(self, index: int) -> None:
        self.map[index * SLOT:(index + 1) * SLOT] = bytes(SLOT)
        self._free.append(index)

    def save_flags(self, index: int, flags: int) -> None:
        """Before we change the caller's file status flags for a moment (accept on its
        listener): a successor restores them if we die meanwhile."""
        _SAVED_FLAGS.pack_into(self.map, index * SLOT + _SAVED_AT, flags + 1)

    def flags_restored(self, index: int) -> None:
        _SAVED_FLAGS.pack_into(self.map, index * SLOT + _SAVED_AT, 0)

    def saved_flags(self, index: int) -> int | None:
        value = int(_SAVED_FLAGS.unpack_from(self.map, index * SLOT + _SAVED_AT)[0])
        return value - 1 if value else None

    def left_over(self) -> list[tuple[int, notify.Notification]]:
        """Calls an earlier netstackd received and never answered."""
        return [(i, notify.parse(bytes(self.map[i * SLOT:i * SLOT + notify.NOTIF_SIZE])))
                for i in range(self.slots) if self._used(i)]

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)
