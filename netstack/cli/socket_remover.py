"""Removes the API socket file once the stack process is gone, however it ends.

The stack cannot always do it itself: inside --enable-sandbox the socket's directory
is out of reach (only /etc and /run remain, read-only), and SIGKILL (rootlesskit's way
of stopping slirp4netns) leaves no chance at all. So, before the sandbox, the stack
forks a watcher: it keeps nothing but the read end of a pipe whose write end only the
stack holds, blocks on it, and when the read returns EOF (the stack has exited, for
any reason) unlinks the path, if the file there is still the socket the stack bound.

The watcher stays outside the sandbox and seccomp but holds no TAP, no socket, no
namespace handle and runs no network code; it only ever reads one pipe. The other
design, keeping a directory fd open across the sandbox and unlinking through it,
would hand the sandboxed stack a way out (`openat(dirfd, "..")` walks above the
sandbox's root), so it is not used.
"""

from __future__ import annotations

import contextlib
import os
import signal

WATCHER_NAME = "netstack-unlink"  # its /proc/PID/comm, for ps and the tests

_pipe_to_watcher: list[int] = []  # the write end, held (never written) until exit


def remove_at_exit(path: str) -> int:
    """Fork the watcher for PATH (already bound); returns its pid."""
    st = os.lstat(path)
    watcher_end, stack_end = os.pipe()  # both close-on-exec: no child of ours inherits them
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the watcher; measured by the e2e tests
        try:
            _watch(watcher_end, path, (st.st_dev, st.st_ino))
        finally:
            os._exit(0)
    os.close(watcher_end)
    _pipe_to_watcher.append(stack_end)
    return pid


def _watch(watcher_end: int, path: str, identity: tuple[int, int]) -> None:
    # a signal for the whole process group stops the stack; the watcher then follows it
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(WATCHER_NAME)
    # hold nothing of the stack's: no ready fd (its reader waits for EOF), no exit
    # fd, no TAP, no sockets, no log file
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, watcher_end)
    os.closerange(watcher_end + 1, os.sysconf("SC_OPEN_MAX"))
    while os.read(watcher_end, 1):
        pass  # nobody writes; EOF comes when the stack's end closes at its exit
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == identity:
            os.unlink(path)
