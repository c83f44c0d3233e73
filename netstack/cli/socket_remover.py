"""Removes the API socket file once the stack process is gone, however it ends.

The stack cannot always do it itself: inside --enable-sandbox the socket's directory
is out of reach (only /etc and /run remain, read-only), and SIGKILL (rootlesskit's way
of stopping slirp4netns) leaves no chance at all. So, before the sandbox, the stack
starts a watcher: a two-line /bin/sh script whose stdin is the read end of a pipe that
only the stack holds open. The script blocks reading it, and when the read returns EOF
(the stack has exited, for any reason) unlinks the path, if the file there is still
the socket the stack bound (same device and inode: a newer stack may own the path).

The watcher stays outside the sandbox and seccomp but holds no TAP, no socket, no
namespace handle and runs no network code; it only ever reads one pipe. It is a shell,
not a forked Python, to cost ~0.2 MiB of its own instead of a copy of the stack's heap. The other
design, keeping a directory fd open across the sandbox and unlinking through it,
would hand the sandboxed stack a way out (`openat(dirfd, "..")` walks above the
sandbox's root), so it is not used.
"""

from __future__ import annotations

import os
import subprocess

WATCHER_NAME = "netstack-unlink"  # the script's $0: ps shows it in the command line

# $1: the socket path, $2: "device:inode" of the socket the stack bound. A signal for
# the whole process group (^C, SIGTERM) stops the stack; the watcher then follows it.
WATCHER_SCRIPT = """trap '' HUP INT TERM
while read -r _; do :; done
[ "$(stat -c %d:%i -- "$1" 2>/dev/null)" = "$2" ] && rm -f -- "$1"
"""

# held until exit: the pipe's write end (never written) and the watcher's handle
_pipe_to_watcher: list[int] = []
_watchers: list[subprocess.Popen[bytes]] = []


def remove_at_exit(path: str) -> int:
    """Start the watcher for PATH (already bound); returns its pid."""
    st = os.lstat(path)
    watcher_end, stack_end = os.pipe()  # close-on-exec: no other child inherits them
    try:
        watcher = subprocess.Popen(
            ["/bin/sh", "-c", WATCHER_SCRIPT, WATCHER_NAME, path, f"{st.st_dev}:{st.st_ino}"],
            stdin=watcher_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,  # not the ready fd (its reader waits for EOF), exit fd, TAP...
        )
    finally:
        os.close(watcher_end)
    _pipe_to_watcher.append(stack_end)
    _watchers.append(watcher)
    return watcher.pid
