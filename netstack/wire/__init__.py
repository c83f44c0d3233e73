"""Wire formats: bytes <-> headers. No I/O, no state, no logging.

Every module has the same shape: constants and offsets, one `struct.Struct` for the
fixed header, an immutable record, `parse(buf) -> record` raising `WireError` on
malformed input, and `emit(record, buf, offset) -> int` (bytes written).
"""


class WireError(ValueError):
    """A frame that cannot be parsed. `reason` is the drop-counter name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
