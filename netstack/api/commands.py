"""API requests to replies (no I/O). Replies are compact JSON with slirp4netns's exact
error strings; our own commands (list_connections, get_stats) answer the same way.

  {"execute": "add_hostfwd", "arguments": {...}}   -> {"return": {"id": N}}
  {"execute": "list_hostfwd"}                      -> {"return": {"entries": [...]},
                                                       "entries": [...]}
  {"execute": "remove_hostfwd", "arguments": {"id": N}} -> {"return": {}}
  {"execute": "list_connections"}                  -> {"return": {"connections": [...]}}
  {"execute": "get_stats"}                         -> {"return": {"drops": ..., ...}}

list_hostfwd carries the entries twice: slirp4netns really answers with a top-level
"entries" while its manual (and its test) read "return.entries".
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any, Protocol

from netstack.forward.rules import BadRequest, Forwards
from netstack.log import get_logger

log = get_logger(__name__)

MAX_REQUEST = 4096


class StatsSource(Protocol):
    def api_connections(self) -> list[dict[str, Any]]: ...
    def api_stats(self) -> dict[str, Any]: ...


def dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def error(desc: str) -> bytes:
    return dumps({"error": {"desc": "bad request: " + desc}})


def parse_complete(buf: bytes) -> object | None:
    """The JSON value at the start of buf when it is complete (trailing bytes are
    tolerated, as by slirp4netns), else None."""
    try:
        text = buf.decode()
    except UnicodeDecodeError:
        return None
    text = text.lstrip()
    if not text:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except (ValueError, RecursionError):  # deep nesting ("[[[[...") exhausts the stack
        return None
    return value


def handle(buf: bytes, forwards: Forwards, source: StatsSource) -> bytes:
    """The reply to one request (its bytes as received): always a JSON reply, an error
    one for anything that goes wrong."""
    try:
        return _handle(buf, forwards, source)
    except Exception:  # a bug must not leave a client without a reply
        log.exception("api: request failed")
        return error("internal error")


def _handle(buf: bytes, forwards: Forwards, source: StatsSource) -> bytes:
    if len(buf) >= MAX_REQUEST:
        return error("too large message")
    req = parse_complete(buf)
    if req is None:
        return error("cannot parse JSON")
    if not isinstance(req, dict):
        return error("json_object() failed")
    execute = req.get("execute")
    if not isinstance(execute, str):
        return error("no execute found")
    args = req.get("arguments")
    try:
        if execute == "add_hostfwd":
            rule = forwards.add(args)
            return dumps({"return": {"id": rule.id}})
        if execute == "list_hostfwd":
            entries = forwards.entries()
            return dumps({"return": {"entries": entries}, "entries": entries})
        if execute == "remove_hostfwd":
            forwards.remove(args)
            return dumps({"return": {}})
        if execute == "list_connections":
            return dumps({"return": {"connections": source.api_connections()}})
        if execute == "get_stats":
            return dumps({"return": source.api_stats()})
    except BadRequest as e:
        return error(str(e))
    return error("unknown execute")


def addr(ip: bytes, port: int) -> str:
    """'a.b.c.d:port' or '[v6]:port', for any address a flow can hold."""
    if len(ip) == 16:
        return f"[{socket.inet_ntop(socket.AF_INET6, ip)}]:{port}"
    return f"{socket.inet_ntop(socket.AF_INET, ip)}:{port}"


def uptime(since: float) -> float:
    return round(time.monotonic() - since, 3)
