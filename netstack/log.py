"""The stack's loggers: the standard library's logging, imported when a record is first
emitted rather than when a module is.

logging and the traceback, threading and string modules it imports cost ~5 ms of a
~45 ms launch here (issue 12's start-up target is 50 ms to the ready byte), and nothing
on the way to the ready byte logs. So a module asks `get_logger(name)` for a `Logger`
that holds only its name; its first record imports logging, applies `configure`'s
settings (basicConfig) and from then on hands every record to `logging.getLogger(name)`.
Records go through logging as before, so handlers, levels and pytest's caplog see them.

`configure` also sets a floor: records below it return at once, without importing
logging (a debug line on the data path must not pull in 5 ms of imports mid-flow).
Until `configure` is called (tests, library use) every record reaches logging, which
filters by its own levels.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import logging

DEBUG = 10
INFO = 20
WARNING = 30
ERROR = 40

_floor = 0  # records below this level are dropped before logging is imported
_settings: tuple[int, str] | None = None  # basicConfig's level and format, until applied


def configure(level: int, fmt: str, eager: bool = False) -> None:
    """What basicConfig would do (records to stderr in `fmt`, from `level` up), done
    when the first record is emitted; or now (eager: a process whose libraries log
    through logging themselves, netstackd's asyncio and etcd client)."""
    global _floor, _settings
    _floor = level
    _settings = (level, fmt)
    if eager:
        _stdlib_logger("netstack")


def _stdlib_logger(name: str) -> logging.Logger:
    global _settings
    import logging

    if _settings is not None:
        (level, fmt), _settings = _settings, None
        logging.basicConfig(stream=sys.stderr, level=level, format=fmt)
    return logging.getLogger(name)


class Logger:
    """The part of `logging.Logger` the stack uses, resolved on the first record."""

    __slots__ = ("name", "_logger")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: logging.Logger | None = None

    def _resolve(self) -> logging.Logger:
        if self._logger is None:
            self._logger = _stdlib_logger(self.name)
        return self._logger

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 (logging's name)
        return level >= _floor and self._resolve().isEnabledFor(level)

    def debug(self, msg: str, *args: object) -> None:
        if _floor <= DEBUG:
            self._resolve().debug(msg, *args, stacklevel=2)

    def info(self, msg: str, *args: object) -> None:
        if _floor <= INFO:
            self._resolve().info(msg, *args, stacklevel=2)

    def warning(self, msg: str, *args: object) -> None:
        if _floor <= WARNING:
            self._resolve().warning(msg, *args, stacklevel=2)

    def error(self, msg: str, *args: object) -> None:
        if _floor <= ERROR:
            self._resolve().error(msg, *args, stacklevel=2)

    def exception(self, msg: str, *args: object) -> None:
        """An error with the exception being handled and its traceback."""
        if _floor <= ERROR:
            self._resolve().exception(msg, *args, stacklevel=2)


def get_logger(name: str) -> Logger:
    return Logger(name)
