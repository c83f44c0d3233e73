"""Small programs the directory tests run inside supervised containers.

  serve PORT [COUNT] [FAMILY]   listen on 0.0.0.0 (or ::), print "ready <pid>",
                                per connection print "accepted <addr> <peername>
                                <sockname>" and send "hello <pid>\\n"
  fetch HOST PORT               connect (blocking), print one JSON line: peer, local, data
  fetch-nb HOST PORT            the same with a nonblocking connect and poll
Errors print "error <errno name>" and exit 3.
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import sys


def serve(port: int, count: int, family: int) -> None:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    s.listen(16)
    print("ready", os.getpid(), flush=True)
    for _ in range(count):
        c, addr = s.accept()
        print("accepted", json.dumps([addr[:2], c.getpeername()[:2], c.getsockname()[:2]]),
              flush=True)
        c.sendall(f"hello {os.getpid()}\n".encode())
        c.close()


def fetch(host: str, port: int, blocking: bool) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        if blocking:
            s.connect((host, port))  # truly blocking (a timeout makes it nonblocking)
            s.settimeout(30)
        else:
            s.setblocking(False)
            err = s.connect_ex((host, port))
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
            select.select([], [s], [], 30)
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            s.setblocking(True)
            s.settimeout(30)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    except OSError as e:
        print("error", errno.errorcode.get(e.errno or 0, str(e)), flush=True)
        sys.exit(3)
    print(json.dumps({"peer": s.getpeername()[:2], "local": s.getsockname()[:2],
                      "data": data.decode()}), flush=True)


def main() -> None:
    cmd, *rest = sys.argv[1:]
    if cmd == "serve":
        family = socket.AF_INET6 if len(rest) > 2 and rest[2] == "6" else socket.AF_INET
        serve(int(rest[0]), int(rest[1]) if len(rest) > 1 else 1, family)
    elif cmd in ("fetch", "fetch-nb"):
        fetch(rest[0], int(rest[1]), cmd == "fetch")
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
