"""netstack-run: run a command the way a runtime would, with a fresh network namespace,
netstack attached and (when netstackd runs) the service directory's seccomp filter.

    netstack-run [--directory SOCK] [--name NAME] [--label K=V]... [-6]
                 [--disable-host-loopback] -- CMD [ARG]...

The child unshares its network and mount namespaces (and a user namespace, mapping the
caller to root, when not root), points /etc/resolv.conf at netstack's DNS, and waits
while netstack configures tap0. It then installs the filter (NEW_LISTENER); the parent
copies the listener with pidfd_getfd and hands it to netstackd as an OCI runtime does
(the listenerPath protocol, with io.netstack.* annotations); only then does the child
exec CMD. Exit status: CMD's (128+N if killed by signal N).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import os
import select
import signal
import socket
import sys
import tempfile
import time

from netstack.directory import notify, oci
from netstack.directory.paths import default_socket
from netstack.directory.registry import parse_labels
from netstack.link.rtnetlink import Rtnetlink

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_BIND = 4096
READY_TIMEOUT_S = 20.0
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="netstack-run",
        description="Run CMD in a new network namespace served by netstack, supervised "
                    "by netstackd's service directory when it runs.")
    p.add_argument("--directory", metavar="SOCK", default=None,
                   help="netstackd's API socket (default: the per-user one, if running)")
    p.add_argument("--name", default=None, help="register what CMD listens on under NAME")
    p.add_argument("--label", action="append", default=[], metavar="K=V",
                   help="a label (repeatable); default zone=default")
    p.add_argument("-6", "--enable-ipv6", dest="ipv6", action="store_true")
    p.add_argument("--disable-host-loopback", action="store_true")
    p.add_argument("--log", metavar="FILE", default=os.devnull,
                   help="append netstack's output to FILE (default: discard)")
    p.add_argument("--netstack", default=os.path.join(os.path.dirname(sys.executable),
                                                      "netstack"),
                   help=argparse.SUPPRESS)
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        p.error("no command given (netstack-run [OPTION]... -- CMD [ARG]...)")
    try:
        args.labels = parse_labels(",".join(args.label))
    except ValueError as e:
        p.error(str(e))
    return args


def _agent_socket(directory: str) -> str:
    """netstackd's agent socket, from its `info` reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(directory)
        s.sendall(b'{"execute": "info"}')
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    reply = json.loads(data)
    return str(reply["return"]["agent_socket"])


def _link_up(name: str) -> None:
    with Rtnetlink() as nl:
        nl.set_link(socket.if_nametoindex(name))

def _read_line(fd: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError
        chunk = os.read(fd, 64)
        if not chunk:
            raise EOFError
        data += chunk
    return data.strip()


def _child(args: argparse.Namespace, resolv: str, to_parent: int, from_parent: int,
           supervised: bool) -> None:
    """In the fork: namespaces, resolv.conf, wait for netstack, filter, exec."""
    # prctl is variadic: every argument as the unsigned long it reads
    _check(_libc.prctl(PR_SET_PDEATHSIG, *(ctypes.c_ulong(a) for a in (signal.SIGKILL, 0, 0, 0))),
           "prctl")
    rootless = os.geteuid() != 0
    flags = CLONE_NEWNET | CLONE_NEWNS | (CLONE_NEWUSER if rootless else 0)
    _check(_libc.unshare(flags), "unshare")
    os.write(to_parent, b"unshared\n")
    if _read_line(from_parent, READY_TIMEOUT_S) != b"mapped":
        raise RuntimeError("parent failed")
    _check(_libc.mount(b"none", b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None),
           "mount --make-rprivate /")
    _check(_libc.mount(resolv.encode(), b"/etc/resolv.conf", None, ctypes.c_ulong(MS_BIND),
                       None), "bind-mount resolv.conf")
    _link_up("lo")
    os.write(to_parent, b"namespaces\n")
    if _read_line(from_parent, READY_TIMEOUT_S) != b"netstack":
        raise RuntimeError("netstack failed")
    if supervised:
        listener = notify.install_filter(
            notify.socket_filter(),
            notify.SECCOMP_FILTER_FLAG_NEW_LISTENER
            | notify.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)
        os.write(to_parent, f"{listener}\n".encode())
        if _read_line(from_parent, READY_TIMEOUT_S) != b"go":
            raise RuntimeError("netstackd refused the container")
        os.close(listener)
    os.close(to_parent)
    os.close(from_parent)
    os.execvp(args.command[0], args.command)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    directory = args.directory
    if directory is None and os.path.exists(default_socket()):
        directory = default_socket()
    agent = None
    if directory is not None:
        try:
            agent = _agent_socket(directory)
        except (OSError, ValueError, KeyError) as e:
            if args.directory is not None:
                print(f"netstack-run: netstackd at {directory}: {e}", file=sys.stderr)
                return 125
            directory = None
    tmp = tempfile.mkdtemp(prefix="netstack-run-")
    resolv = os.path.join(tmp, "resolv.conf")
    with open(resolv, "w") as f:
        f.write("nameserver 10.0.2.3\n" + ("nameserver fd00::3\n" if args.ipv6 else "")
                + "search netstack.internal\n")
    os.chmod(tmp, 0o755)
    os.chmod(resolv, 0o644)
    c_read, p_write = os.pipe()
    p_read, c_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(p_write)
            os.close(p_read)
            _child(args, resolv, c_write, c_read, agent is not None)
        except BaseException as e:  # noqa: BLE001 - report anything, never return
            print(f"netstack-run: {e}", file=sys.stderr)
            os._exit(127 if isinstance(e, FileNotFoundError) else 125)
    os.close(c_read)
    os.close(c_write)
    netstack = None
    try:
        netstack = _prepare(args, pid, p_read, p_write, directory, agent)
        return _wait_child(pid)
    finally:
        if netstack is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(netstack, signal.SIGTERM)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(netstack, 0)
        with contextlib.suppress(OSError):
            os.unlink(resolv)
            os.rmdir(tmp)


def _prepare(args: argparse.Namespace, pid: int, p_read: int, p_write: int,
             directory: str | None, agent: str | None) -> int:
    """The parent's half of the start-up; returns netstack's pid."""
    try:
        if _read_line(p_read, READY_TIMEOUT_S) != b"unshared":
            raise RuntimeError("child failed")
        if os.geteuid() != 0:
            with open(f"/proc/{pid}/setgroups", "w") as f:
                f.write("deny")
            with open(f"/proc/{pid}/uid_map", "w") as f:
                f.write(f"0 {os.geteuid()} 1\n")
            with open(f"/proc/{pid}/gid_map", "w") as f:
                f.write(f"0 {os.getegid()} 1\n")
        os.write(p_write, b"mapped\n")
        if _read_line(p_read, READY_TIMEOUT_S) != b"namespaces":
            raise RuntimeError("child failed")
        netstack = _start_netstack(args, pid, directory)
        os.write(p_write, b"netstack\n")
        if agent is not None:
            listener_number = int(_read_line(p_read, READY_TIMEOUT_S))
            pidfd = os.pidfd_open(pid)
            try:
                listener = notify.pidfd_getfd(pidfd, listener_number)
            finally:
                os.close(pidfd)
            try:
                annotations = {
                    oci.ANNOTATION_LABELS: ",".join(f"{k}={v}" for k, v in args.labels.items()),
                    oci.ANNOTATION_HOST_LOOPBACK: str(not args.disable_host_loopback).lower(),
                    oci.ANNOTATION_IPV6: str(args.ipv6).lower(),
                }
                if args.name:
                    annotations[oci.ANNOTATION_NAME] = args.name
                oci.send(agent, listener, pid, f"netstack-run-{pid}", annotations)
            finally:
                os.close(listener)
            os.write(p_write, b"go\n")
        return netstack
    except (OSError, RuntimeError, TimeoutError, EOFError, ValueError) as e:
        print(f"netstack-run: start-up failed: {e}", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        raise SystemExit(125) from None
    finally:
        os.close(p_write)
        os.close(p_read)


def _start_netstack(args: argparse.Namespace, pid: int, directory: str | None) -> int:
    r, w = os.pipe()
    cmd = [args.netstack, "-c", "-r", str(w)]
    if args.ipv6:
        cmd.append("--enable-ipv6")
    if args.disable_host_loopback:
        cmd.append("--disable-host-loopback")
    if directory is not None:
        cmd.append(f"--directory={directory}")
        cmd += [f"--directory-label={k}={v}" for k, v in args.labels.items()]
    else:
        cmd.append("--directory=none")
    cmd += [str(pid), "tap0"]
    netstack = os.fork()
    if netstack == 0:
        try:
            os.close(r)
            os.set_inheritable(w, True)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            out = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.execv(cmd[0], cmd)
        finally:
            os._exit(127)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], READY_TIMEOUT_S)
        if not ready or os.read(r, 1) != b"1":
            raise RuntimeError("netstack did not become ready")
    finally:
        os.close(r)
    return netstack


def _wait_child(pid: int) -> int:
    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(main())
