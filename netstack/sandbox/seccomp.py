"""--enable-seccomp: a classic-BPF filter that kills the process on the syscalls
slirp4netns blocks (exec, mount, ptrace, namespaces, modules, kexec, ...) and on those
a compromised stack could turn against the kernel: bpf, userfaultfd, io_uring, the
keyring, perf_event_open and the new mount API. Default allow. Syscalls of another
ABI (i386 compat, x32) are killed outright: the stack never makes them.

clone is allowed without namespace flags (Python's threads need it) and kills with
any. clone3 passes its flags in memory, where a filter cannot look: it fails with
ENOSYS, and glibc falls back to clone, whose flags the filter does see.

Installed last: it forbids prctl, so nothing may follow that needs it. libuv (the
event loop) sets up an io_uring for its epoll calls when the loop is made, and would
be killed at its first use of it under this filter; so a first, small filter goes on
before the loop exists (`refuse_io_uring`): io_uring_setup fails with ENOSYS and
libuv falls back to plain epoll_ctl.
"""

from __future__ import annotations

import ctypes
import os
import struct

from netstack.sandbox import _libc as c

BLOCKED = (
    "execve",
    "execveat",
    "lookup_dcookie",
    "pidfd_getfd",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "delete_module",
    "finit_module",
    "init_module",
    "chroot",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "mount",
    "move_mount",
    "open_tree",
    "pivot_root",
    "umount2",
    "open_by_handle_at",
    "name_to_handle_at",
    "pidfd_open",
    "pidfd_send_signal",
    "prctl",
    "setns",
    "unshare",
    "kexec_file_load",
    "kexec_load",
    "reboot",
    "bpf",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "perf_event_open",
    "mount_setattr",
)
# namespace flags clone() must not carry: NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
# NEWPID, NEWNET (NEWTIME's bit is part of clone()'s exit signal: unshare is blocked)
CLONE_NAMESPACE_FLAGS = 0x7E020000
ENOSYS = 38

SYSCALLS = {
    "x86_64": {
        "execve": 59,
        "execveat": 322,
        "lookup_dcookie": 212,
        "pidfd_getfd": 438,
        "ptrace": 101,
        "process_vm_readv": 310,
        "process_vm_writev": 311,
        "delete_module": 176,
        "finit_module": 313,
        "init_module": 175,
        "chroot": 161,
        "fsconfig": 431,
        "fsmount": 432,
        "fsopen": 430,
        "fspick": 433,
        "mount": 165,
        "move_mount": 429,
        "open_tree": 428,
        "pivot_root": 155,
        "umount2": 166,
        "open_by_handle_at": 304,
        "name_to_handle_at": 303,
        "pidfd_open": 434,
        "pidfd_send_signal": 424,
        "prctl": 157,
        "setns": 308,
        "unshare": 272,
        "kexec_file_load": 320,
        "kexec_load": 246,
        "reboot": 169,
        "bpf": 321,
        "userfaultfd": 323,
        "io_uring_setup": 425,
        "io_uring_enter": 426,
        "io_uring_register": 427,
        "keyctl": 250,
        "add_key": 248,
        "request_key": 249,
        "perf_event_open": 298,
        "mount_setattr": 442,
        "clone": 56,
        "clone3": 435,
    },
    "aarch64": {
        "execve": 221,
        "execveat": 281,
        "lookup_dcookie": 18,
        "pidfd_getfd": 438,
        "ptrace": 117,
        "process_vm_readv": 270,
        "process_vm_writev": 271,
        "delete_module": 106,
        "finit_module": 273,
        "init_module": 105,
        "chroot": 51,
        "fsconfig": 431,
        "fsmount": 432,
        "fsopen": 430,
        "fspick": 433,
        "mount": 40,
        "move_mount": 429,
        "open_tree": 428,
        "pivot_root": 41,
        "umount2": 39,
        "open_by_handle_at": 265,
        "name_to_handle_at": 264,
        "pidfd_open": 434,
        "pidfd_send_signal": 424,
        "prctl": 167,
        "setns": 268,
        "unshare": 97,
        "kexec_file_load": 294,
        "kexec_load": 104,
        "reboot": 142,
        "bpf": 280,
        "userfaultfd": 282,
        "io_uring_setup": 425,
        "io_uring_enter": 426,
        "io_uring_register": 427,
        "keyctl": 219,
        "add_key": 217,
        "request_key": 218,
        "perf_event_open": 241,
        "mount_setattr": 442,
        "clone": 220,
        "clone3": 435,
    },
}

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
X32_SYSCALL_BIT = 0x40000000

# classic BPF
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_JSET_K = 0x45
BPF_RET_K = 0x06
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
OFFSET_NR = 0
OFFSET_ARCH = 4
OFFSET_ARG0_LOW = 16  # args[0], its low 32 bits (both ABIs are little-endian)


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def build_filter(machine: str | None = None) -> bytes:
    """The filter program for this machine, as packed sock_filter structs."""
    machine = machine or os.uname().machine
    numbers = SYSCALLS[machine]
    blocked = [numbers[name] for name in BLOCKED]
    prog = [
        _insn(BPF_LD_W_ABS, 0, 0, OFFSET_ARCH),
        _insn(BPF_JEQ_K, 1, 0, AUDIT_ARCH[machine]),
        _insn(BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),  # another ABI
        _insn(BPF_LD_W_ABS, 0, 0, OFFSET_NR),
    ]
    # after the blocked list, six instructions (the clone checks) come before the KILL
    tail = 6
    if machine == "x86_64":
        prog.append(_insn(BPF_JGE_K, len(blocked) + tail, 0, X32_SYSCALL_BIT))
    for i, nr in enumerate(blocked):
        # match: jump over the remaining tests and the clone checks to the KILL
        prog.append(_insn(BPF_JEQ_K, len(blocked) - 1 - i + tail, 0, nr))
    prog += [
        _insn(BPF_JEQ_K, 6, 0, numbers["clone3"]),  # -> ERRNO(ENOSYS)
        _insn(BPF_JEQ_K, 1, 0, numbers["clone"]),  # -> its flags
        _insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        _insn(BPF_LD_W_ABS, 0, 0, OFFSET_ARG0_LOW),
        _insn(BPF_JSET_K, 1, 0, CLONE_NAMESPACE_FLAGS),  # -> KILL
        _insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        _insn(BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        _insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | ENOSYS),
    ]
    return b"".join(prog)


def build_io_uring_filter(machine: str | None = None) -> bytes:
    """io_uring_setup fails with ENOSYS; everything else is left to the main filter."""
    machine = machine or os.uname().machine
    return b"".join(
        [
            _insn(BPF_LD_W_ABS, 0, 0, OFFSET_ARCH),
            _insn(BPF_JEQ_K, 0, 2, AUDIT_ARCH[machine]),  # another ABI: the main filter's
            _insn(BPF_LD_W_ABS, 0, 0, OFFSET_NR),
            _insn(BPF_JEQ_K, 1, 0, SYSCALLS[machine]["io_uring_setup"]),
            _insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
            _insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | ENOSYS),
        ]
    )


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def refuse_io_uring() -> None:
    """Apply the small first filter (before the event loop is made)."""
    _apply(build_io_uring_filter())


def install() -> None:
    """Apply the filter to this process (all threads' future children included)."""
    _apply(build_filter())
    print(
        "seccomp: The following syscalls are blocked: " + " ".join(BLOCKED)
        + " clone(namespace flags) clone3(ENOSYS)",
        flush=True,
    )


def _apply(code: bytes) -> None:
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    c.prctl(c.PR_SET_NO_NEW_PRIVS, 1)
    c.check(
        c.libc.prctl(
            c.PR_SET_SECCOMP,
            ctypes.c_ulong(c.SECCOMP_MODE_FILTER),
            ctypes.byref(prog),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
        ),
        "seccomp",
    )
