"""--enable-seccomp's filter (netstack.sandbox.seccomp), refused syscall by refused
syscall: a child installs the filter, makes one raw syscall by number (arguments all
zero: harmless should the filter let it through) and must die of SIGSYS. Syscalls
of another ABI (i386 through int 0x80, x32) die the same way; an ordinary syscall
does not. Unprivileged: seccomp only needs no_new_privs."""

from __future__ import annotations

import platform
import signal
import struct
import subprocess
import sys

import pytest

from netstack.sandbox import seccomp

MACHINE = platform.machine()
pytestmark = pytest.mark.skipif(MACHINE not in seccomp.SYSCALLS, reason=f"no table: {MACHINE}")

CHILD = r"""
import ctypes, sys
from netstack.sandbox import seccomp
seccomp.install()
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
r = libc.syscall(ctypes.c_long(int(sys.argv[1])), *([ctypes.c_long(0)] * 5))
print("survived", r, ctypes.get_errno(), flush=True)
"""

# i386's getpid (20) through int 0x80 from 64-bit code: mov eax, 20; int 0x80; ret
I386_CHILD = r"""
import ctypes, mmap
from netstack.sandbox import seccomp
code = bytes.fromhex("b814000000cd80c3")
mem = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
mem.write(code)
addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
fn = ctypes.CFUNCTYPE(ctypes.c_int)(addr)
fn()  # before the filter: allowed
seccomp.install()
print("survived", fn(), flush=True)
"""


def run_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("name", seccomp.BLOCKED)
def test_every_refused_syscall_kills(name: str) -> None:
    p = run_child(CHILD, str(seccomp.SYSCALLS[MACHINE][name]))
    assert p.returncode == -signal.SIGSYS, (p.returncode, p.stdout, p.stderr)
    assert "survived" not in p.stdout


@pytest.mark.parametrize("name,nr", [("getpid", 39), ("getppid", 110)])
def test_ordinary_syscalls_pass(name: str, nr: int) -> None:
    if MACHINE != "x86_64":
        pytest.skip("x86_64 numbers")
    p = run_child(CHILD, str(nr))
    assert p.returncode == 0 and "survived" in p.stdout, p.stderr


@pytest.mark.skipif(MACHINE != "x86_64", reason="x32 is an x86_64 ABI")
def test_x32_syscall_kills() -> None:
    p = run_child(CHILD, str(seccomp.X32_SYSCALL_BIT | 39))  # x32 getpid
    assert p.returncode == -signal.SIGSYS, (p.returncode, p.stdout, p.stderr)


@pytest.mark.skipif(MACHINE != "x86_64", reason="int 0x80 is the i386 entry on x86_64")
def test_i386_syscall_kills() -> None:
    p = run_child(I386_CHILD)
    if p.returncode != -signal.SIGSYS and "survived" not in p.stdout:
        pytest.skip(f"cannot run i386 syscalls here: {p.returncode} {p.stderr[-200:]}")
    assert p.returncode == -signal.SIGSYS, (p.returncode, p.stdout, p.stderr)


@pytest.mark.parametrize("machine", sorted(seccomp.SYSCALLS))
def test_every_machine_refuses_every_listed_syscall(machine: str) -> None:
    """The filter other machines get (not run here): each refused number is matched."""
    prog = seccomp.build_filter(machine)
    insns = [struct.unpack_from("=HBBI", prog, i) for i in range(0, len(prog), 8)]
    matched = {k for code, _, _, k in insns if code == seccomp.BPF_JEQ_K}
    assert {seccomp.SYSCALLS[machine][n] for n in seccomp.BLOCKED} <= matched
    assert seccomp.AUDIT_ARCH[machine] in matched
    # every number the table knows is refused: the list, and clone/clone3 (by their flags)
    assert set(seccomp.SYSCALLS[machine]) == set(seccomp.BLOCKED) | {"clone", "clone3"}
    assert {seccomp.SYSCALLS[machine]["clone"], seccomp.SYSCALLS[machine]["clone3"]} <= matched
