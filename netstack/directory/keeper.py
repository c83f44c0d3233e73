"""The listener keeper: a small process that holds a copy of every container's seccomp
listener (and what netstackd registered for it), so that a netstackd that dies or
restarts costs nothing but a pause. While nobody serves a listener, trapped calls wait
(a listener with no holder at all would fail them with ENOSYS); a new netstackd takes
everything back and serves them again. Supervised processes keep their connections
throughout: those are plain host sockets.

Protocol on keeper.sock (AF_UNIX stream, beside the API socket), one JSON object per
message, fds by SCM_RIGHTS:
  {"op": "put", "key": K, "state": {...}} + listener, in-flight memory   keep K
  {"op": "records", "key": K, "records": [...]}   what K registered
  {"op": "forget", "key": K}
  {"op": "take"}   -> one {"key", "state", "records"} + both fds per container,
                      then {"op": "end"}
The keeper drops a listener once no task uses its filter (POLLHUP), and exits when it
holds none and no netstackd is connected.
"""

from __future__ import annotations

import array
import json
import os
import select
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

MAX_MESSAGE = 1 << 20


@dataclass
class Kept:
    fds: list[int]  # the listener, then the in-flight memory (netstack.directory.inflight)
    state: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def listener(self) -> int:
        return self.fds[0]


MAX_FDS = 2


def send_message(sock: socket.socket, msg: dict[str, Any], fds: list[int] | None = None
                 ) -> None:
    data = json.dumps(msg).encode()
    header = len(data).to_bytes(4, "big")
    if not fds:
        sock.sendall(header + data)
    else:
        sock.sendmsg([header + data],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


def recv_message(sock: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """One message and the fds it carried; None at EOF."""
    fds: list[int] = []
    header, ancdata, _flags, _ = sock.recvmsg(4, socket.CMSG_SPACE(4 * MAX_FDS),
                                              socket.MSG_CMSG_CLOEXEC)
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(cdata[: len(cdata) - len(cdata) % 4])
            fds.extend(got)
    if not header:
        for fd in fds:
            os.close(fd)
        return None
    while len(header) < 4:
        more = sock.recv(4 - len(header))
        if not more:
            return None
        header += more
    length = int.from_bytes(header, "big")
    if length > MAX_MESSAGE:
        raise ValueError("message too large")
    data = b""
    while len(data) < length:
        chunk = sock.recv(length - len(data))
        if not chunk:
            return None
        data += chunk
    return json.loads(data), fds


class Keeper:
    def __init__(self, path: str) -> None:
        self.path = path
        self.kept: dict[str, Kept] = {}
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            self.server.bind(path)
        finally:
            os.umask(old)
        self.server.listen(4)
        self.clients: list[socket.socket] = []

    def serve(self) -> None:
        poll = select.poll()
        while True:
            poll = select.poll()
            poll.register(self.server, select.POLLIN)
            for c in self.clients:
                poll.register(c, select.POLLIN)
            by_fd = {k.listener: key for key, k in self.kept.items()}
            for fd in by_fd:
                poll.register(fd, 0)  # POLLHUP is always reported
            for fd, events in poll.poll(1000):
                if fd == self.server.fileno():
                    conn, _ = self.server.accept()
                    self.clients.append(conn)
                elif fd in by_fd:
                    if events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                        self._drop(by_fd[fd])
                else:
                    client = next(c for c in self.clients if c.fileno() == fd)
                    if not self._serve_one(client):
                        self.clients.remove(client)
                        client.close()
            if not self.kept and not self.clients:
                os.unlink(self.path)
                return

    def _drop(self, key: str) -> None:
        kept = self.kept.pop(key, None)
        if kept is not None:
            for fd in kept.fds:
                os.close(fd)

    def _serve_one(self, client: socket.socket) -> bool:
        try:
            got = recv_message(client)
        except (OSError, ValueError):
            return False
        if got is None:
            return False
        msg, fds = got
        op, key = msg.get("op"), str(msg.get("key"))
        if op == "put" and len(fds) == 2:
            self._drop(key)
            self.kept[key] = Kept(fds, dict(msg.get("state") or {}))
            return True
        elif op == "records" and key in self.kept:
            self.kept[key].records = list(msg.get("records") or [])
        elif op == "forget":
            self._drop(key)
        elif op == "take":
            for k, kept in self.kept.items():
                send_message(client, {"key": k, "state": kept.state, "records": kept.records},
                             kept.fds)
            send_message(client, {"op": "end"})
        for fd in fds:
            os.close(fd)
        return True


def main() -> None:
    path = sys.argv[1]
    if os.getsid(0) != os.getpid():
        os.setsid()  # outlive netstackd's session
    devnull = os.open(os.devnull, os.O_RDWR)
    for n in (0, 1):
        os.dup2(devnull, n)
    Keeper(path).serve()


if __name__ == "__main__":
    main()
