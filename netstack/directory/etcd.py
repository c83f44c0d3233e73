"""A small etcd v3 client for netstackd: the few calls EtcdStore makes, over grpc.aio.

It speaks the v3 gRPC API with the message classes and stubs aetcd generated (aetcd's
own Client has no TLS and opens a keep-alive stream per refresh; netstackd wants one
lease kept alive on one stream). Compares and operations are plain tuples, so a fake
(tests/helpers/fake_etcd.py) can stand in for etcd in unit tests:

    compares:   ("create" | "version" | "mod", key, "==" | "!=" | ">" | "<", int)
    operations: ("put", key, value, lease) | ("delete", key) | ("get", key)

Every failure to reach etcd (refused, timed out, a broken stream) is `Unavailable`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from netstack.log import get_logger

log = get_logger("netstackd.etcd")

CALL_TIMEOUT_S = 3.0

Compare = tuple[str, bytes, str, int]
Op = tuple[Any, ...]


@dataclass(frozen=True)
class KV:
    key: bytes
    value: bytes
    mod_revision: int = 0
    lease: int = 0


@dataclass(frozen=True)
class Event:
    kind: str  # "put" or "delete"
    kv: KV


class Unavailable(Exception):
    """etcd did not answer (down, unreachable, the stream broke)."""


class Compacted(Exception):
    """A watch asked for history etcd has compacted away: read everything again."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"compacted at revision {revision}")
        self.revision = revision


class LeaseLost(Exception):
    """The lease expired (or was revoked): its keys are gone."""


class Client(Protocol):
    async def reconnect(self) -> None:
        """Drop the connection (every stream on it fails) and use the next endpoint."""
        ...

    async def close(self) -> None: ...

    async def grant(self, ttl: int) -> int: ...

    async def revoke(self, lease: int) -> None: ...

    async def keepalive(self, lease: int, interval: float) -> None:
        """Keep lease alive on one stream until something fails (never returns)."""
        ...

    async def get_prefix(self, prefix: bytes) -> tuple[int, list[KV]]:
        """(the store's revision, every key under prefix)."""
        ...

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op],
                  failure: Sequence[Op] = ()) -> tuple[bool, list[KV]]:
        """(succeeded, what the branch's "get" operations found)."""
        ...

    def watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[tuple[int, list[Event]]]:
        """(revision, events) for every change under prefix from start_revision on."""
        ...


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes [prefix, end) every key starting with prefix."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def parse_endpoints(text: str) -> list[str]:
    """`etcd://h1:2379,h2:2379` (or without the scheme) -> ["h1:2379", "h2:2379"]."""
    if text.startswith("etcd://"):
        text = text[len("etcd://"):]
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad etcd endpoint {part!r} (want HOST:PORT)")
        out.append(part)
    if not out:
        raise ValueError("no etcd endpoint")
    return out


def _cancelled_by_channel() -> bool:
    """A CancelledError that comes from our own reconnect (grpc.aio cancels the calls of
    a closed channel), not from cancelling the task that waits."""
    task = asyncio.current_task()
    return task is None or not task.cancelling()


class GrpcClient:
    """The real one: grpc.aio, plaintext or TLS with a client certificate."""

    def __init__(self, endpoints: list[str], cacert: str | None = None,
                 cert: str | None = None, key: str | None = None) -> None:
        import grpc  # imported here: only --store etcd needs grpcio and aetcd
        from aetcd import rpc

        self._grpc = grpc
        self._rpc = rpc
        self.endpoints = endpoints
        self._next = 0
        self._credentials = None
        if cacert or cert or key:
            def read(path: str | None) -> bytes | None:
                if path is None:
                    return None
                with open(path, "rb") as f:
                    return f.read()
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=read(cacert), private_key=read(key),
                certificate_chain=read(cert))
        self._channel: Any = None  # opened in the running loop (grpc.aio binds to it)

    def _open(self) -> None:
        target = self.endpoints[self._next % len(self.endpoints)]
        self._next += 1
        options = [("grpc.initial_reconnect_backoff_ms", 200),
                   ("grpc.min_reconnect_backoff_ms", 200),
                   ("grpc.max_reconnect_backoff_ms", 1000)]
        if self._credentials is not None:
            self._channel = self._grpc.aio.secure_channel(target, self._credentials, options)
        else:
            self._channel = self._grpc.aio.insecure_channel(target, options)
        self.kv = self._rpc.KVStub(self._channel)
        self.lease = self._rpc.LeaseStub(self._channel)
        self.watcher = self._rpc.WatchStub(self._channel)
        log.debug("etcd: using %s", target)

    async def reconnect(self) -> None:
        old, self._channel = self._channel, None  # the next call opens the next endpoint
        if old is not None:
            await old.close()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def _ready(self) -> None:
        if self._channel is None:
            self._open()

    async def _call(self, name: str, fn: str, request: Any) -> Any:
        self._ready()
        try:
            return await getattr(getattr(self, name), fn)(request, timeout=CALL_TIMEOUT_S)
        except self._grpc.RpcError as e:
            raise Unavailable(str(e.code() if hasattr(e, "code") else e)) from None
        except asyncio.CancelledError:
            if _cancelled_by_channel():
                raise Unavailable("channel closed") from None
            raise

    async def grant(self, ttl: int) -> int:
        resp = await self._call("lease", "LeaseGrant", self._rpc.LeaseGrantRequest(TTL=ttl))
        return int(resp.ID)

    async def revoke(self, lease: int) -> None:
        try:
            await self._call("lease", "LeaseRevoke", self._rpc.LeaseRevokeRequest(ID=lease))
        except Unavailable as e:
            if "NOT_FOUND" not in str(e):
                raise

    async def keepalive(self, lease: int, interval: float) -> None:
        self._ready()
        call = self.lease.LeaseKeepAlive()
        try:
            while True:
                await asyncio.wait_for(call.write(self._rpc.LeaseKeepAliveRequest(ID=lease)),
                                       interval)
                resp = await asyncio.wait_for(call.read(), interval)
                if resp is self._grpc.aio.EOF:
                    raise Unavailable("keep-alive stream ended")
                if resp.TTL <= 0:
                    raise LeaseLost(f"lease {lease:x}")
                await asyncio.sleep(interval)
        except (self._grpc.RpcError, TimeoutError, asyncio.InvalidStateError) as e:
            raise Unavailable(f"keep-alive: {e!r}") from None
        except asyncio.CancelledError:
            if _cancelled_by_channel():
                raise Unavailable("keep-alive: channel closed") from None
            raise
        finally:
            call.cancel()

    async def get_prefix(self, prefix: bytes) -> tuple[int, list[KV]]:
        resp = await self._call("kv", "Range", self._rpc.RangeRequest(
            key=prefix, range_end=prefix_end(prefix)))
        return int(resp.header.revision), [self._kv(kv) for kv in resp.kvs]

    def _kv(self, kv: Any) -> KV:
        return KV(bytes(kv.key), bytes(kv.value), int(kv.mod_revision), int(kv.lease))

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op],
                  failure: Sequence[Op] = ()) -> tuple[bool, list[KV]]:
        rpc = self._rpc
        targets = {"create": (rpc.Compare.CREATE, "create_revision"),
                   "version": (rpc.Compare.VERSION, "version"),
                   "mod": (rpc.Compare.MOD, "mod_revision")}
        results = {"==": rpc.Compare.EQUAL, "!=": rpc.Compare.NOT_EQUAL,
                   ">": rpc.Compare.GREATER, "<": rpc.Compare.LESS}
        compares = []
        for what, key, op, value in compare:
            target, field = targets[what]
            compares.append(rpc.Compare(key=key, target=target, result=results[op],
                                        **{field: value}))

        def request(op: Op) -> Any:
            if op[0] == "put":
                return rpc.RequestOp(request_put=rpc.PutRequest(key=op[1], value=op[2],
                                                                lease=op[3]))
            if op[0] == "delete":
                return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=op[1]))
            return rpc.RequestOp(request_range=rpc.RangeRequest(key=op[1]))

        resp = await self._call("kv", "Txn", rpc.TxnRequest(
            compare=compares, success=[request(o) for o in success],
            failure=[request(o) for o in failure]))
        found = [self._kv(kv) for r in resp.responses
                 if r.WhichOneof("response") == "response_range" for kv in r.response_range.kvs]
        return bool(resp.succeeded), found

    async def watch(self, prefix: bytes,
                    start_revision: int) -> AsyncIterator[tuple[int, list[Event]]]:
        rpc = self._rpc
        self._ready()
        call = self.watcher.Watch()
        try:
            # the creation is answered at once, or the stream is no good (etcd still
            # starting, a half-open connection): bounded like any call
            await asyncio.wait_for(call.write(rpc.WatchRequest(
                create_request=rpc.WatchCreateRequest(
                    key=prefix, range_end=prefix_end(prefix),
                    start_revision=start_revision))), CALL_TIMEOUT_S)
            created = False
            while True:
                if created:
                    resp = await call.read()
                else:
                    resp = await asyncio.wait_for(call.read(), CALL_TIMEOUT_S)
                    created = True
                if resp is self._grpc.aio.EOF:
                    raise Unavailable("watch stream ended")
                if resp.compact_revision:
                    raise Compacted(int(resp.compact_revision))
                if resp.canceled:
                    raise Unavailable(f"watch canceled: {resp.cancel_reason}")
                if resp.created and not resp.events:
                    yield int(resp.header.revision), []
                    continue
                events = [Event("put" if e.type == rpc.Event.PUT else "delete", self._kv(e.kv))
                          for e in resp.events]
                yield int(resp.header.revision), events
        except (self._grpc.RpcError, asyncio.InvalidStateError, TimeoutError) as e:
            raise Unavailable(f"watch: {e!r}") from None
        except asyncio.CancelledError:
            if _cancelled_by_channel():
                raise Unavailable("watch: channel closed") from None
            raise
        finally:
            call.cancel()
