"""What the API reports of a running stack (get_stats, list_connections), read from
the runtime: the stack's counters and flows, the C paths' counters, the directory's
view. Imported on the first such command.
"""

from __future__ import annotations

import time
from typing import Any

from netstack.api import commands as api_commands
from netstack.host.interfaces import StatsSources
from netstack.tcp.interfaces import TcpState


def connections(rt: StatsSources) -> list[dict[str, Any]]:
    """The API's list_connections: every TCP connection (with the flows C closed and
    keeps in TIME_WAIT, which Python has no connection for) and UDP flow."""
    now = time.monotonic()
    if rt.fastpath is not None:
        rt.fastpath.adopt_all()  # the flows C opened are listed too
    out: list[dict[str, Any]] = []
    for f in rt.fastpath.time_wait_flows() if rt.fastpath is not None else ():
        ip_len = 16 if f.v6 else 4  # C keys IPv4 addresses as ::ffff:a.b.c.d
        out.append(
            {
                "proto": "tcp",
                "state": TcpState.TIME_WAIT.value,
                "direction": "inbound" if f.forwarded else "outbound",
                "guest": api_commands.addr(bytes(f.guest_ip)[-ip_len:], int(f.guest_port)),
                "remote": api_commands.addr(bytes(f.remote_ip)[-ip_len:], int(f.remote_port)),
                "bytes_from_guest": int(f.bytes_from_guest),
                "bytes_to_guest": int(f.bytes_to_guest),
                "age_seconds": round(now - float(f.created), 3),
            }
        )
    for conn in rt.stack.tcp.conns.values():
        if conn.fast is not None and rt.fastpath is not None:
            rt.fastpath.sync(conn)
        f = conn.flow
        out.append(
            {
                "proto": "tcp",
                "state": conn.state.value,
                "direction": "inbound" if conn.opened_by_host else "outbound",
                "guest": api_commands.addr(f.guest_ip, f.guest_port),
                "remote": api_commands.addr(f.remote_ip, f.remote_port),
                "bytes_from_guest": conn.bytes_from_guest,
                "bytes_to_guest": conn.bytes_to_guest,
                "age_seconds": round(now - conn.created, 3),
            }
        )
    rt.stack.udp.sync()
    for flow in rt.stack.udp.flows.values():
        out.append(
            {
                "proto": "udp",
                "state": "open",
                "direction": "outbound",
                "guest": api_commands.addr(flow.guest_ip, flow.guest_port),
                "remote": "*",
                "idle_seconds": round(now - flow.last_activity, 3),
                "in_c": flow.fast is not None,
            }
        )
    return out


def stats(rt: StatsSources) -> dict[str, Any]:
    """The API's get_stats: the stack's counters, flows, the C path's and the directory's."""
    if rt.fastpath is not None:
        rt.fastpath.adopt_all()  # the flows C opened count in the tables below
    stats = rt.stack.stats.snapshot()
    if rt.fastpath is not None:  # C reads every frame (and counts them)
        stats["events"]["frames_from_guest"] = rt.fastpath.frames_in()
    return {
        **stats,
        "flows": {
            # with the flows lingering in TIME_WAIT in C (csrc/flow_time_wait.c)
            "tcp": len(rt.stack.tcp.conns)
            + (rt.fastpath.time_wait() if rt.fastpath is not None else 0),
            "tcp_half_open": len(rt.stack.tcp.half_open),
            "udp": len(rt.stack.udp.flows),
            "icmp": len(rt.stack.ping.flows),
            "dns_queries": len(rt.stack.dns.queries),
            "neighbours": len(rt.stack.neighbours),
        },
        "forwards": len(rt.forwards.rules),
        "frames_to_guest": rt.stack.segments.frames_sent
        + rt.stack.output.frames_sent
        + (rt.fastpath.frames_out() if rt.fastpath is not None else 0),
        "uptime_seconds": api_commands.uptime(rt.started),
        "fast_path": _fast_path_stats(rt),
        "directory": _directory_stats(rt),
    }


def _fast_path_stats(rt: StatsSources) -> dict[str, Any] | None:
    if rt.fastpath is None:
        return None
    out: dict[str, Any] = rt.fastpath.snapshot()
    if rt.udp_fast is not None:
        out.update(rt.udp_fast.snapshot())
    if rt.dns_fast is not None:
        out.update(rt.dns_fast.snapshot())
    return out


def _directory_stats(rt: StatsSources) -> dict[str, Any] | None:
    """--directory: whether netstackd's watch is up, and what the view holds."""
    client, vips = rt.directory_client, rt.stack.vips
    if client is None or vips is None:
        return None
    view = client.view
    return {
        "watching": client.connected,
        "services": len(view.services) if view is not None else 0,
        "instances": sum(len(s.instances) for s in view.services) if view else 0,
        "connects_waiting": len(vips.waiting),
    }
