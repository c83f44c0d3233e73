"""netstack's entry point: parse arguments, open the TAP in the target namespace,
run the stack until SIGTERM, the exit fd, or the TAP going away."""

from __future__ import annotations

import logging
import os
import socket
import sys

from netstack.cli import args as cli_args
from netstack.cli.nsenter import InterfaceSetup, open_tap_in_namespace, target_for
from netstack.stack.config import NetworkConfig

log = logging.getLogger("netstack")


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


def main(argv: list[str] | None = None) -> int:
    opts = cli_args.parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if os.environ.get("NETSTACK_DEBUG") else logging.INFO,
        format="%(name)s: %(message)s",
    )
    config = NetworkConfig(
        cidr=opts.cidr,
        mtu=opts.mtu,
        host_loopback=not opts.disable_host_loopback,
        dns_enabled=not opts.disable_dns,
    )
    setup = None
    if opts.configure:
        setup = InterfaceSetup(
            opts.mtu,
            socket.inet_ntoa(config.guest),
            opts.cidr.prefixlen,
            str(opts.cidr.broadcast_address),
            socket.inet_ntoa(config.gateway),
        )
    target = target_for(
        opts.pid, opts.target if opts.netns_type == "path" else None, opts.userns_path
    )
    want_vnet = os.environ.get("NETSTACK_VNET", "1") != "0"
    try:
        fd, vnet_on = open_tap_in_namespace(target, opts.tapname, setup, want_vnet)
    except (RuntimeError, OSError) as e:
        print(f"netstack: {e}", file=sys.stderr)
        return 1

    # imported after the fork: uvloop and the stack are not needed in the child
    from netstack.host.runtime import Runtime
    from netstack.link.tap import TapLink

    sys.stdout.write(_banner(opts, config))
    sys.stdout.flush()
    link = TapLink(fd, opts.mtu, vnet_on)
    runtime = Runtime(config, link)
    if opts.exit_fd is not None:
        runtime.watch_exit_fd(opts.exit_fd)
    ready_fd = opts.ready_fd

    def on_ready() -> None:
        log.info(
            "ready: TAP %s, %s frames",
            opts.tapname,
            "virtio-net (offloads)" if vnet_on else "plain",
        )
        if ready_fd is not None:
            _write_ready(ready_fd)

    return runtime.run(on_ready)


if __name__ == "__main__":
    sys.exit(main())
