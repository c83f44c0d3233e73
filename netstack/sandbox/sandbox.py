"""--enable-sandbox, as slirp4netns does it: a private mount namespace whose root holds
only /etc and /run (read-only, slave propagation so host mounts are untouched),
pivot_root into it, no new privileges, and every capability dropped but
CAP_NET_BIND_SERVICE.

Python imports lazily, and after pivot_root nothing outside /etc and /run exists, so
everything the stack can still need is imported first (`preload`: PRELOAD, and the
modules the caller names; asyncio's among them when the runtime runs on it). A resolv.conf
that is a link to a file outside /etc and /run (systemd-resolved's) is bound in too.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import os

from netstack.log import get_logger
from netstack.sandbox import _libc as c

log = get_logger(__name__)

CAP_NET_BIND_SERVICE = 10
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# modules Python loads on first use that the running stack may still need
PRELOAD = (
    "encodings.idna",
    "encodings.ascii",
    "encodings.latin_1",
    "encodings.utf_8",
    "stringprep",
    "unicodedata",
    "json",
    "json.decoder",
    "json.encoder",
    "json.scanner",
    "traceback",
    "linecache",
    "tokenize",
    "errno",
    "ipaddress",
    "logging",  # netstack/log.py imports it on the first record
)


def preload(later: tuple[str, ...] = ()) -> None:
    """Import PRELOAD and `later` (the caller's modules it imports on first use)."""
    for name in PRELOAD + later:
        try:
            importlib.import_module(name)
        except ImportError:  # pragma: no cover
            log.debug("sandbox: cannot preload %s", name)
    "".encode("idna")  # the codec's own lazy state


def join_target_userns(pid: int) -> None:
    """As a non-root user: enter the target's user namespace to be root there."""
    fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        c.setns(fd, c.CLONE_NEWUSER)
    finally:
        os.close(fd)
    os.setegid(0)
    os.seteuid(0)


def _bind_readonly(source: str, target: str, recursive: bool = True) -> None:
    try:
        c.mount(None, source, None, c.MS_REC | c.MS_SLAVE if recursive else c.MS_SLAVE)
    except OSError as e:
        if e.errno != errno.EINVAL:  # EINVAL: source is not a mount point of its own
            raise
    flags = c.MS_BIND | (c.MS_REC if recursive else 0) | c.MS_NOSUID | c.MS_NODEV | c.MS_NOEXEC
    c.mount(source, target, None, flags)
    c.mount(None, target, None, c.MS_REC | c.MS_SLAVE if recursive else c.MS_SLAVE)
    c.mount(
        None,
        target,
        None,
        c.MS_REMOUNT | c.MS_BIND | c.MS_RDONLY | c.MS_NOSUID | c.MS_NODEV | c.MS_NOEXEC,
    )


def enter(later: tuple[str, ...] = ()) -> None:
    """Build the sandbox and drop privileges (`later`: see preload). Raises OSError on
    any failure."""
    preload(later)
    last_cap = last_capability()  # /proc is gone once we pivot
    resolv = os.path.realpath("/etc/resolv.conf")
    c.unshare(c.CLONE_NEWNS)
    # every mount a slave first: as root in the initial user namespace the new
    # namespace's mounts are peers of the host's, and detaching the old root below
    # would unmount the host's shared mounts too (each /run/netns/* of `ip netns`,
    # seen on 2026-11-29; slirp4netns 1.2.0 does the same as root)
    c.mount(None, "/", None, c.MS_REC | c.MS_SLAVE)
    c.mount(None, "/", None, c.MS_PRIVATE)
    c.mount("tmpfs", "/tmp", "tmpfs", c.MS_NOSUID | c.MS_NODEV | c.MS_NOEXEC, "size=1m,mode=755")
    for d in ("etc", "old", "run"):
        os.mkdir(f"/tmp/{d}", 0o755)
    _bind_readonly("/etc", "/tmp/etc")
    _bind_readonly("/run", "/tmp/run")
    if not (resolv.startswith("/etc/") or resolv.startswith("/run/")) and os.path.exists(resolv):
        target = "/tmp" + resolv
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w"):
            pass
        c.mount(resolv, target, None, c.MS_BIND)
        c.mount(None, target, None, c.MS_REMOUNT | c.MS_BIND | c.MS_RDONLY)
    os.chdir("/tmp")
    c.pivot_root(".", "old")
    os.chdir("/")
    c.umount2("/old", c.MNT_DETACH)
    os.rmdir("/old")
    try:
        c.mount(None, "/", None, c.MS_REMOUNT | c.MS_BIND | c.MS_RDONLY)
    except OSError:
        pass  # as slirp4netns: a read-only root is a bonus
    drop_capabilities(last_cap)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def last_capability() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def drop_capabilities(last: int, keep: int = CAP_NET_BIND_SERVICE) -> None:
    c.prctl(c.PR_SET_NO_NEW_PRIVS, 1)
    try:
        c.prctl(c.PR_CAP_AMBIENT, c.PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass
    for cap in range(last + 1):
        if cap != keep:
            c.prctl(c.PR_CAPBSET_DROP, cap)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = data[0].inheritable = 1 << keep
    c.check(c.libc.capset(ctypes.byref(header), data), "capset")
