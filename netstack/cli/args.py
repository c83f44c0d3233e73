"""slirp4netns-compatible argument parsing (GNU getopt_long behaviour: permuted
arguments, --opt=v and --opt v, bundled short options, unambiguous prefixes).

Errors print to stderr, then the usage to stdout, and exit 1, as slirp4netns does;
--cidr errors exit 1 without the usage.
"""

from __future__ import annotations

import getopt
import ipaddress
import os
import re
import sys
from dataclasses import dataclass
from typing import NoReturn

from netstack import __version__

PROG = "netstack"
MTU_DEFAULT = 1500
MTU_MAX = 65521
MTU_MIN = 68
SLIRP_CONFIG_VERSION_MAX = 4

SHORT = "ce:r:m:hv"
LONG = [
    "configure",
    "exit-fd=",
    "ready-fd=",
    "mtu=",
    "cidr=",
    "disable-host-loopback",
    "disable-dns",
    "netns-type=",
    "userns-path=",
    "help",
    "version",
]

USAGE = f"""Usage: {PROG} [OPTION]... PID|PATH TAPNAME
User-mode networking for unprivileged network namespaces (a slirp4netns drop-in).

-c, --configure          bring up the interface
-e, --exit-fd=FD         specify the FD for terminating {PROG}
-r, --ready-fd=FD        specify the FD to write to when the network is configured
-m, --mtu=MTU            specify MTU (default={MTU_DEFAULT}, max={MTU_MAX})
--cidr=CIDR              specify network address CIDR (default=10.0.2.0/24)
--disable-host-loopback  prohibit connecting to 127.0.0.1:* on the host namespace
--disable-dns            disable built-in DNS (10.0.2.3 by default)
--netns-type=TYPE        specify network namespace type ([path|pid], default=pid)
--userns-path=PATH       specify user namespace path
-h, --help               show this help and exit
-v, --version            show version and exit
"""

VERSION = f"""{PROG} version {__version__}
SLIRP_CONFIG_VERSION_MAX: {SLIRP_CONFIG_VERSION_MAX}
"""


@dataclass
class Options:
    target: str = ""  # PID or namespace path
    tapname: str = ""
    netns_type: str = "pid"
    userns_path: str | None = None
    configure: bool = False
    exit_fd: int | None = None
    ready_fd: int | None = None
    mtu: int = MTU_DEFAULT
    cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.0.2.0/24")
    disable_host_loopback: bool = False
    disable_dns: bool = False

    @property
    def pid(self) -> int:
        return int(self.target) if self.netns_type == "pid" else 0


class UsageError(Exception):
    def __init__(self, message: str, show_usage: bool = True) -> None:
        super().__init__(message)
        self.show_usage = show_usage


def _fail(err: UsageError) -> NoReturn:
    print(f"{err}", file=sys.stderr)
    if err.show_usage:
        sys.stdout.write(USAGE)
    sys.exit(1)


def _non_negative(value: str, what: str) -> int:
    if not re.fullmatch(r"\d+", value):
        raise UsageError(f"{what} must be a non-negative integer")
    return int(value)


_CIDR = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})/(\d{1,2})")


def parse_cidr(text: str) -> ipaddress.IPv4Network:
    m = _CIDR.fullmatch(text)
    if m is None or any(int(g) > 255 for g in m.groups()[:4]):
        raise UsageError(f"invalid CIDR: {text}", show_usage=False)
    prefix = int(m.group(5))
    if not 1 <= prefix <= 25:
        raise UsageError("prefix length needs to be 1-25", show_usage=False)
    try:
        return ipaddress.IPv4Network(text, strict=True)
    except ValueError:
        raise UsageError(
            f"CIDR needs to be a network address like 10.0.2.0/24, not like {text}",
            show_usage=False,
        ) from None


def parse(argv: list[str]) -> Options:
    """Parse argv (without the program name); prints and exits on help, version, errors."""
    try:
        return _parse(argv)
    except UsageError as e:
        _fail(e)


def _parse(argv: list[str]) -> Options:
    try:
        pairs, rest = getopt.gnu_getopt(argv, SHORT, LONG)
    except getopt.GetoptError as e:
        if e.opt and e.msg.endswith("not recognized"):
            dash = "--" if len(e.opt) > 1 else "-"
            raise UsageError(f"{PROG}: unrecognized option '{dash}{e.opt}'") from None
        if e.opt and "requires argument" in e.msg:
            dash = "--" if len(e.opt) > 1 else "-"
            raise UsageError(f"{PROG}: option '{dash}{e.opt}' requires an argument") from None
        raise UsageError(f"{PROG}: {e.msg}") from None
    opts = Options()
    for name, value in pairs:
        if name in ("-h", "--help"):
            sys.stdout.write(USAGE)
            sys.exit(0)
        if name in ("-v", "--version"):
            sys.stdout.write(VERSION)
            sys.exit(0)
        if name in ("-c", "--configure"):
            opts.configure = True
        elif name in ("-e", "--exit-fd"):
            opts.exit_fd = _non_negative(value, "exit-fd")
        elif name in ("-r", "--ready-fd"):
            opts.ready_fd = _non_negative(value, "ready-fd")
        elif name in ("-m", "--mtu"):
            if not re.fullmatch(r"\d+", value) or not 0 < int(value) <= MTU_MAX:
                raise UsageError(f"MTU must be a positive integer (< {MTU_MAX + 1})")
            if int(value) < MTU_MIN:
                raise UsageError(f"MTU must be at least {MTU_MIN}")
            opts.mtu = int(value)
        elif name == "--cidr":
            opts.cidr = parse_cidr(value)
        elif name == "--disable-host-loopback":
            opts.disable_host_loopback = True
        elif name == "--disable-dns":
            opts.disable_dns = True
        elif name == "--netns-type":
            opts.netns_type = value
        elif name == "--userns-path":
            if not os.path.exists(value):
                raise UsageError(f"userns path doesn't exist: {value}")
            opts.userns_path = value
    if len(rest) < 2:
        raise UsageError(f"{PROG}: PID|PATH and TAPNAME are required")
    if len(rest) > 2:
        print("WARNING: too many arguments")
    opts.target, opts.tapname = rest[0], rest[1]
    if opts.netns_type == "pid":
        if not re.fullmatch(r"\d+", opts.target) or int(opts.target) <= 0:
            raise UsageError("PID must be a positive integer")
    else:
        if opts.netns_type not in ("path",):
            opts.netns_type = "path"  # slirp4netns: any other value means path
        if not os.path.exists(opts.target):
            raise UsageError(
                "existing path expected when --netns-type=path: No such file or directory"
            )
    if len(opts.tapname.encode()) >= 16 or not opts.tapname:
        raise UsageError(f"invalid TAPNAME: {opts.tapname!r} (1 to 15 bytes)")
    return opts
