"""netstackd's options for running on several hosts, and the store they choose.

    --store memory | etcd://HOST:PORT[,HOST:PORT...]
    --etcd-cacert/--etcd-cert/--etcd-key   TLS with a client certificate
    --etcd-prefix, --etcd-ttl, --node      key prefix, lease TTL, this daemon's name
    --publish-addr ADDR, --port-range LO-HI   where bound services listen on the host
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import socket

from netstack.directory.store import MemoryStore, Store

DEFAULT_PUBLISH = "127.0.0.1"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default="memory",
                   help="where records live: memory (default, this host only) or "
                        "etcd://HOST:PORT[,HOST:PORT...] (shared by every host)")
    p.add_argument("--etcd-cacert", default=None, help="CA bundle to verify etcd (TLS)")
    p.add_argument("--etcd-cert", default=None, help="client certificate for etcd (TLS)")
    p.add_argument("--etcd-key", default=None, help="client key for etcd (TLS)")
    p.add_argument("--etcd-prefix", default="/netstack/v1/", help="key prefix in etcd")
    p.add_argument("--etcd-ttl", type=int, default=10, metavar="SECONDS",
                   help="TTL of this daemon's lease: a dead host's services vanish after it")
    p.add_argument("--node", default=None,
                   help="this daemon's name in etcd (default: hostname-ADDR-random)")
    p.add_argument("--publish-addr", default=DEFAULT_PUBLISH,
                   help="the host IPv4 address services bound here listen on (default "
                        "%(default)s; other hosts reach them there)")
    p.add_argument("--port-range", default=None, metavar="LO-HI",
                   help="host ports for services (default: any free port)")


def check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.store != "memory":
        from netstack.directory import etcd

        try:
            args.etcd_endpoints = etcd.parse_endpoints(args.store)
        except ValueError as e:
            p.error(f"--store {args.store!r}: {e} (want memory or etcd://HOST:PORT,...)")
        if not args.store.startswith("etcd://"):
            p.error(f"--store {args.store!r}: want memory or etcd://HOST:PORT,...")
        for path in (args.etcd_cacert, args.etcd_cert, args.etcd_key):
            if path is not None and not os.path.isfile(path):
                p.error(f"{path}: no such file")
        if (args.etcd_cert is None) != (args.etcd_key is None):
            p.error("--etcd-cert and --etcd-key go together")
    elif args.etcd_cacert or args.etcd_cert or args.etcd_key:
        p.error("--etcd-* options need --store etcd://...")
    if not 1 <= args.etcd_ttl <= 3600:
        p.error("--etcd-ttl must be between 1 and 3600 seconds")
    try:
        addr = ipaddress.IPv4Address(args.publish_addr)
    except ValueError:
        p.error(f"--publish-addr {args.publish_addr!r}: want an IPv4 address of this host")
    if addr.is_unspecified or addr.is_multicast:
        p.error("--publish-addr must be one address of this host (not 0.0.0.0)")
    args.port_range = parse_port_range(p, args.port_range)
    if args.node is None:
        args.node = f"{socket.gethostname()}-{args.publish_addr}-{secrets.token_hex(3)}"
    if not args.node or "/" in args.node or len(args.node) > 128:
        p.error("--node: a name without '/'")


def parse_port_range(p: argparse.ArgumentParser, text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    lo, sep, hi = text.partition("-")
    if not sep or not lo.isdigit() or not hi.isdigit() or not 1 <= int(lo) <= int(hi) < 65536:
        p.error(f"--port-range {text!r}: want LO-HI (1..65535)")
    return int(lo), int(hi)


def make_store(args: argparse.Namespace) -> Store:
    if args.store == "memory":
        return MemoryStore(args.vip_cidr, args.vip6_cidr, args.node,
                           {"addr": args.publish_addr, "pid": os.getpid()})
    from netstack.directory import etcd
    from netstack.directory.etcdstore import EtcdStore

    client = etcd.GrpcClient(args.etcd_endpoints, args.etcd_cacert, args.etcd_cert,
                             args.etcd_key)
    return EtcdStore(client, args.vip_cidr, args.vip6_cidr, args.node, ttl=args.etcd_ttl,
                     prefix=args.etcd_prefix,
                     host_info={"addr": args.publish_addr, "pid": os.getpid()})
