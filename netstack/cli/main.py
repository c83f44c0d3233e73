"""netstack's entry point: parse arguments, open the TAP in the target namespace,
run the stack until SIGTERM, the exit fd, or the TAP going away."""

from __future__ import annotations

import os
import resource
import socket
import sys

from netstack import log as netstack_log
from netstack.cli import args as cli_args
from netstack.cli.nsenter import InterfaceSetup, TapChild, open_tap_in_namespace, target_for
from netstack.stack.config import NetworkConfig

log = netstack_log.get_logger("netstack")


def _banner(opts: cli_args.Options, config: NetworkConfig) -> str:
    ip = socket.inet_ntoa
    lines = [
        "Starting netstack",
        f"* MTU:             {opts.mtu}",
        f"* Network:         {config.cidr.network_address}",
        f"* Netmask:         {config.cidr.netmask}",
        f"* Gateway:         {ip(config.gateway)}",
        f"* DNS:             {ip(config.dns)}",
        f"* DHCP begin:      {ip(config.dhcp_address(0))}",
        f"* DHCP end:        {ip(config.dhcp_address(15))}",
        f"* Recommended IP:  {ip(config.guest)}",
    ]
    if config.host_loopback:
        lines.append(
            f"WARNING: 127.0.0.1:* on the host is accessible as {ip(config.gateway)} "
            "(set --disable-host-loopback to prohibit connecting to 127.0.0.1:*)"
        )
    return "\n".join(lines) + "\n"


def _write_ready(fd: int) -> None:
    try:
        while True:
            try:
                os.write(fd, b"1")
                break
            except InterruptedError:
                continue
    except OSError as e:
        log.warning("ready-fd %d: %s", fd, e)
    try:
        os.close(fd)
    except OSError:
        pass


def _open_tap(opts: cli_args.Options, config: NetworkConfig) -> tuple[int, bool, TapChild | None]:
    """The TAP fd, whether it carries virtio-net headers, and the child still busy
    configuring the interface (None in tapfd mode)."""
    if opts.netns_type == "tapfd":
        from netstack.link.tap import inherited_tap

        fd, vnet_on = inherited_tap(int(opts.target))
        return fd, vnet_on, None
    setup = None
    if opts.configure:
        setup = InterfaceSetup(
            opts.mtu,
            socket.inet_ntoa(config.guest),
            opts.cidr.prefixlen,
            str(opts.cidr.broadcast_address),
            socket.inet_ntoa(config.gateway),
            opts.macaddress,
            opts.enable_ipv6,
        )
    target = target_for(
        opts.pid, opts.target if opts.netns_type == "path" else None, opts.userns_path
    )
    want_vnet = os.environ.get("NETSTACK_VNET", "1") != "0"
    child = open_tap_in_namespace(target, opts.tapname, setup, want_vnet, _import_stack)
    return child.fd, child.vnet, child


def _import_stack() -> None:
    """The stack's modules, imported while the child opens the TAP (not before the
    fork: the child needs none of them)."""
    import netstack.host.runtime  # noqa: F401


def _raise_fd_limit() -> None:
    """Every flow holds a host socket: take the whole hard limit on open files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def configure_logging(directory: bool) -> None:
    """Records to stderr as `name: message`. With --directory, asyncio (uvloop) runs
    and logs through logging itself, so logging is set up now for its records too;
    without, it waits for our first record (netstack/log.py: not on the start path)."""
    netstack_log.configure(
        netstack_log.DEBUG if os.environ.get("NETSTACK_DEBUG") else netstack_log.INFO,
        "%(name)s: %(message)s",
        eager=directory,
    )


def main(argv: list[str] | None = None) -> int:
    opts = cli_args.parse(sys.argv[1:] if argv is None else argv)
    _raise_fd_limit()
    configure_logging(bool(opts.directory))
    if opts.enable_ipv6:
        print("WARNING: Support for IPv6 is experimental")
    if opts.enable_seccomp:
        print("WARNING: Support for seccomp is experimental")
    config = NetworkConfig(
        cidr=opts.cidr,
        mtu=opts.mtu,
        host_loopback=not opts.disable_host_loopback,
        dns_enabled=not opts.disable_dns,
        ipv6=opts.enable_ipv6,
    )
    from netstack.host import outbound

    try:
        outbound_addr = outbound.resolve(opts.outbound_addr, socket.AF_INET)
        outbound_addr6 = outbound.resolve(opts.outbound_addr6, socket.AF_INET6)
    except ValueError as e:
        print(f"netstack: {e}", file=sys.stderr)
        return 1
    try:
        fd, vnet_on, child = _open_tap(opts, config)
    except (RuntimeError, OSError) as e:
        print(f"netstack: {e}", file=sys.stderr)
        return 1

    from netstack.host.runtime import Runtime  # imported already, but for tapfd mode
    from netstack.link.tap import TapLink

    banner = _banner(opts, config)
    if opts.api_socket:
        banner += f"* API Socket:      {opts.api_socket}\n"
    if opts.directory:
        banner += f"* Directory:       {opts.directory}\n"
    if outbound_addr or outbound_addr6:
        banner += f"* Outbound:        {outbound_addr or '-'} {outbound_addr6 or '-'}\n"
    sys.stdout.write(banner)
    sys.stdout.flush()

    if opts.enable_sandbox and os.geteuid() != 0 and opts.pid:
        from netstack.sandbox import sandbox

        try:
            sandbox.join_target_userns(opts.pid)
        except OSError as e:
            print(f"netstack: sandbox: {e}", file=sys.stderr)
            return 1

    if opts.enable_seccomp:  # before the loop exists: libuv must not set up io_uring
        from netstack.sandbox import seccomp

        try:
            seccomp.refuse_io_uring()
        except OSError as e:
            print(f"netstack: seccomp: {e}", file=sys.stderr)
            return 1
    link = TapLink(fd, opts.mtu, vnet_on)
    client = directory = None
    if opts.directory:
        from netstack.directory.client import DirectoryClient
        from netstack.stack.vips import DirectorySettings

        client = DirectoryClient(opts.directory)
        directory = DirectorySettings(client, opts.directory_labels, opts.directory_wait)
    runtime = Runtime(
        config,
        link,
        outbound_addr=outbound_addr,
        outbound_addr6=outbound_addr6,
        limits=opts.limits,
        directory=directory,
        use_asyncio=bool(opts.directory),  # the directory client is asyncio's
    )
    if client is not None:
        runtime.follow_directory(client)
    if opts.api_socket:
        from netstack.api.server import bind_api_socket
        from netstack.cli import socket_remover

        try:
            api_sock = bind_api_socket(opts.api_socket)
        except (OSError, ValueError) as e:
            print(f"netstack: api socket {opts.api_socket}: {e}", file=sys.stderr)
            return 1
        try:
            socket_remover.remove_at_exit(opts.api_socket)  # before the sandbox hides it
        except OSError as e:
            log.warning("api socket %s stays after exit: no watcher (%s)", opts.api_socket, e)
        runtime.serve_api(api_sock, opts.api_socket)
    if child is not None:
        try:
            child.wait()  # -c done (or failed) in the namespace
        except RuntimeError as e:
            print(f"netstack: {e}", file=sys.stderr)
            runtime.shutdown()
            return 1
    if opts.exit_fd is not None:
        runtime.watch_exit_fd(opts.exit_fd)
    if opts.netns_type == "pid":
        runtime.watch_target_process(opts.pid)  # pidfd_open: before seccomp forbids it
    if opts.enable_sandbox or opts.enable_seccomp:
        from netstack.sandbox import sandbox, seccomp

        try:
            if opts.enable_sandbox:
                sandbox.enter(runtime.later_modules())
            if opts.enable_seccomp:
                sandbox.preload(runtime.later_modules())
                seccomp.install()
        except (OSError, KeyError) as e:
            print(f"netstack: sandbox: {e}", file=sys.stderr)
            if opts.api_socket:
                runtime.shutdown()
            return 1
    if opts.netns_type == "path":
        # after the sandbox: what we watch must be what the sandbox lets us see
        runtime.watch_namespace_path(opts.target)
    ready_fd = opts.ready_fd

    def on_ready() -> None:
        if ready_fd is not None:
            _write_ready(ready_fd)
        log.info(  # after the byte: the first record imports logging (netstack/log.py)
            "ready: TAP %s, %s frames",
            opts.tapname or f"fd {fd}",
            "virtio-net (offloads)" if vnet_on else "plain",
        )

    return runtime.run(on_ready)


if __name__ == "__main__":
    sys.exit(main())
