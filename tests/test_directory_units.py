"""The directory's sans-I/O parts: names, VIPs, ownership, policy, round robin, the
view; the seccomp filter program; sockaddrs; the OCI state parser; the profile."""

from __future__ import annotations

import json
import os
import socket
import struct

import pytest

from netstack.directory import notify, oci, profile
from netstack.directory import sockaddr as sa
from netstack.directory.registry import Directory, Pick, Refused, allowed, parse_labels
from netstack.directory.store import Instance, MemoryStore
from netstack.directory.view import View


def directory() -> Directory:
    return Directory(MemoryStore("198.18.0.0/16", "fd4e:5344::/64"))


def instance(name: str = "web", port: int = 80, cookie: int = 1, owner: int = 0,
             labels: dict[str, str] | None = None) -> Instance:
    return Instance(name=name, port=port, host="127.0.0.1", host_port=40000 + cookie,
                    labels=labels or {}, owner=owner, container=f"c{cookie}", pid=1,
                    cookie=cookie, since=0.0)


def test_names_are_canonical_and_validated() -> None:
    d = directory()
    assert d.canonical("Web.") == "web"
    assert d.canonical("WEB.NETSTACK.INTERNAL.") == "web"
    assert d.canonical("db.prod") == "db.prod"
    for bad in ("", ".", "no/slash", "-lead", "x" * 300, "netstack.internal", "a..b"):
        assert d.canonical(bad) is None, bad


def test_resolve_reserves_stable_vips_and_expiry_frees_them() -> None:
    d = directory()
    a = d.resolve("a", now=0)
    b = d.resolve("b.netstack.internal", now=0)
    assert a is not None and b is not None
    assert a.vip == bytes([198, 18, 0, 1]) and b.vip == bytes([198, 18, 0, 2])
    assert a.vip6[:4] == bytes.fromhex("fd4e5344") and a.vip6[-1] == 1
    assert d.resolve("A", now=1) is a  # same name, same VIPs
    d.register(instance("a"), now=1)
    d.expire(now=1000)  # a has an instance: kept; b's reservation ran out
    assert d.store.name("a") is not None and d.store.name("b") is None
    assert d.unregister(1, now=1000) is not None
    d.expire(now=1059)
    assert d.store.name("a") is not None  # still reserved for a minute
    d.expire(now=1061)
    assert d.store.name("a") is None


def test_a_name_belongs_to_the_owner_that_registered_it() -> None:
    d = directory()
    d.register(instance(owner=1000), now=0)
    d.register(instance(cookie=2, owner=1000), now=0)  # more replicas, same owner
    with pytest.raises(Refused):
        d.register(instance(cookie=3, owner=1001), now=0)
    with pytest.raises(Refused):
        d.register(instance(name="bad/name", cookie=4), now=0)


def test_registrations_per_owner_are_bounded() -> None:
    from netstack.directory.registry import Limits

    d = Directory(MemoryStore("198.18.0.0/16", "fd4e:5344::/64"),
                  limits=Limits(instances_per_owner=3, instances_per_container=2))
    same_container = [instance(cookie=k) for k in (1, 2, 3)]
    for inst in same_container:
        inst.container = "c1"
    d.register(same_container[0], now=0)
    d.register(same_container[1], now=0)
    with pytest.raises(Refused):
        d.register(same_container[2], now=0)  # a third in one container
    d.register(instance(cookie=6), now=0)  # the owner's third, another container
    with pytest.raises(Refused):
        d.register(instance(cookie=7), now=0)  # the owner's fourth
    d.register(instance(name="other", cookie=4, owner=5), now=0)  # its own budget


def test_labels_policy_and_round_robin() -> None:
    assert allowed({}, {})  # both zone=default
    assert not allowed({}, {"role": "db"})
    assert allowed({"role": "db", "x": "y"}, {"role": "db"})
    assert not allowed({"role": "web"}, {"role": "db"})
    assert parse_labels("a=1, b=2") == {"a": "1", "b": "2"} == parse_labels("a=1;b=2")
    for bad in ("novalue", "=x", "a=b c"):
        with pytest.raises(ValueError):
            parse_labels(bad)
    d = directory()
    d.register(instance(cookie=1), now=0)
    d.register(instance(cookie=2), now=0)
    d.register(instance(cookie=3, labels={"role": "db"}), now=0)
    rec = d.store.name("web")
    assert rec is not None
    picks = [d.pick(rec.vip, 80, {}) for _ in range(4)]
    assert [p.cookie for p in picks if isinstance(p, Instance)] == [1, 2, 1, 2]
    assert d.pick(rec.vip6, 80, {"role": "db"}).cookie == 3  # type: ignore[union-attr]
    assert d.pick(rec.vip, 81, {}) is Pick.NOT_SERVED
    assert d.pick(rec.vip, 80, {"role": "web"}) is Pick.DENIED
    assert d.pick(bytes([198, 18, 9, 9]), 80, {}) is Pick.UNKNOWN
    assert d.is_vip(rec.vip) and d.is_vip(rec.vip6) and not d.is_vip(bytes([10, 0, 2, 2]))


ZD = {"zone": "default"}


def test_a_connect_prefers_this_hosts_instances() -> None:
    """Round robin among the allowed local instances; other hosts' only when no local
    one is allowed or left. The watch view (netstack's TAP path) routes the same way."""
    d = Directory(MemoryStore("198.18.0.0/16", "fd4e:5344::/64", node="here"))
    remote = [instance(cookie=c, labels=ZD) for c in (1, 2)]
    for r in remote:  # another host's (as a shared store adds them)
        r.node = "there"
        rec = d.store.reserve("web", 60)
        rec.owner = 0
        d.store.add(rec, r)
    rec = d.store.name("web")
    assert rec is not None
    assert [d.pick(rec.vip, 80, {}).cookie for _ in range(4)] == [1, 2, 1, 2]  # type: ignore[union-attr]
    d.register(instance(cookie=3, labels=ZD), now=0)
    d.register(instance(cookie=4, labels=ZD), now=0)
    d.register(instance(cookie=5, labels={"role": "db"}), now=0)
    picks = [d.pick(rec.vip, 80, {}).cookie for _ in range(4)]  # type: ignore[union-attr]
    assert sorted(picks) == [3, 3, 4, 4]
    # a client only a remote instance allows goes there
    remote[1].labels = {"role": "x"}
    assert d.pick(rec.vip, 80, {"role": "x"}).cookie == 2  # type: ignore[union-attr]
    assert d.pick(rec.vip, 80, {"role": "db"}).cookie == 5  # type: ignore[union-attr]
    # the local ones go away: back to the other host's
    for cookie in (3, 4, 5):
        d.unregister(cookie, now=0)
    assert {d.pick(rec.vip, 80, {}).cookie for _ in range(2)} == {1}  # type: ignore[union-attr]
    # the same in the view a netstack follows
    d.register(instance(cookie=6, labels=ZD), now=0)
    services = d.view()["services"]
    insts = services[0]["instances"]  # type: ignore[index]
    assert [(i["node"], i["local"]) for i in insts] == [  # type: ignore[index]
        ("there", False), ("there", False), ("here", True)]
    v = View.parse({"view": d.view()})
    assert {v.route(rec.vip, 80, {}).host_port for _ in range(3)} == {40006}  # type: ignore[union-attr]
    assert v.route(rec.vip, 80, {"role": "x"}).host_port == 40002  # type: ignore[union-attr]
    d.unregister(6, now=0)
    v = View.parse({"view": d.view()})
    assert v.route(rec.vip, 80, {}).host_port == 40001  # type: ignore[union-attr]
    assert d.store.hosts()[0]["node"] == "here" and d.store.hosts()[0]["local"] is True


def test_the_view_follows_every_change() -> None:
    d = directory()
    changes: list[int] = []
    d.changed.append(lambda: changes.append(1))
    d.resolve("late", now=0)
    d.register(instance(cookie=7), now=0)
    view = d.view()
    assert view["vip_cidr"] == "198.18.0.0/16" and view["domain"] == "netstack.internal"
    services = {s["name"]: s for s in view["services"]}  # type: ignore[attr-defined]
    assert services["late"]["instances"] == []
    assert services["web"]["instances"] == [
        {"port": 80, "host": "127.0.0.1", "host_port": 40007, "labels": {},
         "node": "", "local": True}]
    json.dumps(view)
    assert len(changes) == 2


def test_the_filter_traps_only_x86_64_socket_calls() -> None:
    prog = notify.socket_filter()
    insns = [struct.unpack("=HBBI", prog[i:i + 8]) for i in range(0, len(prog), 8)]
    assert len(insns) == 4 + len(notify.TRAPPED) + 2

    def run(arch: int, nr: int) -> int:  # a tiny cBPF interpreter for this program
        pc, acc = 0, 0
        data = {0: nr, 4: arch}
        while True:
            code, jt, jf, k = insns[pc]
            if code == 0x20:
                acc = data[k]
            elif code == 0x15:
                pc += jt if acc == k else jf
            elif code == 0x35:
                pc += jt if acc >= k else jf
            elif code == 0x06:
                return k
            pc += 1

    for nr in notify.TRAPPED:
        assert run(notify.AUDIT_ARCH_X86_64, nr) == notify.SECCOMP_RET_USER_NOTIF
    for nr in (0, 1, 41, 44, 46, 53, 54, 3, 72, 59):  # read, write, socket, sendto, ...
        assert run(notify.AUDIT_ARCH_X86_64, nr) == notify.SECCOMP_RET_ALLOW
    assert run(notify.AUDIT_ARCH_X86_64, 42 | notify.X32_SYSCALL_BIT) == notify.SECCOMP_RET_ALLOW
    assert run(0x40000003, 42) == notify.SECCOMP_RET_ALLOW  # i386


def test_sockaddrs_round_trip_as_the_kernel_lays_them_out() -> None:
    v4 = sa.SockAddr(socket.AF_INET, bytes([198, 18, 0, 1]), 8080)
    raw = sa.emit(v4)
    assert len(raw) == 16 and raw[2:4] == b"\x1f\x90"
    assert sa.parse(raw) == v4
    v6 = sa.SockAddr(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, "fd4e:5344::1"), 443,
                     0, 0)
    assert len(sa.emit(v6)) == 28 and sa.parse(sa.emit(v6)) == v6
    mapped = sa.in_family(socket.AF_INET6, bytes([10, 0, 2, 2]), 80)
    assert mapped.unmapped() == (bytes([10, 0, 2, 2]), 80)
    assert sa.parse(b"\x01\x00/tmp/x") is None and sa.parse(b"\x02") is None
    assert sa.host_tuple(socket.AF_INET6, "127.0.0.1", 5) == ("::ffff:127.0.0.1", 5)


def test_container_states_from_runc_and_crun() -> None:
    r, w = os.pipe()
    runc = json.dumps({"ociVersion": "1.0.2", "fds": ["seccompFd"], "pid": 42, "state": {
        "id": "abc", "annotations": {"io.netstack.name": "web",
                                     "io.netstack.labels": "role=db,tier=1"}}})
    state = oci.parse(runc.encode(), [r])
    assert (state.listener, state.pid, state.container, state.name) == (r, 42, "abc", "web")
    assert state.labels == {"role": "db", "tier": "1"} and not state.host_loopback
    os.close(w)
    crun = json.dumps({"ociVersion": "0.2.0", "fds": ["seccompFd"], "pid": 7,
                       "state": {"id": "x", "status": "creating", "annotations": {
                           "io.netstack.label.role": "web", "io.netstack.label.zone": "a"}}},
                      indent=4)
    fd = os.dup(r)
    crun_state = oci.parse(crun.encode(), [fd])
    assert crun_state.name is None and crun_state.labels == {"role": "web", "zone": "a"}
    os.close(state.listener)
    os.close(fd)
    for bad in (b"{", b"[]", b'{"fds": ["other"], "pid": 1}', b'{"fds": ["seccompFd"]}'):
        a, b = os.pipe()
        with pytest.raises(oci.BadState):
            oci.parse(bad, [a])
        with pytest.raises(OSError):
            os.fstat(a)  # closed: nothing leaks on a refusal
        os.close(b)


def test_the_seccomp_profile_puts_our_rule_first() -> None:
    base = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["connect", "read"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["bind"], "action": "SCMP_ACT_ALLOW"}]}
    prof = profile.build(base, "/run/x/agent.sock")
    assert prof["listenerPath"] == "/run/x/agent.sock"
    assert prof["syscalls"][0] == {"names": profile.TRAPPED_NAMES, "action": "SCMP_ACT_NOTIFY"}
    assert prof["syscalls"][1]["names"] == ["read"] and len(prof["syscalls"]) == 2
    assert "flags" not in prof
    assert "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV" in profile.build(base, "/a", True)["flags"]
    with pytest.raises(ValueError):
        profile.build({**base, "listenerPath": "/other"}, "/a")


def test_netstack_follows_the_per_user_netstackd_unless_told_not_to(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from netstack.cli import args

    sock = Path(str(tmp_path)) / "netstackd.sock"
    monkeypatch.setattr(args, "default_socket", lambda: str(sock))
    assert args.parse(["1234", "tap0"]).directory is None  # no daemon: nothing changes
    sock.touch()
    assert args.parse(["1234", "tap0"]).directory == str(sock)
    assert args.parse(["--directory=none", "1234", "tap0"]).directory is None
    assert args.parse(["--directory=/x.sock", "1234", "tap0"]).directory == "/x.sock"


def test_root_of_a_rootless_user_namespace_follows_its_user_s_netstackd(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Rootless podman starts netstack as uid 0 of the user's namespace (uid_map
    "0 1001 1"): the default socket is the user's, under XDG_RUNTIME_DIR, not root's."""
    import builtins
    import io

    from netstack.directory import paths

    maps = {"initial": "         0          0 4294967295\n",
            "rootless": "         0       1001          1\n         1     100000      65536\n"}
    current = ["initial"]
    real_open = builtins.open

    def fake_open(path: object, *a: object, **kw: object) -> object:
        if path == "/proc/self/uid_map":
            return io.StringIO(maps[current[0]])
        return real_open(path, *a, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(paths.os, "geteuid", lambda: 0)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1001")
    assert paths.default_socket() == "/run/netstack/netstackd.sock"
    current[0] = "rootless"
    assert paths.default_socket() == "/run/user/1001/netstack/netstackd.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert paths.default_socket() == "/tmp/netstack-1001/netstack/netstackd.sock"


def test_calls_in_flight_live_in_memory_a_successor_can_read() -> None:
    from netstack.directory.inflight import SLOT, InFlight

    first = InFlight(4)
    raw = struct.pack("<QIIiIQ6Q", 77, 1234, 0, notify.SYS_ACCEPT, notify.AUDIT_ARCH_X86_64,
                      0, 5, 0, 0, 0, 0, 0)
    first.map[SLOT:SLOT + len(raw)] = raw  # as RECV would have written slot 1
    first.save_flags(1, os.O_RDWR)
    successor = InFlight(0, os.dup(first.fd))  # what the keeper hands over
    assert successor.slots == 4
    ((slot, n),) = successor.left_over()
    assert slot == 1 and (n.id, n.pid, n.nr, n.args[0]) == (77, 1234, notify.SYS_ACCEPT, 5)
    assert successor.saved_flags(1) == os.O_RDWR
    successor.flags_restored(1)
    successor.release(1)
    assert first.left_over() == [] and first.saved_flags(1) is None
    first.close()
    successor.close()


def test_sock_diag_knows_our_sockets_by_inode_and_cookie() -> None:
    from netstack.directory import diag

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        inode = os.fstat(s.fileno()).st_ino
        assert os.readlink(f"/proc/self/fd/{s.fileno()}") == f"socket:[{inode}]"
        assert diag.tcp_sockets(diag.LISTENING)[inode] == diag.socket_cookie(s)
    assert inode not in diag.tcp_inodes()


def test_a_listener_takes_the_sync_wake_up_flag() -> None:
    """SECCOMP_IOCTL_NOTIF_SET_FLAGS on a real listener (a forked child's filter)."""
    to_parent_r, to_parent_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a filter with a listener, its number to the parent, wait
        try:
            listener = notify.install_filter(notify.socket_filter(),
                                             notify.SECCOMP_FILTER_FLAG_NEW_LISTENER)
            os.write(to_parent_w, str(listener).encode())
            os.read(go_r, 1)
        finally:
            os._exit(0)
    try:
        number = int(os.read(to_parent_r, 16))
        pidfd = os.pidfd_open(pid)
        try:
            listener = notify.pidfd_getfd(pidfd, number)
        finally:
            os.close(pidfd)
        assert notify.sync_wake_up(listener)
        os.close(listener)
    finally:
        os.write(go_w, b"x")
        os.waitpid(pid, 0)
        for fd in (to_parent_r, to_parent_w, go_r, go_w):
            os.close(fd)


def test_a_published_port_is_never_shared_with_another_bound_socket() -> None:
    """A service's host socket is bound before the process's SO_REUSEADDR is copied: a
    port in --port-range that another socket holds (bound with SO_REUSEADDR, not yet
    listening) is skipped, not shared (two listen()s on it: the second EADDRINUSE)."""
    from netstack.directory import publish

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        low = probe.getsockname()[1]
    with socket.socket() as holder, socket.socket() as ours:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", low))
        try:
            publish.bind(ours, "127.0.0.1", (low, low + 1))
        except OSError:
            pytest.skip("the neighbouring port is busy on this host")
        assert ours.getsockname()[1] == low + 1
        ours.listen()
        holder.listen()
