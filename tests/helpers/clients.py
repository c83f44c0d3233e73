"""Test clients, run inside a test namespace: `python clients.py KIND [ARGS]`.

  get HOST PORT PATH             HTTP/1.0 GET on a blocking socket; prints the body's
                                 "sha256hex length"
  epoll-first HOST PORT PATH S   a C-style event loop: nonblocking socket registered with
                                 epoll *before* connect, then wait up to S seconds for
                                 EPOLLOUT; prints one JSON line (see epoll_first)
  options HOST PORT              set socket options (OPTIONS) before connecting; prints
                                 JSON: each option's value read back before and after
  connects HOST PORT N MODE      N connects (MODE "blocking", or "timeout": Python's
                                 nonblocking connect), print "connected", hold them until
                                 stdin closes
  accept PORT [gated]            listen on PORT, print the pid, (gated: wait for a line
                                 on stdin), block in accept(), print "peer IP" for each
                                 connection, until interrupted
  connect HOST PORT              print the pid, block in connect(), print "done"
Both print "interrupted" on SIGINT (KeyboardInterrupt).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import select
import socket
import struct
import sys
import time


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.0\r\nHost: web\r\n\r\n".encode()


def body(response: bytes) -> bytes:
    head, sep, rest = response.partition(b"\r\n\r\n")
    if not sep or b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
        raise SystemExit(f"bad response: {response[:80]!r}")
    return rest


def digest(data: bytes) -> str:
    return f"{hashlib.sha256(data).hexdigest()} {len(data)}"


def read_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def get(host: str, port: int, path: str) -> str:
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(request(path))
        return digest(body(read_all(s)))


def event_names(mask: int) -> list[str]:
    return [n for n in ("EPOLLIN", "EPOLLOUT", "EPOLLERR", "EPOLLHUP")
            if mask & getattr(select, n)]


def epoll_first(host: str, port: int, path: str, seconds: float) -> dict[str, object]:
    """A C-style event loop that registers its socket before connecting: wait for
    EPOLLOUT (`first_events`, `so_error`), switch the registration to EPOLLIN with
    EPOLL_CTL_MOD (`rearm`: "ok" or the errno name), send the request and read the
    response on EPOLLIN until EOF (`digest`), all within `seconds`; `stage` is the last
    step reached: "connect", "rearm", "read" or "done"."""
    deadline = time.monotonic() + seconds
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    ep = select.epoll()
    out: dict[str, object] = {"stage": "connect"}
    try:
        ep.register(s.fileno(), select.EPOLLOUT)
        err = s.connect_ex((host, port))
        out["connect"] = errno.errorcode[err] if err else "0"
        events = ep.poll(seconds)
        if not events:
            return out
        out["first_events"] = event_names(events[0][1])
        out["so_error"] = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        out["stage"] = "rearm"
        try:
            ep.modify(s.fileno(), select.EPOLLIN)
        except OSError as e:
            out["rearm"] = errno.errorcode.get(e.errno or 0, str(e.errno))
            return out
        out["rearm"] = "ok"
        out["stage"] = "read"
        s.sendall(request(path))  # a few bytes: the send buffer takes them at once
        chunks = []
        while time.monotonic() < deadline:
            if not ep.poll(max(0.0, deadline - time.monotonic())):
                return out
            try:
                while chunk := s.recv(1 << 16):
                    chunks.append(chunk)
            except BlockingIOError:
                continue
            out["digest"] = digest(body(b"".join(chunks)))
            out["stage"] = "done"
            break
        return out
    finally:
        ep.close()
        s.close()


TIMEVAL_HALF_SECOND = struct.pack("@ll", 0, 500_000)
# name -> (level, option, value set before connect): what C programs set on purpose
OPTIONS: dict[str, tuple[int, int, int | bytes]] = {
    "SO_RCVTIMEO": (socket.SOL_SOCKET, socket.SO_RCVTIMEO, TIMEVAL_HALF_SECOND),
    "SO_SNDTIMEO": (socket.SOL_SOCKET, socket.SO_SNDTIMEO, TIMEVAL_HALF_SECOND),
    "SO_RCVBUF": (socket.SOL_SOCKET, socket.SO_RCVBUF, 32768),
    "SO_SNDBUF": (socket.SOL_SOCKET, socket.SO_SNDBUF, 32768),
    "SO_KEEPALIVE": (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    "IP_TOS": (socket.IPPROTO_IP, socket.IP_TOS, 0x10),
    "TCP_NODELAY": (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
    "TCP_KEEPIDLE": (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30),
    "TCP_CONGESTION": (socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"reno"),
}


def read_option(s: socket.socket, level: int, option: int, value: int | bytes) -> str:
    if isinstance(value, bytes):
        return s.getsockopt(level, option, 16).rstrip(b"\0").hex()
    return str(s.getsockopt(level, option))


def options(host: str, port: int) -> dict[str, list[str]]:
    """Each option in OPTIONS: [value read back before connect, value after]."""
    with socket.socket() as s:
        before = {}
        for name, (level, option, value) in OPTIONS.items():
            s.setsockopt(level, option, value)
            before[name] = read_option(s, level, option, value)
        s.connect((host, port))
        return {name: [before[name], read_option(s, level, option, value)]
                for name, (level, option, value) in OPTIONS.items()}


def connects(host: str, port: int, count: int, mode: str) -> None:
    held = []
    for _ in range(count):
        s = socket.socket()
        if mode == "timeout":
            s.settimeout(10)
        s.connect((host, port))
        held.append(s)
    print("connected", flush=True)
    sys.stdin.read()
    for s in held:
        s.close()


def blocked(call: str, args: list[str]) -> None:
    """Blocking calls, SIGINT's default handler armed (KeyboardInterrupt)."""
    s = socket.socket()
    try:
        if call == "accept":
            s.bind(("0.0.0.0", int(args[0])))
            s.listen()
        print(os.getpid(), flush=True)
        if args[1:] == ["gated"]:
            sys.stdin.readline()
        if call == "connect":
            s.connect((args[0], int(args[1])))
            print("done", flush=True)
            return
        while True:
            conn, peer = s.accept()
            print("peer", peer[0], flush=True)
            conn.close()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    except OSError as e:
        print(errno.errorcode.get(e.errno or 0, str(e)), flush=True)


if __name__ == "__main__":
    kind, args = sys.argv[1], sys.argv[2:]
    if kind == "get":
        print(get(args[0], int(args[1]), args[2]))
    elif kind == "epoll-first":
        print(json.dumps(epoll_first(args[0], int(args[1]), args[2], float(args[3]))))
    elif kind == "options":
        print(json.dumps(options(args[0], int(args[1]))))
    elif kind == "connects":
        connects(args[0], int(args[1]), int(args[2]), args[3])
    elif kind in ("accept", "connect"):
        blocked(kind, args)
    else:
        raise SystemExit(f"unknown kind {kind}")
