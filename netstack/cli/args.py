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
import socket
import sys
from typing import NoReturn

from netstack import __version__
from netstack.directory.paths import default_socket
from netstack.stack.limits import Limits

PROG = "netstack"
MTU_DEFAULT = 1500
MTU_MAX = 65521
MTU_MIN = 68
SLIRP_CONFIG_VERSION_MAX = 4
DIRECTORY_WAIT_DEFAULT = 10.0
DIRECTORY_WAIT_MAX = 3600.0

SHORT = "ce:r:m:a:6hv"
LONG = [
    "configure",
    "exit-fd=",
    "ready-fd=",
    "mtu=",
    "enable-ipv6",
    "api-socket=",
    "cidr=",
    "disable-host-loopback",
    "no-host-loopback",
    "netns-type=",
    "userns-path=",
    "enable-sandbox",
    "create-sandbox",
    "enable-seccomp",
    "outbound-addr=",
    "outbound-addr6=",
    "disable-dns",
    "macaddress=",
    "max-tcp-flows=",
    "max-half-open=",
    "max-udp-flows=",
    "icmp-error-rate=",
    "udp-timeout=",
    "directory=",
    "directory-label=",
    "directory-wait=",
    "help",
    "version",
]

USAGE = f"""Usage: {PROG} [OPTION]... PID|PATH|FD [TAPNAME]
User-mode networking for unprivileged network namespaces (a slirp4netns drop-in).

-c, --configure          bring up the interface
-e, --exit-fd=FD         specify the FD for terminating {PROG}
-r, --ready-fd=FD        specify the FD to write to when the network is configured
-m, --mtu=MTU            specify MTU (default={MTU_DEFAULT}, max={MTU_MAX})
-6, --enable-ipv6        enable IPv6 (fd00::/64 by SLAAC, router fe80::2, DNS fd00::3)
-a, --api-socket=PATH    specify API socket path
--cidr=CIDR              specify network address CIDR (default=10.0.2.0/24)
--disable-host-loopback  prohibit connecting to 127.0.0.1:* on the host namespace
--netns-type=TYPE        specify network namespace type ([path|pid|tapfd], default=pid)
--userns-path=PATH       specify user namespace path
--enable-sandbox         enable {PROG} sandbox (mount namespace, pivot_root, capabilities)
--enable-seccomp         enable {PROG} seccomp (kill on dangerous syscalls)
--outbound-addr=IPv4     sets outbound ipv4 address to bound to (an address or interface name)
--outbound-addr6=IPv6    sets outbound ipv6 address to bound to (an address or interface name)
--disable-dns            disable built-in DNS (10.0.2.3 by default)
--macaddress=MAC         specify the MAC address of the TAP (only valid with -c)
--max-tcp-flows=N        limit TCP flows (default=4096)
--max-half-open=N        limit TCP handshakes in progress; the oldest gives way (default=512)
--max-udp-flows=N        limit UDP flows; the idlest gives way (default=1024)
--icmp-error-rate=N      limit ICMP errors sent to the guest per second (default=200)
--udp-timeout=SECONDS    close a UDP flow's host socket after this idle time (default=240)
--directory=SOCK         reach netstackd's services by name: DNS answers directory names
                         with their VIPs, TCP to a VIP goes to a live instance (default:
                         the per-user netstackd's socket when it exists; "none": off)
--directory-label=K=V    a label of this container's clients, for the directory's policy
                         (repeatable; default=zone=default)
--directory-wait=SECONDS how long a connect to a service not served yet waits for an
                         instance before it is refused (default=10)
-h, --help               show this help and exit
-v, --version            show version and exit
"""

VERSION = f"""{PROG} version {__version__}
SLIRP_CONFIG_VERSION_MAX: {SLIRP_CONFIG_VERSION_MAX}
"""


LIMIT_OPTIONS = {
    "--max-tcp-flows": "max_tcp_flows",
    "--max-half-open": "max_half_open",
    "--max-udp-flows": "max_udp_flows",
    "--icmp-error-rate": "icmp_errors_per_second",
    "--udp-timeout": "udp_timeout",
}


class Options:
    """The parsed command line: the defaults below until parse() sets them. A plain
    class, not a dataclass: importing dataclasses takes ~5 ms of a ~50 ms start."""

    target: str = ""  # PID, namespace path, or TAP fd
    tapname: str = ""
    netns_type: str = "pid"
    userns_path: str | None = None
    configure: bool = False
    exit_fd: int | None = None
    ready_fd: int | None = None
    mtu: int = MTU_DEFAULT
    enable_ipv6: bool = False
    api_socket: str | None = None
    cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.0.2.0/24")
    disable_host_loopback: bool = False
    enable_sandbox: bool = False
    enable_seccomp: bool = False
    outbound_addr: str | None = None
    outbound_addr6: str | None = None
    disable_dns: bool = False
    macaddress: str | None = None
    limits: Limits
    directory: str | None = None  # netstackd's API socket
    directory_labels: dict[str, str]
    directory_wait: float = DIRECTORY_WAIT_DEFAULT

    def __init__(self) -> None:
        self.limits = Limits()
        self.directory_labels = {}

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


_LABEL = re.compile(r"[A-Za-z0-9._/-]{1,63}")
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
        elif name in ("-6", "--enable-ipv6"):
            opts.enable_ipv6 = True
        elif name in ("-a", "--api-socket"):
            opts.api_socket = value
        elif name == "--disable-host-loopback":
            opts.disable_host_loopback = True
        elif name == "--no-host-loopback":
            print("WARNING: --no-host-loopback is deprecated, use --disable-host-loopback")
            opts.disable_host_loopback = True
        elif name == "--disable-dns":
            opts.disable_dns = True
        elif name == "--netns-type":
            opts.netns_type = value
        elif name == "--userns-path":
            if not os.path.exists(value):
                raise UsageError(f"userns path doesn't exist: {value}")
            opts.userns_path = value
        elif name == "--enable-sandbox":
            opts.enable_sandbox = True
        elif name == "--create-sandbox":
            print("WARNING: --create-sandbox is deprecated, use --enable-sandbox")
            opts.enable_sandbox = True
        elif name == "--enable-seccomp":
            opts.enable_seccomp = True
        elif name == "--outbound-addr":
            if not _is_ipv4(value) and not _is_ifname(value):
                raise UsageError("outbound-addr has to be valid ipv4 address or interface name.")
            opts.outbound_addr = value
        elif name == "--outbound-addr6":
            if not _is_ipv6(value) and not _is_ifname(value):
                raise UsageError("outbound-addr6 has to be valid ipv6 address or interface name.")
            opts.outbound_addr6 = value
        elif name == "--macaddress":
            if not re.fullmatch(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}", value) or (
                int(value[:2], 16) & 1
            ):
                raise UsageError(f"invalid MAC address: {value}")
            opts.macaddress = value.lower()
        elif name == "--directory":
            if not value:
                raise UsageError("directory needs the path of netstackd's socket")
            opts.directory = value
        elif name == "--directory-label":
            key, sep, label = value.partition("=")
            if not sep or not _LABEL.fullmatch(key) or not _LABEL.fullmatch(label):
                raise UsageError(f"directory-label must be K=V (letters, digits, ._-): {value}")
            opts.directory_labels[key] = label
        elif name == "--directory-wait":
            if not re.fullmatch(r"\d+(\.\d+)?", value) or not (
                0 < float(value) <= DIRECTORY_WAIT_MAX
            ):
                raise UsageError("directory-wait must be a number of seconds from 0 to 3600")
            opts.directory_wait = float(value)
        elif name in LIMIT_OPTIONS:
            if not re.fullmatch(r"\d+", value) or not 1 <= int(value) <= 1_000_000:
                raise UsageError(f"{name[2:]} must be an integer from 1 to 1000000")
            opts.limits = opts.limits._replace(**{LIMIT_OPTIONS[name]: int(value)})
    if opts.directory == "none":
        opts.directory = None
    elif opts.directory is None and not opts.directory_labels:
        default = default_socket()  # netstackd runs for this user: follow it
        if os.path.exists(default):
            opts.directory = default
    if (opts.directory_labels or "--directory-wait" in dict(pairs)) and not opts.directory:
        raise UsageError("--directory-label and --directory-wait need --directory")
    if opts.macaddress is not None and not opts.configure:
        raise UsageError("--macaddr cannot be specified when --configure or -c is not specified")
    if opts.netns_type == "tapfd":
        return _tapfd_positionals(opts, rest)
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


def _tapfd_positionals(opts: Options, rest: list[str]) -> Options:
    """--netns-type=tapfd: the first positional is an inherited TAP fd; TAPNAME is
    optional and -c does not apply (the fd's owner configured the interface)."""
    if not rest:
        raise UsageError(f"{PROG}: FD is required with --netns-type=tapfd")
    if len(rest) > 2:
        print("WARNING: too many arguments")
    if not re.fullmatch(r"\d+", rest[0]):
        raise UsageError("FD must be a non-negative integer")
    opts.target = rest[0]
    opts.tapname = rest[1] if len(rest) > 1 else ""
    opts.configure = False
    return opts


def _is_ipv4(value: str) -> bool:
    try:
        ipaddress.IPv4Address(value)
        return True
    except ValueError:
        return False


def _is_ipv6(value: str) -> bool:
    try:
        ipaddress.IPv6Address(value)
        return True
    except ValueError:
        return False


def _is_ifname(value: str) -> bool:
    """An existing interface of the namespace netstack runs in."""
    try:
        socket.if_nametoindex(value)
        return True
    except OSError:
        return False
