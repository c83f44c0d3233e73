"""--enable-seccomp: a classic-BPF filter that kills the process on the syscalls
slirp4netns blocks (exec, mount, ptrace, namespaces, modules, kexec, ...). Default
allow. Syscalls of another ABI (i386 compat, x32) are killed outright: the stack
never makes them.

Installed last: it forbids prctl, so nothing may follow that needs it.
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
)

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
    },
}

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
X32_SYSCALL_BIT = 0x40000000

# classic BPF
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_RET_K = 0x06
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ALLOW = 0x7FFF0000
OFFSET_NR = 0
OFFSET_ARCH = 4


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
    if machine == "x86_64":
        prog.append(_insn(BPF_JGE_K, len(blocked) + 1, 0, X32_SYSCALL_BIT))
    for i, nr in enumerate(blocked):
        # match: jump over the remaining tests and the ALLOW to the KILL
        prog.append(_insn(BPF_JEQ_K, len(blocked) - i, 0, nr))
    prog.append(_insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    prog.append(_insn(BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS))
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install() -> None:
    """Apply the filter to this process (all threads' future children included)."""
    code = build_filter()
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
    print("seccomp: The following syscalls are blocked: " + " ".join(BLOCKED), flush=True)
