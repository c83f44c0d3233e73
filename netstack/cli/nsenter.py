"""Open the TAP inside the target's namespaces, as slirp4netns does: a short-lived
child joins the user namespace (when there is one to join) and the network namespace,
opens /dev/net/tun, optionally configures the interface, and passes the fd back over
a socketpair. The parent never changes namespace, so its sockets are the host's.

The fork happens before any thread exists (setns(CLONE_NEWUSER) refuses threaded
callers). Python 3.11 has no os.setns, hence ctypes. The child makes itself
non-dumpable before it joins anything: inside the container's user namespace its
root would otherwise be allowed to ptrace it (and so reach the parent's memory the
child was forked with, and its host-side fds).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from typing import NamedTuple

from netstack.link.tap import open_tap

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_DUMPABLE = 4


def setns(path: str, nstype: int) -> None:
    # ctypes is imported by the child, beside the parent's own start-up work
    from netstack.sandbox import _libc

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _libc.setns(fd, nstype)
    except OSError as e:
        raise OSError(e.errno, f"setns {path}: {os.strerror(e.errno or 0)}") from None
    finally:
        os.close(fd)


class InterfaceSetup(NamedTuple):  # not a dataclass: see stack/limits.py
    """What -c does inside the namespace."""

    mtu: int
    address: str
    prefixlen: int
    broadcast: str
    gateway: str
    macaddress: str | None = None
    ipv6: bool = False


class Target(NamedTuple):
    netns_path: str
    userns_path: str | None


def target_for(pid: int, netns_path: str | None, userns_path: str | None) -> Target:
    if pid:
        return Target(f"/proc/{pid}/ns/net", userns_path or f"/proc/{pid}/ns/user")
    assert netns_path is not None
    return Target(netns_path, userns_path)


class TapChild:
    """The TAP fd from the child, which may still be configuring the interface (-c):
    call `wait()` before announcing readiness."""

    def __init__(self, fd: int, vnet: bool, pid: int) -> None:
        self.fd = fd
        self.vnet = vnet
        self.pid = pid

    def wait(self) -> None:
        """Raises RuntimeError when the child failed (its message is on stderr)."""
        _, status = os.waitpid(self.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise RuntimeError(f"child failed({code})")


def open_tap_in_namespace(
    target: Target,
    tapname: str,
    setup: InterfaceSetup | None,
    want_vnet: bool = True,
    meanwhile: Callable[[], None] | None = None,
) -> TapChild:
    """Fork the child; it passes the TAP fd back as soon as the TAP is open, then
    configures the interface (a few rtnetlink requests) while we get the stack ready.
    `meanwhile` runs in the parent before it waits for the fd (the stack's imports, as
    the child enters the namespace). Raises RuntimeError when no fd comes back."""
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            parent_sock.close()
            _child(target, tapname, setup, want_vnet, child_sock)
            code = 0
        except BaseException as e:
            if os.environ.get("NETSTACK_DEBUG"):
                import traceback

                traceback.print_exc()
            print(f"netstack: {e}", file=sys.stderr)
        finally:
            sys.stderr.flush()
            os._exit(code)
    child_sock.close()
    try:
        if meanwhile is not None:
            meanwhile()
        msg, fds, _flags, _addr = socket.recv_fds(parent_sock, 16, 1)
    finally:
        parent_sock.close()
    child = TapChild(fds[0] if fds else -1, msg == b"v", pid)
    if not fds:
        child.wait()  # the child's failure explains why
        raise RuntimeError("child failed")
    print(f"received tapfd={fds[0]}", file=sys.stderr)
    return child


def _child(
    target: Target, tapname: str, setup: InterfaceSetup | None, want_vnet: bool, sock: socket.socket
) -> None:
    from netstack.sandbox import _libc

    _libc.prctl(PR_SET_DUMPABLE, 0)  # no ptrace from the container's root
    if target.userns_path is not None:
        try:
            setns(target.userns_path, CLONE_NEWUSER)
        except OSError:
            pass  # already in it (EINVAL), or none to join: slirp4netns ignores this too
    setns(target.netns_path, CLONE_NEWNET)
    fd, vnet_on = open_tap(tapname, want_vnet)
    socket.send_fds(sock, [b"v" if vnet_on else b"p"], [fd])
    sock.close()
    print(f"sent tapfd={fd} for {tapname}", file=sys.stderr)
    if setup is not None:
        configure_interface(tapname, setup)


def configure_interface(tapname: str, setup: InterfaceSetup) -> None:
    """-c: lo up; the TAP up with the MTU, the guest address and a default route."""
    from netstack.link import rtnetlink  # in the child only

    try:
        idx = socket.if_nametoindex(tapname)
    except OSError:
        raise RuntimeError(f"no interface {tapname}") from None
    if setup.ipv6:
        # SLAAC from our router advertisement gives the address; with duplicate
        # address detection off (as podman sets it) it is usable at once
        with open(f"/proc/sys/net/ipv6/conf/{tapname}/accept_dad", "w") as f:
            f.write("0")
    with rtnetlink.Rtnetlink() as nl:
        try:
            nl.set_link(socket.if_nametoindex("lo"), up=True)
        except OSError:
            pass  # no lo: nothing to bring up
        mac = bytes.fromhex(setup.macaddress.replace(":", "")) if setup.macaddress else None
        nl.set_link(idx, up=True, mtu=setup.mtu, mac=mac)
        nl.add_address(idx, setup.address, setup.prefixlen, setup.broadcast)
        nl.replace_default_route(idx, setup.gateway)
        if setup.ipv6:
            # the address SLAAC will derive from our router advertisement, set now so
            # that it is there when we say "ready"
            address = slaac_address(rtnetlink.hardware_address(tapname).hex(":"))
            nl.replace_address(idx, address, 64)
            nl.replace_default_route(idx, "fe80::2")


def slaac_address(mac: str) -> str:
    """fd00::/64 with the modified EUI-64 interface identifier of mac (RFC 4291 2.5.1)."""
    m = bytearray(bytes.fromhex(mac.replace(":", "")))
    m[0] ^= 0x02
    iid = bytes(m[:3]) + b"\xff\xfe" + bytes(m[3:])
    return socket.inet_ntop(socket.AF_INET6, bytes.fromhex("fd00" + "00" * 6) + iid)
