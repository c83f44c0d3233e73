"""The OCI runtime-spec seccomp agent protocol (`linux.seccomp.listenerPath`).

A runtime (runc, crun, or netstack-run) connects, sends one ContainerProcessState as
JSON with the listener among SCM_RIGHTS fds (index i named by `fds[i]`), and closes.
The payload may span several messages (only the first carries fds): read to EOF.
runc sends compact JSON, crun pretty-printed with ociVersion "0.2.0"; both parse here.
"""

from __future__ import annotations

import array
import json
import os
import socket
from dataclasses import dataclass, field

from netstack.directory.registry import parse_labels

MAX_STATE = 1 << 20  # annotations can be large (podman, Kubernetes)
MAX_FDS = 16
ANNOTATION_NAME = "io.netstack.name"
ANNOTATION_LABELS = "io.netstack.labels"  # k=v;k2=v2 (or commas, where they survive)
ANNOTATION_LABEL_PREFIX = "io.netstack.label."  # io.netstack.label.K=V, one per label
ANNOTATION_HOST_LOOPBACK = "io.netstack.host-loopback"
ANNOTATION_CIDR = "io.netstack.cidr"
ANNOTATION_IPV6 = "io.netstack.ipv6"


class BadState(Exception):
    pass


@dataclass
class ContainerState:
    """What the agent needs from one ContainerProcessState."""

    listener: int
    pid: int
    container: str
    name: str | None
    labels: dict[str, str]
    host_loopback: bool = False  # podman's default (allow_host_loopback=false)
    cidr: str = "10.0.2.0/24"
    ipv6: bool = False
    annotations: dict[str, str] = field(default_factory=dict)


def receive(conn: socket.socket) -> tuple[bytes, list[int]]:
    """Everything one runtime connection sends: the payload and the fds it carried."""
    payload = bytearray()
    fds: list[int] = []
    cmsg_space = socket.CMSG_SPACE(MAX_FDS * 4)
    try:
        while True:
            data, ancdata, flags, _ = conn.recvmsg(65536, cmsg_space, socket.MSG_CMSG_CLOEXEC)
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    got = array.array("i")
                    got.frombytes(cdata[: len(cdata) - len(cdata) % 4])
                    fds.extend(got)
            if flags & socket.MSG_CTRUNC:
                raise BadState("too many fds")
            if not data:
                break
            payload += data
            if len(payload) > MAX_STATE:
                raise BadState("state too large")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return bytes(payload), fds


def parse(payload: bytes, fds: list[int]) -> ContainerState:
    """The listener and the container's identity; closes the fds it does not keep."""
    keep = -1
    try:
        try:
            msg = json.loads(payload)
        except (ValueError, RecursionError) as e:
            raise BadState(f"bad JSON: {e}") from None
        if not isinstance(msg, dict):
            raise BadState("state is not an object")
        names = msg.get("fds")
        if not isinstance(names, list) or len(names) != len(fds):
            raise BadState(f"fds names {names!r} do not match {len(fds)} fds received")
        if names.count("seccompFd") != 1:
            raise BadState("no single seccompFd")
        keep = fds[names.index("seccompFd")]
        state = msg.get("state") or {}
        if not isinstance(state, dict):
            raise BadState("state.state is not an object")
        pid = msg.get("pid") or state.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            raise BadState("no pid")
        annotations = state.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise BadState("annotations is not an object")
        annotations = {str(k): str(v) for k, v in annotations.items()}
        try:
            labels = parse_labels(annotations.get(ANNOTATION_LABELS, ""))
            for key, value in annotations.items():  # one annotation per label, too
                if key.startswith(ANNOTATION_LABEL_PREFIX):
                    labels.update(parse_labels(f"{key[len(ANNOTATION_LABEL_PREFIX):]}={value}"))
        except ValueError as e:
            raise BadState(str(e)) from None
        result = ContainerState(
            listener=keep,
            pid=pid,
            container=str(state.get("id") or f"pid-{pid}"),
            name=annotations.get(ANNOTATION_NAME) or None,
            labels=labels,
            host_loopback=annotations.get(ANNOTATION_HOST_LOOPBACK, "false") == "true",
            cidr=annotations.get(ANNOTATION_CIDR, "10.0.2.0/24"),
            ipv6=annotations.get(ANNOTATION_IPV6, "false") == "true",
            annotations=annotations,
        )
    except BaseException:
        keep = -1
        raise
    finally:
        for fd in fds:
            if fd != keep:
                os.close(fd)
    return result


def send(path: str, listener: int, pid: int, container: str,
         annotations: dict[str, str]) -> None:
    """The runtime side, as runc does it: one sendmsg with the fd, then close."""
    state = {
        "ociVersion": "1.0.2",
        "fds": ["seccompFd"],
        "pid": pid,
        "metadata": "",
        "state": {"ociVersion": "1.0.2", "id": container, "status": "creating", "pid": pid,
                  "bundle": "", "annotations": annotations},
    }
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendmsg([json.dumps(state).encode()],
                  [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [listener]))])
