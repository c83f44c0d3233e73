"""The kernel's seccomp user-notification interface (x86_64), through ctypes and ioctl.

A supervised process installs `socket_filter()` with NEW_LISTENER; its socket control
calls then wait until the holder of the listener answers. The supervisor side:
`recv()` a Notification, read the caller's memory, `id_valid()`, act (pidfd_getfd,
ADDFD), and `respond()`. Struct layouts and ioctl numbers: include/uapi/linux/seccomp.h.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import struct
from dataclasses import dataclass

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

# syscall numbers (x86_64)
SYS_CONNECT = 42
SYS_ACCEPT = 43
SYS_BIND = 49
SYS_LISTEN = 50
SYS_GETSOCKNAME = 51
SYS_GETPEERNAME = 52
SYS_ACCEPT4 = 288
TRAPPED = (SYS_CONNECT, SYS_ACCEPT, SYS_BIND, SYS_LISTEN, SYS_GETSOCKNAME, SYS_GETPEERNAME,
           SYS_ACCEPT4)
_SYS_SECCOMP = 317
_SYS_PROCESS_VM_READV = 310
_SYS_PROCESS_VM_WRITEV = 311
_SYS_PIDFD_GETFD = 438

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
SECCOMP_ADDFD_FLAG_SETFD = 1
SECCOMP_ADDFD_FLAG_SEND = 2

IOCTL_NOTIF_RECV = 0xC0502100
IOCTL_NOTIF_SEND = 0xC0182101
IOCTL_NOTIF_ID_VALID = 0x40082102
IOCTL_NOTIF_ADDFD = 0x40182103
IOCTL_NOTIF_SET_FLAGS = 0x40082104
USER_NOTIF_FD_SYNC_WAKE_UP = 1  # 6.6+: wake the supervisor (and back) on the same CPU

PIDFD_THREAD = os.O_EXCL  # 6.9+: a pidfd for a thread, not only a group leader

_NOTIF = struct.Struct("<QIIiIQ6Q")  # id, pid, flags, nr, arch, ip, args[6]
_RESP = struct.Struct("<QqiI")  # id, val, error, flags
_ADDFD = struct.Struct("<QIIII")  # id, flags, srcfd, newfd, newfd_flags
assert _NOTIF.size == 80 and _RESP.size == 24 and _ADDFD.size == 24

# classic BPF
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06


@dataclass(frozen=True)
class Notification:
    id: int
    pid: int  # the calling thread's TID, in our pid namespace
    nr: int
    arch: int
    args: tuple[int, int, int, int, int, int]


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def socket_filter(trapped: tuple[int, ...] = TRAPPED) -> bytes:
    """cBPF: the x86_64 socket control calls go to the listener, everything else (other
    ABIs included: they reach the network namespace unsupervised) is allowed."""
    n = len(trapped)
    prog = [
        _insn(_LD_W_ABS, 0, 0, 4),  # arch
        _insn(_JEQ_K, 0, n + 2, AUDIT_ARCH_X86_64),  # other ABI -> ALLOW
        _insn(_LD_W_ABS, 0, 0, 0),  # nr
        _insn(_JGE_K, n, 0, X32_SYSCALL_BIT),  # x32 -> ALLOW
    ]
    for i, nr in enumerate(trapped):
        prog.append(_insn(_JEQ_K, n - i, 0, nr))  # match -> NOTIFY (past the ALLOW)
    prog.append(_insn(_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    prog.append(_insn(_RET_K, 0, 0, SECCOMP_RET_USER_NOTIF))
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _syscall(number: int, *args: int | ctypes.c_void_p | object) -> int:
    """syscall(2) with every integer argument widened to a long: syscall() is variadic,
    and ctypes passes a plain int as 32 bits, leaving whatever the register held above
    them (a flags argument of 0 then reads as garbage: EINVAL)."""
    return int(_libc.syscall(ctypes.c_long(number),
                             *(ctypes.c_long(a) if isinstance(a, int) else a for a in args)))


_libc.syscall.restype = ctypes.c_long


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def install_filter(program: bytes, flags: int) -> int:
    """seccomp(SET_MODE_FILTER, flags, prog) for this thread; returns the listener fd
    when flags has NEW_LISTENER. The caller must have NO_NEW_PRIVS or CAP_SYS_ADMIN in
    its user namespace."""
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    return _check(
        _syscall(_SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, flags, ctypes.byref(prog)),
        "seccomp",
    )


NOTIF_SIZE = _NOTIF.size


def recv(listener: int) -> Notification | None:
    """The next notification; None when there is none (EAGAIN) or its caller is gone."""
    return recv_into(listener, bytearray(_NOTIF.size))


def recv_into(listener: int, buf: bytearray | memoryview) -> Notification | None:
    """RECV into buf (zeroed, NOTIF_SIZE bytes: shared memory, for instance)."""
    try:
        fcntl.ioctl(listener, IOCTL_NOTIF_RECV, buf, True)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.EAGAIN, errno.EINTR):
            return None
        raise
    return parse(bytes(buf))


def parse(data: bytes) -> Notification:
    nid, pid, _flags, nr, arch, _ip, *args = _NOTIF.unpack(data[:_NOTIF.size])
    return Notification(nid, pid, nr, arch, tuple(args))


def id_valid(listener: int, nid: int) -> bool:
    try:
        fcntl.ioctl(listener, IOCTL_NOTIF_ID_VALID, struct.pack("<Q", nid))
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def respond(listener: int, nid: int, val: int = 0, error: int = 0, cont: bool = False) -> bool:
    """Answer a notification: the call returns val, or fails with errno `error`
    (positive), or (cont) runs as if never trapped. False if the caller is gone."""
    flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE if cont else 0
    try:
        fcntl.ioctl(listener, IOCTL_NOTIF_SEND, _RESP.pack(nid, val, -error, flags))
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def addfd(listener: int, nid: int, srcfd: int, newfd: int | None, cloexec: bool,
          send: bool = False) -> int:
    """Install our srcfd in the caller: at newfd (dup2 semantics) or the lowest free
    number; with send, the call also completes returning that number. Raises OSError
    (ENOENT: the caller is gone)."""
    flags = (SECCOMP_ADDFD_FLAG_SETFD if newfd is not None else 0) | (
        SECCOMP_ADDFD_FLAG_SEND if send else 0
    )
    data = ctypes.create_string_buffer(
        _ADDFD.pack(nid, flags, srcfd, newfd or 0, os.O_CLOEXEC if cloexec else 0), _ADDFD.size
    )
    return _check(_libc.ioctl(listener, ctypes.c_ulong(IOCTL_NOTIF_ADDFD), data), "ADDFD")


def sync_wake_up(listener: int) -> bool:
    """Ask the kernel to hand notifications over on the caller's CPU (a trap is then one
    synchronous switch each way, not a cross-CPU wake-up). The flag goes by value.
    False on kernels without it."""
    try:
        fcntl.ioctl(listener, IOCTL_NOTIF_SET_FLAGS, USER_NOTIF_FD_SYNC_WAKE_UP)
    except OSError:
        return False
    return True


def pidfd_open(tid: int) -> int:
    """A pidfd for the calling thread itself (PIDFD_THREAD, 6.9+), else for its group."""
    try:
        return os.pidfd_open(tid, PIDFD_THREAD)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    return os.pidfd_open(thread_group(tid))


def thread_group(tid: int) -> int:
    with open(f"/proc/{tid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Tgid:"):
                return int(line.split()[1])
    raise ProcessLookupError(tid)


def pidfd_getfd(pidfd: int, fd: int) -> int:
    """A copy (CLOEXEC) of the target's fd: the same open file description."""
    return _check(_syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0), "pidfd_getfd")


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def read_memory(pid: int, address: int, length: int) -> bytes:
    buf = ctypes.create_string_buffer(length)
    local = _Iovec(ctypes.cast(buf, ctypes.c_void_p), length)
    remote = _Iovec(address, length)
    n = _check(
        _syscall(_SYS_PROCESS_VM_READV, pid, ctypes.byref(local), 1, ctypes.byref(remote), 1,
                 0),
        "process_vm_readv",
    )
    return buf.raw[:n]


def write_memory(pid: int, *pieces: tuple[int, bytes]) -> None:
    """Write each (address, data) into the caller's memory, in one system call."""
    count = len(pieces)
    total = sum(len(d) for _, d in pieces)
    buf = ctypes.create_string_buffer(b"".join(d for _, d in pieces), total or 1)
    local = (_Iovec * count)()
    remote = (_Iovec * count)()
    base = ctypes.addressof(buf)
    for i, (address, data) in enumerate(pieces):
        local[i].base, local[i].len = base, len(data)
        remote[i].base, remote[i].len = address, len(data)
        base += len(data)
    n = _check(
        _syscall(_SYS_PROCESS_VM_WRITEV, pid, ctypes.byref(local), count, ctypes.byref(remote),
                 count, 0),
        "process_vm_writev",
    )
    if n != total:
        raise OSError(errno.EFAULT, "short write into the caller")
