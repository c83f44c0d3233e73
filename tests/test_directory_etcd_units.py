"""EtcdStore against a fake etcd: the key layout, VIP claims and races, instances of
other hosts in the view, leases, watch resync after compaction, etcd away."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from netstack.directory import etcd
from netstack.directory.etcdkeys import Keys, instance_value, parse_instance
from netstack.directory.etcdstore import EtcdStore
from netstack.directory.registry import Directory
from netstack.directory.store import Instance, MemoryStore
from tests.helpers.fake_etcd import FakeClient, FakeEtcd

V4, V6 = "198.18.0.0/16", "fd4e:5344::/64"


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


async def until(predicate: Callable[[], object], what: str = "", timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what}")
        await asyncio.sleep(0.01)


def store(server: FakeEtcd, node: str, **kw: Any) -> EtcdStore:
    kw.setdefault("host_info", {"addr": {"A": "192.0.2.1", "B": "192.0.2.2"}.get(node, ""),
                                "pid": 1})
    return EtcdStore(FakeClient(server), V4, V6, node, **kw)


def inst(name: str, cookie: int, port: int = 80, host: str = "192.0.2.1") -> Instance:
    return Instance(name=name, port=port, host=host, host_port=40000 + cookie,
                    labels={"zone": "a"}, owner=1000, container=f"c{cookie}", pid=cookie,
                    cookie=cookie, since=1.0)


def vip(rec: Any) -> str:
    return str(ipaddress.IPv4Address(rec.vip))


def test_key_layout() -> None:
    k = Keys("/ns")
    assert k.name("web") == b"/ns/name/web"
    assert k.vip(7) == b"/ns/vip/7"
    assert k.instance("web", "hostA", 42) == b"/ns/inst/web/hostA/42"
    assert k.host("hostA") == b"/ns/host/hostA"
    assert k.parse(b"/ns/inst/web/hostA/42") == ("inst", "web", "hostA", "42")
    assert k.parse(b"/ns/name/a.b") == ("name", "a.b")
    assert k.parse(b"/ns/inst/web") is None and k.parse(b"/other/name/x") is None
    assert etcd.prefix_end(b"/ns/") == b"/ns0" and etcd.prefix_end(b"\xff") == b"\0"
    assert etcd.parse_endpoints("etcd://10.0.0.1:2379, h2:2380") == ["10.0.0.1:2379",
                                                                      "h2:2380"]
    with pytest.raises(ValueError):
        etcd.parse_endpoints("etcd://nohost")
    i = inst("web", 5)
    back = parse_instance(instance_value(i, "hostA"))
    assert back.node == "hostA" and back.cookie == 5 and back.labels == {"zone": "a"}
    assert (back.host, back.host_port, back.port) == (i.host, i.host_port, i.port)


def test_directory_logic_is_the_same_on_both_stores() -> None:
    async def main() -> None:
        server = FakeEtcd()
        for s in (MemoryStore(V4, V6), store(server, "a")):
            await s.start()
            d = Directory(s)
            rec = await d.settle("web", time.time())
            assert rec is not None and vip(rec) == "198.18.0.1"
            d.register(inst("web", 1), time.time())
            assert d.pick(rec.vip, 80, {"zone": "a"}).cookie == 1  # type: ignore[union-attr]
            assert d.unregister(1, time.time()) is not None
            d.expire(time.time() + 61)
            assert s.name("web") is None
            await s.close()

    run(main())


def test_two_hosts_share_names_and_instances() -> None:
    async def main() -> None:
        server = FakeEtcd()
        a, b = store(server, "A"), store(server, "B")
        await a.start()
        await b.start()
        da, db = Directory(a), Directory(b)
        seen: list[int] = []
        db.changed.append(lambda: seen.append(1))
        ra = await da.settle("web", time.time())
        assert ra is not None
        da.register(inst("web", 7, port=8080), time.time())
        await until(lambda: b.name("web") and b.name("web").instances, "web on B")  # type: ignore[union-attr]
        rb = b.name("web")
        assert rb is not None and rb.vip == ra.vip and rb.owner == 1000
        remote = rb.instances[0]
        assert remote.node == "A" and remote.host_port == 40007
        assert db.pick(rb.vip, 8080, {"zone": "a"}) is remote
        assert seen, "B's directory was told"
        assert db.view()["services"][0]["instances"][0]["host"] == "192.0.2.1"  # type: ignore[index]
        # an instance of the same name on B: both serve it, each sees both
        db.register(inst("web", 9, port=8080, host="192.0.2.2"), time.time())
        await until(lambda: len(a.name("web").instances) == 2, "two on A")  # type: ignore[union-attr]
        da.unregister(7, time.time())
        await until(lambda: len(b.name("web").instances) == 1, "one on B")  # type: ignore[union-attr]
        assert b.name("web").instances[0].node == ""  # type: ignore[union-attr]
        # the live daemons, from their host keys: each lists itself first
        await until(lambda: len(a.hosts()) == 2 and len(b.hosts()) == 2, "hosts")
        assert [(h["node"], h["local"]) for h in a.hosts()] == [("A", True), ("B", False)]
        assert [(h["node"], h["local"]) for h in b.hosts()] == [("B", True), ("A", False)]
        assert b.hosts()[1]["addr"] == "192.0.2.1" and float(b.hosts()[1]["since"]) > 0  # type: ignore[arg-type]
        await a.close()
        await until(lambda: [h["node"] for h in b.hosts()] == ["B"], "A gone from B's hosts")
        await b.close()

    run(main())


def test_vip_races_never_give_one_vip_twice() -> None:
    async def main() -> None:
        server = FakeEtcd()
        stores = [store(server, n) for n in "ABC"]
        for s in stores:
            await s.start()
        now = time.time()
        # all at once, before any watch event: the same indices are tried by everyone
        for n, s in enumerate(stores):
            for i in range(10):
                s.reserve(f"n{n}-{i}", now + 60)
            s.reserve("shared", now + 60)
        for s in stores:
            for rec in list(s.records()):
                assert await s.settle(rec.name, 5) is not None
        await until(lambda: all(len(s.records()) == 31 for s in stores), "all names")
        views = [{r.name: r.vip for r in s.records()} for s in stores]
        assert views[0] == views[1] == views[2]
        assert len(set(views[0].values())) == 31, "no VIP twice"
        vips = {k: e.value for k, e in server.kv.items() if b"/vip/" in k}
        assert len(vips) == 31 and len(set(vips.values())) == 31
        assert sum(s.stats["etcd_claim_conflicts"] for s in stores) > 0
        for s in stores:
            await s.close()

    run(main())


def test_a_dead_hosts_instances_go_with_its_lease_and_a_lost_lease_republishes() -> None:
    async def main() -> None:
        server = FakeEtcd()
        a, b = store(server, "A"), store(server, "B")
        await a.start()
        await b.start()
        da = Directory(a)
        da.register(inst("web", 3), time.time())
        await until(lambda: b.name("web") and b.name("web").instances, "web on B")  # type: ignore[union-attr]
        server.expire(a._lease)  # A stalls past its TTL
        await until(lambda: not b.name("web").instances, "gone on B")  # type: ignore[union-attr]
        # A is alive though: a new lease, its instance published again
        await until(lambda: b.name("web").instances, "back on B")  # type: ignore[union-attr]
        assert a.stats["etcd_lease_lost"] == 1 and a.stats["etcd_leases"] == 2
        # a clean stop revokes the lease: at once
        await a.close()
        await until(lambda: not b.name("web").instances, "gone at once")  # type: ignore[union-attr]
        # the name keeps its VIP for the reservation, then any daemon drops it
        rec = b.name("web")
        assert rec is not None
        Directory(b).expire(rec.expires + 1)
        await until(lambda: not any(b"/name/web" in k for k in server.kv), "name dropped")
        assert not any(b"/vip/" in k for k in server.kv)
        await b.close()

    run(main())


def test_the_view_resyncs_after_compaction_and_outages() -> None:
    async def main() -> None:
        server = FakeEtcd()
        a, b = store(server, "A"), store(server, "B")
        await a.start()
        await b.start()
        da, db = Directory(a), Directory(b)
        da.register(inst("old", 1), time.time())
        await until(lambda: b.name("old") and b.name("old").instances, "old on B")  # type: ignore[union-attr]
        # B's stream breaks; meanwhile A changes things and etcd compacts
        b_watch = b._tasks[1]
        b._tasks[1].cancel()
        with pytest.raises(asyncio.CancelledError):
            await b_watch
        da.unregister(1, time.time())
        da.register(inst("new", 2), time.time())
        await until(lambda: not a._ops, "A wrote")
        server.compact()
        b._tasks[1] = asyncio.get_running_loop().create_task(b._watch_loop())
        await until(lambda: b.name("new") and b.name("new").instances, "new on B")  # type: ignore[union-attr]
        assert not b.name("old").instances  # type: ignore[union-attr]
        assert b.stats["etcd_compacted"] == 1 and b.stats["etcd_resyncs"] >= 2
        # etcd away: lookups answer from the view; registrations wait and then go
        server.up = False
        server.break_streams()
        rec = b.name("new")
        assert rec is not None and db.pick(rec.vip, 80, {"zone": "a"}) is not None
        db.register(inst("late", 4, host="192.0.2.2"), time.time())
        await asyncio.sleep(0.3)
        assert b.stats["etcd_retries"] > 0 and b._ops
        server.up = True
        await until(lambda: a.name("late") and a.name("late").instances, "late on A")  # type: ignore[union-attr]
        await a.close()
        await b.close()

    run(main())


def test_a_name_deleted_under_a_live_instance_is_claimed_again() -> None:
    async def main() -> None:
        server = FakeEtcd()
        a = store(server, "A")
        await a.start()
        Directory(a).register(inst("web", 1), time.time())
        await until(lambda: not a._ops and a.view.stored.get("web"), "written")
        client = FakeClient(server)
        await client.txn([], [("delete", b"/netstack/v1/name/web"),
                              ("delete", b"/netstack/v1/vip/1")])
        await until(lambda: any(k.endswith(b"/name/web") for k in server.kv), "claimed again")
        await until(lambda: not a._ops, "written again")
        assert any(b"/inst/web/A/1" in k for k in server.kv)
        await a.close()

    run(main())



def test_a_remote_instance_on_loopback_is_not_taken() -> None:
    async def main() -> None:
        server = FakeEtcd()
        a, b = store(server, "A"), store(server, "B")
        await a.start()
        await b.start()
        Directory(a).register(inst("lo", 1, host="127.0.0.1"), time.time())
        Directory(a).register(inst("ok", 2, host="192.0.2.1"), time.time())
        await until(lambda: b.name("ok") and b.name("ok").instances, "ok on B")  # type: ignore[union-attr]
        rec = b.name("lo")
        assert rec is not None and rec.instances == []  # its VIP, but nothing to reach
        await a.close()
        await b.close()

    run(main())


def test_published_ports_come_from_the_range_and_peers_from_here() -> None:
    import errno
    import socket

    from netstack.directory import publish

    with socket.socket() as probe:  # a port free right now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with socket.socket() as first, socket.socket() as second:
        publish.bind(first, "127.0.0.1", (port, port))
        assert first.getsockname()[1] == port
        with pytest.raises(OSError) as e:  # the range is used up
            publish.bind(second, "127.0.0.1", (port, port))
        assert e.value.errno == errno.EADDRINUSE
    with socket.socket(socket.AF_INET6) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        publish.bind(s, "127.0.0.1", None)
        assert s.getsockname()[0] == "::ffff:127.0.0.1"
    assert publish.from_here("127.0.0.1", "192.0.2.1")
    assert publish.from_here("::ffff:192.0.2.1", "192.0.2.1")
    assert not publish.from_here("192.0.2.2", "192.0.2.1")
    assert not publish.from_here("::ffff:192.0.2.2", "192.0.2.1")


def test_churn_while_etcd_is_away_does_not_pile_up_writes() -> None:
    async def main() -> None:
        server = FakeEtcd()
        a, b = store(server, "A"), store(server, "B")
        await a.start()
        await b.start()
        da = Directory(a)
        da.register(inst("web", 1), time.time())
        await until(lambda: b.name("web") and b.name("web").instances, "web on B")  # type: ignore[union-attr]
        server.up = False
        server.break_streams()
        for cookie in range(100, 300):
            da.register(inst("web", cookie), time.time())
            da.unregister(cookie, time.time())
        da.unregister(1, time.time())
        da.register(inst("web", 7), time.time())
        assert len(a._ops) <= 3, a._ops
        server.up = True
        await until(lambda: [i.cookie for i in b.name("web").instances] == [7],  # type: ignore[union-attr]
                    "only 7 on B")
        await a.close()
        await b.close()

    run(main())


def test_a_burst_of_registrations_goes_to_etcd_in_few_transactions() -> None:
    async def main() -> None:
        server = FakeEtcd()
        a, b = store(server, "A"), store(server, "B")
        await a.start()
        await b.start()
        d = Directory(a)
        now = time.time()
        for name in ("web", "db"):
            assert await d.settle(name, now) is not None
        for c in range(1, 201):
            d.register(inst("web" if c % 2 else "db", c, port=c), now)
        await until(lambda: all(len(getattr(b.name(n), "instances", ())) == 100
                                for n in ("web", "db")), "all 200 on B")
        assert a.stats["etcd_writes"] >= 200
        assert 2 <= a.stats["etcd_batches"] <= 10, a.stats  # (BATCH_OPS a transaction)
        assert sum(1 for k in server.kv if b"/inst/" in k) == 200
        await a.close()
        await b.close()

    run(main())
