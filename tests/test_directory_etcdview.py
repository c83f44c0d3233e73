"""EtcdView without etcd: key events and full reads in, lookups and the writes it asks
the store for out (the store around it: tests/test_directory_etcd_units.py)."""

from __future__ import annotations

import ipaddress
import json

from netstack.directory import etcd
from netstack.directory.etcdkeys import Keys, instance_value
from netstack.directory.etcdview import EtcdView
from tests.test_directory_etcd_units import V4, V6, inst, vip

KEYS = Keys()
NOW = 1000.0


def view(node: str = "A") -> EtcdView:
    return EtcdView(ipaddress.IPv4Network(V4), ipaddress.IPv6Network(V6), node, KEYS, 60.0)


def name_kv(name: str, index: int, revision: int = 1) -> etcd.KV:
    value = json.dumps({"vip": index, "owner": 1000, "expires": 50.0}).encode()
    return etcd.KV(KEYS.name(name), value, revision)


def instance_kv(name: str, node: str, cookie: int) -> etcd.KV:
    value = instance_value(inst(name, cookie, host="192.0.2.2"), node)
    return etcd.KV(KEYS.instance(name, node, cookie), value)


def host_kv(node: str) -> etcd.KV:
    value = json.dumps({"addr": "192.0.2.2", "pid": 7, "since": 5.0}).encode()
    return etcd.KV(KEYS.host(node), value)


def put(kv: etcd.KV) -> etcd.Event:
    return etcd.Event("put", kv)


def delete(key: bytes) -> etcd.Event:
    return etcd.Event("delete", etcd.KV(key, b""))


def test_names_instances_and_hosts_come_and_go_with_their_keys() -> None:
    v = view()
    assert v.apply(put(name_kv("web", 3, revision=9)), NOW) == []
    rec = v.name("web")
    assert rec is not None and vip(rec) == "198.18.0.3" and rec.owner == 1000
    assert rec.expires == 50.0 and v.stored["web"] == (9, 50.0) and v.records() == [rec]
    assert v.apply(put(instance_kv("web", "B", 7)), NOW) == []
    [remote] = rec.instances
    assert (remote.node, remote.host, remote.host_port) == ("B", "192.0.2.2", 40007)
    v.apply(put(host_kv("B")), NOW)
    assert v.hosts == {"B": {"addr": "192.0.2.2", "pid": 7, "since": 5.0}}
    # its last instance gone: the name keeps its VIP for the reservation, from now on
    assert v.apply(delete(KEYS.instance("web", "B", 7)), NOW) == []
    assert rec.instances == [] and rec.expires == NOW + 60.0
    v.apply(delete(KEYS.host("B")), NOW)
    assert v.hosts == {}
    assert v.apply(delete(KEYS.name("web")), NOW) == []
    assert v.name("web") is None and v.by_vip(rec.vip) is None and v.records() == []
    # our own instance keys and keys outside the layout change nothing
    assert v.apply(put(instance_kv("web", "A", 1)), NOW) == []
    assert v.apply(put(etcd.KV(KEYS.prefix + b"other/x", b"{}")), NOW) == []
    assert v.remote == {} and v.names == {}


def test_a_bad_record_and_a_vip_outside_the_block_are_ignored() -> None:
    v = view()
    v.apply(put(etcd.KV(KEYS.name("bad"), b"not json")), NOW)
    v.apply(put(etcd.KV(KEYS.name("novip"), b'{"owner": 1}')), NOW)
    v.apply(put(name_kv("zero", 0)), NOW)
    v.apply(put(name_kv("beyond", v.capacity + 1)), NOW)
    assert v.records() == [] and v.index == {}
    v.apply(put(name_kv("last", v.capacity)), NOW)  # the block's last VIP is fine
    rec = v.name("last")
    assert rec is not None and vip(rec) == "198.18.255.254"
    v.apply(put(etcd.KV(KEYS.instance("last", "B", 1), b'{"name": "last"}')), NOW)
    v.apply(put(etcd.KV(KEYS.host("B"), b"[1, 2]")), NOW)
    assert rec.instances == [] and v.remote == {} and v.hosts == {}


def test_a_tentative_vip_is_given_up_when_another_names_record_takes_its_index() -> None:
    v = view()
    mine = v.reserve("mine", 10.0)
    assert vip(mine) == "198.18.0.1" and v.pending == {"mine"}
    # another daemon's name got index 1 first: ours tries the next free one
    assert v.apply(put(name_kv("theirs", 1)), NOW) == []
    theirs = v.name("theirs")
    assert theirs is not None and vip(theirs) == "198.18.0.1"
    assert vip(mine) == "198.18.0.2" and v.pending == {"mine"}
    assert v.by_vip(theirs.vip) is theirs and v.by_vip(mine.vip) is mine
    assert v.by_vip(theirs.vip6) is theirs and v.by_vip(mine.vip6) is mine
    # etcd agrees on ours: no longer tentative
    v.apply(put(name_kv("mine", 2)), NOW)
    assert v.pending == set() and vip(mine) == "198.18.0.2"


def test_a_full_read_replaces_the_view() -> None:
    v = view()
    for kv in (name_kv("web", 1), name_kv("old", 2), instance_kv("old", "B", 3), host_kv("B")):
        v.apply(put(kv), NOW)
    old = v.name("old")
    assert old is not None and old.instances
    local, lost = inst("web", 1), inst("web", 2)
    v.local[KEYS.instance("web", "A", 1)] = local
    v.local[KEYS.instance("web", "A", 2)] = lost
    read = [
        name_kv("web", 1, revision=20),
        instance_kv("web", "A", 1),
        instance_kv("web", "C", 4),
        host_kv("C"),
    ]
    writes, ours = v.rebuild(read, NOW, leased=False)
    assert writes == [] and ours == {KEYS.instance("web", "A", 1)}
    assert v.name("old") is None and v.by_vip(old.vip) is None and v.by_vip(old.vip6) is None
    web = v.name("web")
    assert web is not None and v.records() == [web] and v.stored == {"web": (20, 50.0)}
    assert [i.node for i in web.instances] == ["", "", "C"]  # ours first
    assert list(v.hosts) == ["C"]
    # with a lease: ours that etcd does not have are written again
    writes, _ = v.rebuild(read, NOW, leased=True)
    assert writes == [("put", KEYS.instance("web", "A", 2), lost)]


def test_a_name_deleted_under_a_live_local_instance_is_claimed_again() -> None:
    v = view()
    key = KEYS.instance("web", "A", 1)
    local = inst("web", 1)
    v.local[key] = local
    v.apply(put(name_kv("web", 4)), NOW)
    rec = v.name("web")
    assert rec is not None and rec.instances == [local]
    assert v.apply(delete(KEYS.name("web")), NOW) == [("claim", "web"), ("put", key, local)]
    assert v.name("web") is rec and vip(rec) == "198.18.0.4" and v.by_vip(rec.vip) is rec
    assert v.pending == {"web"} and "web" not in v.stored
    assert v.apply(delete(KEYS.name("web")), NOW) == []  # its claim is queued already
    # the same from a full read that lacks the name
    v2 = view()
    v2.local[key] = local
    v2.apply(put(name_kv("web", 4)), NOW)
    writes, _ = v2.rebuild([], NOW, leased=False)
    assert writes == [("claim", "web"), ("put", key, local)] and v2.name("web") is not None


def test_by_vip_answers_for_the_ipv4_and_the_ipv6_vip() -> None:
    v = view()
    v.apply(put(name_kv("web", 5)), NOW)
    rec = v.name("web")
    assert rec is not None
    v4, v6 = (
        ipaddress.IPv4Address("198.18.0.5").packed,
        ipaddress.IPv6Address("fd4e:5344::5").packed,
    )
    assert (rec.vip, rec.vip6) == (v4, v6)
    assert v.by_vip(v4) is rec and v.by_vip(v6) is rec
    assert v.by_vip(ipaddress.IPv4Address("198.18.0.6").packed) is None
    # another VIP for the name (etcd says so): the old ones answer no more
    v.apply(put(name_kv("web", 6, revision=2)), NOW)
    assert v.by_vip(v4) is None and v.by_vip(v6) is None
    assert v.by_vip(ipaddress.IPv4Address("198.18.0.6").packed) is rec
    assert v.by_vip(ipaddress.IPv6Address("fd4e:5344::6").packed) is rec
