"""The directory across hosts: two netstackd sharing a real etcd (tests/helpers/cluster.py).

A service on host A reached by name from a container on host B, its disappearance when
A's netstackd dies (lease TTL) and at once on a clean stop, VIP allocation races between
the two daemons, the view resyncing after a partition and a compaction, and etcd down.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from tests.e2e.test_directory import EPOLL_FIRST
from tests.helpers.cluster import Cluster, Host
from tests.helpers.directory import line, wait_until
from tests.netns import PYTHON, ROOT

APPS = str(ROOT / "tests" / "helpers" / "dirapps.py")
TTL = 2


@pytest.fixture(scope="module")
def cl() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("needs root for namespaces")
    if not shutil.which("etcd"):
        pytest.skip("needs etcd (Debian etcd-server; scripts/setup.sh installs it)")
    c = Cluster(ttl=TTL)
    try:
        yield c
    finally:
        c.close()


def serve(h: Host, name: str, port: int, count: int = 100) -> subprocess.Popen[bytes]:
    p = h.spawn(PYTHON, APPS, "serve", str(port), str(count), "4", name=name)
    assert line(p).startswith("ready"), h.log()
    return p


def fetch(h: Host, target: str, port: int) -> dict[str, object]:
    r = h.run(PYTHON, APPS, "fetch", target, str(port))
    assert r.returncode == 0, f"{r.stdout}{r.stderr}\n{h.log()}"
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def instances(h: Host, name: str) -> int:
    return int((h.services().get(name) or {}).get("instances", 0))


def watch_line(h: Host) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(h.socket)
        s.sendall(b'{"execute": "watch"}')
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            assert chunk, "watch closed"
            data += chunk
    return dict(json.loads(data.splitlines()[0])["view"])


def test_a_service_on_one_host_is_reached_by_name_from_another(cl: Cluster) -> None:
    server = serve(cl.a, "web", 8080)
    svc = cl.b.wait_served("web")  # B learns it from etcd
    assert svc["ports"] == [8080]
    assert svc["vip"] == cl.a.services()["web"]["vip"]
    inst = [i for i in cl.a.api("list_instances")["entries"] if i["name"] == "web"][0]
    assert inst["host"] == "192.0.2.1" and 20000 <= inst["host_port"] <= 20999
    listening = cl.a.in_host("ss", "-Htln", f"sport = :{inst['host_port']}").stdout
    assert f"192.0.2.1:{inst['host_port']}" in listening
    # B's watch stream (netstack's TAP path follows it) has A's instance
    view = watch_line(cl.b)
    web = [s for s in view["services"] if s["name"] == "web"][0]  # type: ignore[attr-defined]
    assert web["instances"] == [{"port": 8080, "host": "192.0.2.1",
                                 "host_port": inst["host_port"],
                                 "labels": {"zone": "default"}, "node": "host-192.0.2.1",
                                 "local": False}]
    before = cl.b.stats()
    for target in ("web.netstack.internal", svc["vip"]):  # by name (DNS) and by VIP
        got = fetch(cl.b, target, 8080)
        assert str(got["data"]).startswith("hello "), got
        assert got["peer"] == [svc["vip"], 8080]
        text = line(server)
        assert text.startswith("accepted"), text
        # the server sees the client's host (another host's client has no container
        # address here) and its own container address
        addr, peer, sockname = json.loads(text.split(" ", 1)[1])
        assert addr[0] == peer[0] == "192.0.2.2" and sockname == ["10.0.2.100", 8080]
    after = cl.b.stats()
    assert after["bypassed_connects"] >= before["bypassed_connects"] + 1
    rows = [e for e in cl.b.api("list_services")["entries"] if e["name"] == "web"]
    assert rows[0]["instances"] == 1


def test_the_tap_path_reaches_another_hosts_service(cl: Cluster) -> None:
    """A socket already in an epoll set is not swapped: its connect is carried by
    netstack's TAP stack, which routes the VIP by the watch view (A's instance)."""
    svc = cl.b.wait_served("web")
    before = cl.b.stats()["epoll_continued"]
    r = cl.b.python(EPOLL_FIRST, svc["vip"], "8080")
    assert r.returncode == 0 and r.stdout.strip() == "hello", f"{r.stdout}{r.stderr}"
    assert cl.b.stats()["epoll_continued"] == before + 1


def test_a_connect_prefers_an_instance_on_its_own_host(cl: Cluster) -> None:
    """web served on A and on B: B's clients reach B's, A's clients A's; once B's is
    gone, B's clients reach A's."""
    cl.b.wait_served("web")
    own = cl.b.spawn(PYTHON, APPS, "serve", "8080", "3", "4", name="web")
    ready = line(own)
    assert ready.startswith("ready"), cl.b.log()
    mine = f"hello {ready.split()[1]}\n"
    wait_until(lambda: instances(cl.a, "web") == instances(cl.b, "web") == 2, 15,
               "web on both hosts")
    assert cl.b.services()["web"]["nodes"] == ["host-192.0.2.1", "host-192.0.2.2"]
    listed = [(i["node"], i["local"]) for i in cl.b.api("list_instances")["entries"]
              if i["name"] == "web"]
    assert listed == [("host-192.0.2.2", True), ("host-192.0.2.1", False)]
    for _ in range(3):
        assert fetch(cl.b, "web.netstack.internal", 8080)["data"] == mine
        assert line(own).startswith("accepted")
    theirs = fetch(cl.a, "web.netstack.internal", 8080)["data"]  # A's own instance
    assert str(theirs).startswith("hello ") and theirs != mine
    own.wait(10)  # served its three: B's instance is gone
    wait_until(lambda: instances(cl.b, "web") == 1 and instances(cl.a, "web") == 1, 10,
               "B's instance gone")
    for _ in range(2):
        assert fetch(cl.b, "web.netstack.internal", 8080)["data"] == theirs


def test_hosts_lists_the_live_daemons(cl: Cluster) -> None:
    from tests.helpers.directory import NETSTACK_RUN

    for h, other in ((cl.a, cl.b), (cl.b, cl.a)):
        wait_until(lambda h=h: len(h.api("list_hosts")["entries"]) == 2, 10, "two hosts")
        entries = h.api("list_hosts")["entries"]
        assert [(e["node"], e["addr"], e["local"]) for e in entries] == [
            (f"host-{h.addr}", h.addr, True), (f"host-{other.addr}", other.addr, False)]
        assert all(0 < e["since"] <= time.time() for e in entries)
    ctl = NETSTACK_RUN.replace("netstack-run", "netstackctl")
    r = subprocess.run([ctl, "-d", cl.b.socket, "hosts"], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 0, r.stderr
    rows = [ln.split() for ln in r.stdout.splitlines()]
    assert rows[0][:3] == ["NODE", "ADDR", "PID"]
    assert [row[:2] for row in rows[1:]] == [["host-192.0.2.2", "192.0.2.2"],
                                             ["host-192.0.2.1", "192.0.2.1"]]
    assert rows[1][-1] == "yes"
    r = subprocess.run([ctl, "-d", cl.b.socket, "instances"], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode == 0 and "host-192.0.2.1" in r.stdout, r.stderr


def test_a_connect_on_one_host_waits_for_a_listen_on_another(cl: Cluster) -> None:
    vip = cl.b.api("resolve", name="later")["vip"]
    assert cl.a.api("resolve", name="later")["vip"] == vip
    waited = cl.b.stats()["waited"]
    client = cl.b.spawn(PYTHON, APPS, "fetch", vip, "6060")
    wait_until(lambda: cl.b.stats()["waited"] > waited, 10, "B holding the connect")
    server = serve(cl.a, "later", 6060, count=1)
    out, err = client.communicate(timeout=30)
    got = json.loads(out.decode().strip().splitlines()[-1])
    assert got["peer"] == [vip, 6060] and got["data"].startswith("hello "), err
    assert line(server).startswith("accepted")


def test_vip_allocation_races_between_two_daemons(cl: Cluster) -> None:
    names = {cl.a: [f"ra{i}" for i in range(25)] + [f"rs{i}" for i in range(15)],
             cl.b: [f"rb{i}" for i in range(25)] + [f"rs{i}" for i in range(15)]}
    got: dict[Host, dict[str, str]] = {cl.a: {}, cl.b: {}}
    errors: list[BaseException] = []

    def resolve_all(h: Host) -> None:
        try:
            for n in names[h]:
                got[h][n] = h.api("resolve", name=n)["vip"]
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=resolve_all, args=(h,)) for h in (cl.a, cl.b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    shared = [f"rs{i}" for i in range(15)]
    assert all(got[cl.a][n] == got[cl.b][n] for n in shared), "one VIP per name"
    everything = {**got[cl.a], **got[cl.b]}
    assert len(set(everything.values())) == len(everything) == 65, "no VIP twice"
    # and both views agree on all of them
    wait_until(lambda: all(
        {n: s["vip"] for n, s in h.services().items() if n[0] == "r" and n[1] in "abs"}
        == everything for h in (cl.a, cl.b)), 10, "views agree")


def test_a_dead_host_s_services_vanish_with_its_lease_and_at_once_on_a_clean_stop(
        cl: Cluster) -> None:
    wait_until(lambda: instances(cl.b, "web") == 1, 10, "web on B")
    # killed: nobody revokes the lease; it expires after its TTL
    t0 = time.monotonic()
    cl.a.stop_daemon(signal.SIGKILL)
    wait_until(lambda: instances(cl.b, "web") == 0, TTL + 6, "web gone from B")
    gone_after = time.monotonic() - t0
    assert gone_after > TTL / 2, f"gone after {gone_after:.2f}s: before its lease expired?"
    print(f"\nkilled netstackd: its service left the other host's view in {gone_after:.2f}s"
          f" (TTL {TTL}s)")
    assert cl.b.services()["web"]["vip"]  # the name keeps its VIP (reserved)
    # a new netstackd takes the listener back from the keeper and publishes it again
    cl.a.start_daemon()
    wait_until(lambda: instances(cl.b, "web") == 1, 15, "web back on B")
    # a clean stop revokes the lease: gone at once
    t0 = time.monotonic()
    cl.a.stop_daemon(signal.SIGTERM)
    wait_until(lambda: instances(cl.b, "web") == 0, TTL, "web gone at once")
    print(f"clean stop: gone in {time.monotonic() - t0:.2f}s")
    cl.a.start_daemon()
    wait_until(lambda: instances(cl.b, "web") == 1, 15, "web back again")
    assert fetch(cl.b, "web.netstack.internal", 8080)["peer"]


def test_the_view_resyncs_after_a_partition_and_a_compaction(cl: Cluster) -> None:
    cl.b.wait_served("web")
    before = cl.b.stats()
    cl.link(cl.b, up=False)
    try:
        wait_until(lambda: cl.b.stats()["etcd_watch_restarts"] > before["etcd_watch_restarts"],
                   10, "B noticing the partition")
        late = serve(cl.a, "late", 9090)
        cl.a.wait_served("late")
        wait_until(lambda: cl.a.stats()["etcd_pending_writes"] == 0, 10, "A wrote")
        cl.compact()
        assert "late" not in cl.b.services()
    finally:
        cl.link(cl.b, up=True)
    svc = cl.b.wait_served("late", timeout=20)
    after = cl.b.stats()
    assert after["etcd_compacted"] > before["etcd_compacted"], (
        {k: v for k, v in after.items() if k.startswith("etcd")}, cl.b.log())
    assert after["etcd_resyncs"] > before["etcd_resyncs"]
    got = fetch(cl.b, svc["vip"], 9090)
    assert str(got["data"]).startswith("hello ")
    assert line(late).startswith("accepted")
    # B's own lease expired during the partition: A sees B's services again afterwards
    wait_until(lambda: cl.b.stats()["etcd_pending_writes"] == 0, 10, "B caught up")


def test_etcd_down_lookups_answer_from_the_view_and_registrations_retry(
        cl: Cluster) -> None:
    web = cl.b.wait_served("web")
    cl.stop_etcd()
    try:
        t0 = time.monotonic()
        assert cl.b.api("resolve", name="web")["vip"] == web["vip"]
        assert time.monotonic() - t0 < 1.0, "a lookup waited on etcd"
        got = fetch(cl.b, "web.netstack.internal", 8080)  # the view routes it
        assert str(got["data"]).startswith("hello ")
        # a service started on B now: served on B at once, published once etcd is back
        serve(cl.b, "fromb", 7070)
        cl.b.wait_served("fromb")
        wait_until(lambda: cl.b.stats()["etcd_retries"] > 0, 10, "B retrying")
        assert "fromb" not in cl.a.services()
    finally:
        cl.start_etcd()
    try:
        svc = cl.a.wait_served("fromb", timeout=30)
    except AssertionError:
        print("A:", cl.a.log()[-2500:], cl.a.stats(), "\nB:", cl.b.log()[-2500:],
              cl.b.stats())
        raise
    got = fetch(cl.a, svc["vip"], 7070)
    assert str(got["data"]).startswith("hello ")


SPREAD = """
import socket, sys, time
base, n = int(sys.argv[1]), int(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
socks = []
for i in range(n):
    s = socket.socket()
    s.bind(("0.0.0.0", base + i))
    s.listen(1)
    socks.append(s)
print("done", repr(time.time()), flush=True)
sys.stdin.readline()
"""


def test_a_thousand_services_across_hosts_are_seen_everywhere_within_2s(cl: Cluster) -> None:
    """1,000 services (20 names on 50 ports each, half of them registered on A, half on
    B, in one burst): both hosts' views hold all of them within 2 s of the last
    listen() returning."""
    per, names = 50, 10
    procs = []
    for h in (cl.a, cl.b):
        for j in range(names):
            p = subprocess.Popen(h.run_args(PYTHON, "-c", SPREAD, "31000", str(per),
                                            name=f"k{h.addr.rsplit('.', 1)[1]}x{j}"),
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
            h.procs.append(p)
            procs.append(p)
    for p in procs:
        assert line(p) == "ready"

    def total(h: Host) -> int:
        return sum(int(s["instances"]) for n, s in h.services().items() if n.startswith("k"))

    views_before = [int(h.stats()["views_sent"]) for h in (cl.a, cl.b)]
    try:
        t0 = time.time()
        for p in procs:
            _go(p)
        done = max(float(line(p, timeout=60).split()[1]) for p in procs)
        try:
            seen = wait_until(lambda: total(cl.a) == total(cl.b) == 20 * per and time.time(),
                              10, "1,000 services on both hosts")
        except AssertionError:
            raise AssertionError(f"A has {total(cl.a)}, B {total(cl.b)}; A: "
                                 f"{cl.a.stats()}\n{cl.a.log()[-2000:]}") from None
        print(f"\n1,000 services: registered in {done - t0:.2f}s, on every host "
              f"{seen - done:.2f}s after the last registration")
        assert seen - done <= 2.0, f"visible everywhere {seen - done:.2f}s after the last"
        # watchers got a view now and then, not one per change (about 1,070 on each
        # host before): each view is the whole directory (VIEW_SHARE in daemon.py)
        for h, before in zip((cl.a, cl.b), views_before, strict=True):
            sent = int(h.stats()["views_sent"]) - before
            assert 0 < sent <= 300, sent
    finally:
        for p in procs:
            _go(p)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(20)
    wait_until(lambda: total(cl.a) == total(cl.b) == 0, 20, "all of them gone again")


def _go(p: subprocess.Popen[bytes]) -> None:
    """A line on the stdin of a process that reads it (see SPREAD)."""
    with contextlib.suppress(OSError, ValueError):
        assert p.stdin is not None
        p.stdin.write(b"\n")
        p.stdin.flush()


def test_a_three_member_etcd_cluster_survives_the_loss_of_its_leader() -> None:
    if os.geteuid() != 0 or not shutil.which("etcd"):
        pytest.skip("needs root and etcd")
    c = Cluster(ttl=5, members=3)
    try:
        server = serve(c.a, "ha", 5050)
        c.b.wait_served("ha")
        leader = c.leader()
        c.members[leader].kill()
        c.members[leader].wait(10)
        t0 = time.monotonic()
        # lookups: a known name from the view at once, and traffic to it
        got = fetch(c.b, "ha.netstack.internal", 5050)
        assert str(got["data"]).startswith("hello ") and line(server).startswith("accepted")
        # registrations: a new name (a VIP claim) on B, seen on A through the others
        later = serve(c.b, "after", 5151)
        svc = c.a.wait_served("after", timeout=20)
        print(f"\netcd leader (member {leader}) killed: a new registration on B reached A "
              f"after {time.monotonic() - t0:.2f}s")
        assert c.b.api("resolve", name="after")["vip"] == svc["vip"]
        got = fetch(c.a, svc["vip"], 5151)
        assert str(got["data"]).startswith("hello ") and line(later).startswith("accepted")
        assert c.leader() != leader
        assert c.a.api("resolve", name="fresh")["vip"] == c.b.api("resolve",
                                                                  name="fresh")["vip"]
        # the leases lived on: A's service never left B's view
        assert instances(c.b, "ha") == 1 and c.a.stats()["etcd_lease_lost"] == 0
    finally:
        c.close()


def test_etcd_over_tls_with_client_certificates() -> None:
    if os.geteuid() != 0 or not shutil.which("etcd") or not shutil.which("openssl"):
        pytest.skip("needs root, etcd and openssl")
    c = Cluster(ttl=TTL, tls=True)
    try:
        server = serve(c.a, "secure", 4433)
        svc = c.b.wait_served("secure")
        got = fetch(c.b, "secure.netstack.internal", 4433)
        assert got["peer"] == [svc["vip"], 4433]
        assert str(got["data"]).startswith("hello ")
        assert line(server).startswith("accepted")
    finally:
        c.close()
