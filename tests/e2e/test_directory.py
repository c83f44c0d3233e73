"""The service directory end to end: netstackd supervising netstack-run containers.

Names and VIPs, host sockets instead of packets, connect-waits-for-listen, load
balancing, labels as the firewall, truthful addresses, outbound bypass under the TAP
stack's policy, and the cases a syscall supervisor gets wrong (threads, fork, dup2,
a racing thread rewriting the sockaddr, signals).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.helpers.directory import DirectoryWorld, line, wait_until
from tests.netns import PYTHON, ROOT

APPS = str(ROOT / "tests" / "helpers" / "dirapps.py")


@pytest.fixture(scope="module")
def dw() -> Iterator[DirectoryWorld]:
    if os.geteuid() != 0:
        pytest.skip("needs root for namespaces")
    w = DirectoryWorld("--connect-wait", "8")
    try:
        yield w
    finally:
        w.close()


def serve(dw: DirectoryWorld, name: str, port: int, count: int = 1,
          labels: tuple[str, ...] = (), family: str = "4") -> subprocess.Popen[bytes]:
    p = dw.spawn(PYTHON, APPS, "serve", str(port), str(count), family, name=name,
                 labels=labels)
    assert line(p).startswith("ready"), dw.log()
    return p


def fetch(dw: DirectoryWorld, host: str, port: int, nonblocking: bool = False,
          **kw: object) -> dict[str, object]:
    r = dw.run(PYTHON, APPS, "fetch-nb" if nonblocking else "fetch", host, str(port),
               **kw)  # type: ignore[arg-type]
    assert r.returncode == 0, f"{r.stdout}{r.stderr}\n{dw.log()}"
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def fetch_error(dw: DirectoryWorld, host: str, port: int, **kw: object) -> str:
    r = dw.run(PYTHON, APPS, "fetch", host, str(port), **kw)  # type: ignore[arg-type]
    assert r.returncode == 3, f"expected an error: {r.stdout}{r.stderr}"
    return r.stdout.split()[-1]


def vip(dw: DirectoryWorld, name: str) -> tuple[str, str]:
    rec = dw.api("resolve", name=name)
    return rec["vip"], rec["vip6"]


def accepted(p: subprocess.Popen[bytes]) -> list[list[object]]:
    text = line(p)
    assert text.startswith("accepted"), text
    return list(json.loads(text.split(" ", 1)[1]))


def test_a_name_is_reached_through_host_sockets_with_truthful_addresses(
        dw: DirectoryWorld) -> None:
    server = serve(dw, "web", 8080)
    svc = dw.wait_served("web")
    assert svc["ports"] == [8080]
    # the instance really listens on a host loopback port, not in a netns
    inst = [i for i in dw.api("list_instances")["entries"] if i["name"] == "web"]
    assert inst and inst[0]["host"] == "127.0.0.1" and inst[0]["port"] == 8080
    listening = dw.in_host("ss", "-Htln", f"sport = :{inst[0]['host_port']}").stdout
    assert f"127.0.0.1:{inst[0]['host_port']}" in listening
    before = dw.stats()
    v4, _ = vip(dw, "web.netstack.internal")
    assert v4 == svc["vip"] and v4.startswith("198.18.")
    got = fetch(dw, v4, 8080)
    assert got["data"].startswith("hello ")  # type: ignore[union-attr]
    # the client sees the VIP it asked for and its own container address
    assert got["peer"] == [v4, 8080]
    local = got["local"]
    assert isinstance(local, list) and local[0] == "10.0.2.100"
    # the server sees the client's container address, never 127.0.0.1
    addr, peer, sockname = accepted(server)
    assert addr == ["10.0.2.100", local[1]] and peer == addr
    assert sockname == ["10.0.2.100", 8080]
    after = dw.stats()
    assert after["bypassed_connects"] == before["bypassed_connects"] + 1
    assert after["accepts"] == before["accepts"] + 1
    server.wait(10)


def test_a_service_disappears_within_a_second_of_its_process(dw: DirectoryWorld) -> None:
    server = dw.spawn(PYTHON, APPS, "serve", "7000", "5", name="shortlived")
    pid = int(line(server).split()[1])
    dw.wait_served("shortlived")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: dw.services()["shortlived"]["instances"] == 0, 1.5,
               "the instance to go")
    v4, _ = vip(dw, "shortlived")
    assert fetch_error(dw, v4, 7000) in ("ETIMEDOUT", "ECONNREFUSED")


def test_a_blocking_connect_waits_for_the_listen(dw: DirectoryWorld) -> None:
    v4, _ = vip(dw, "late")  # resolved before anyone serves it
    before = dw.stats()
    client = dw.spawn(PYTHON, APPS, "fetch", v4, "9000")
    wait_until(lambda: dw.stats()["waited"] > before["waited"], 10, "the client to wait")
    server = serve(dw, "late", 9000)
    out, err = client.communicate(timeout=30)
    assert client.returncode == 0, err
    assert json.loads(out.decode())["peer"] == [v4, 9000]
    accepted(server)


def test_an_unserved_name_times_out_and_an_unknown_vip_is_refused(
        dw: DirectoryWorld) -> None:
    v4, _ = vip(dw, "nobody")
    assert fetch_error(dw, v4, 9100) == "ETIMEDOUT"
    assert fetch_error(dw, "198.18.255.254", 80) == "ECONNREFUSED"


def test_new_connections_spread_over_instances(dw: DirectoryWorld) -> None:
    servers = [serve(dw, "pool", 8200, count=3) for _ in range(2)]
    dw.wait_served("pool", count=2)
    v4, _ = vip(dw, "pool")
    greetings = {str(fetch(dw, v4, 8200)["data"]).split()[1] for _ in range(4)}
    assert greetings == {str(s.pid) for s in servers} or len(greetings) == 2


def test_labels_are_the_firewall(dw: DirectoryWorld) -> None:
    server = serve(dw, "db", 5432, count=2, labels=("role=db",))
    dw.wait_served("db")
    v4, _ = vip(dw, "db")
    before = dw.stats()
    assert fetch_error(dw, v4, 5432) == "ECONNREFUSED"  # zone=default shares nothing
    assert fetch_error(dw, v4, 5432, labels=("role=web",)) == "ECONNREFUSED"
    assert dw.stats()["denied"] == before["denied"] + 2
    got = fetch(dw, v4, 5432, labels=("role=web", "role2=x", "role=db"))
    assert got["peer"] == [v4, 5432]
    accepted(server)


def test_a_name_over_ipv6(dw: DirectoryWorld) -> None:
    server = serve(dw, "web6", 8600, family="6")
    dw.wait_served("web6")
    _, v6 = vip(dw, "web6")
    got = fetch(dw, v6, 8600, ipv6=True)
    assert got["peer"] == [v6, 8600]
    addr, _peer, _sockname = accepted(server)
    assert addr[0] in ("fd00::100", "::ffff:10.0.2.100") or str(addr[0]).startswith("fd00::")


def test_nonblocking_connects(dw: DirectoryWorld) -> None:
    server = serve(dw, "nb", 8300, count=2)
    dw.wait_served("nb")
    v4, _ = vip(dw, "nb")
    assert fetch(dw, v4, 8300, nonblocking=True)["peer"] == [v4, 8300]
    accepted(server)


OUTBOUND = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.settimeout(10)
try:
    s.connect((host, port))
except OSError as e:
    import errno; print("error", errno.errorcode[e.errno]); sys.exit(3)
print(s.recv(100).decode().strip(), s.getpeername()[:2], s.getsockname()[0])
"""


def host_banner_server(dw: DirectoryWorld) -> tuple[subprocess.Popen[bytes], int]:
    code = ("import socket\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen(8)\n"
            "print(s.getsockname()[1],flush=True)\n"
            "while True:\n c,a=s.accept()\n c.sendall(b'banner '+a[0].encode()+b'\\n')\n"
            " c.close()\n")
    p = dw.spawn_in_host(PYTHON, "-c", code)
    return p, int(line(p))


def test_outbound_connects_get_direct_host_sockets_under_the_stack_policy(
        dw: DirectoryWorld) -> None:
    _server, port = host_banner_server(dw)
    before = dw.stats()
    r = dw.python(OUTBOUND, "10.0.2.2", str(port))
    assert r.returncode == 0, r.stderr
    # a host socket straight to 127.0.0.1 (the banner shows the host side's view), while
    # the client still sees the gateway address it asked for
    assert r.stdout.startswith(f"banner 127.0.0.1 ('10.0.2.2', {port}) 10.0.2.100")
    assert dw.stats()["outbound_bypassed"] == before["outbound_bypassed"] + 1
    # --disable-host-loopback: the host's loopback is unreachable in every form
    for target in ("10.0.2.2", "127.0.0.1", "::ffff:127.0.0.1", "0.0.0.0"):
        r = dw.python(OUTBOUND, target, str(port), disable_host_loopback=True)
        assert r.returncode == 3, (target, r.stdout, r.stderr)
        assert r.stdout.split()[-1] in ("ENETUNREACH", "ECONNREFUSED", "EAFNOSUPPORT"), target
    # the container's own loopback stays its own
    r = dw.python(OUTBOUND, "127.0.0.1", str(port))
    assert r.returncode == 3 and "ECONNREFUSED" in r.stdout


UDP = """
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", 0))
u.settimeout(5)
u.sendto(b"ping", ("10.0.2.2", int(sys.argv[1])))
print(u.recvfrom(100)[0].decode())
"""


def test_udp_is_left_to_the_stack(dw: DirectoryWorld) -> None:
    code = ("import socket\nu=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "u.bind(('127.0.0.1',0))\nprint(u.getsockname()[1],flush=True)\n"
            "d,a=u.recvfrom(100)\nu.sendto(b'pong',a)\n")
    echo = dw.spawn_in_host(PYTHON, "-c", code)
    port = line(echo)
    before = dw.stats()
    r = dw.python(UDP, port, name="udpuser")
    assert r.returncode == 0 and r.stdout.strip() == "pong", r.stderr
    after = dw.stats()
    assert after["continued"] > before["continued"]  # bind was trapped and continued
    assert after["registrations"] == before["registrations"]


CASES = """
import os, socket, sys, threading, json
host, port = sys.argv[1], int(sys.argv[2])
out = {}
# a thread (TID != TGID) connects
box = {}
def worker():
    s = socket.create_connection((host, port), timeout=10)
    box["s"] = s
t = threading.Thread(target=worker); t.start(); t.join()
s = box["s"]
out["thread_peer"] = s.getpeername()[:2]
# dup2 onto another number: the same socket, the same answers
os.dup2(s.fileno(), 100)
out["dup2_peer"] = socket.socket(fileno=os.dup(100)).getpeername()[:2]
# fork after connect: the child shares the socket
pid = os.fork()
if pid == 0:
    data = s.recv(100)
    os.write(1, json.dumps({"child_peer": s.getpeername()[:2], "data": data.decode()}).encode()
             + b"\\n")
    os._exit(0)
os.waitpid(pid, 0)
print(json.dumps(out), flush=True)
"""


def test_threads_dup2_and_fork(dw: DirectoryWorld) -> None:
    server = serve(dw, "cases", 8400)
    dw.wait_served("cases")
    v4, _ = vip(dw, "cases")
    r = dw.python(CASES, v4, "8400")
    assert r.returncode == 0, r.stderr
    child, parent = (json.loads(x) for x in r.stdout.strip().splitlines())
    assert parent["thread_peer"] == [v4, 8400] and parent["dup2_peer"] == [v4, 8400]
    assert child["child_peer"] == [v4, 8400] and child["data"].startswith("hello")
    accepted(server)


RACE = """
import ctypes, socket, struct, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
vip, port, canary = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def sockaddr(ip, port):
    return struct.pack("=H2s4s8x", socket.AF_INET, port.to_bytes(2, "big"), socket.inet_aton(ip))
good, evil = sockaddr(vip, port), sockaddr("127.0.0.1", canary)
buf = ctypes.create_string_buffer(good, 16)
stop = False
def flipper():
    while not stop:
        ctypes.memmove(buf, evil, 16)
        ctypes.memmove(buf, good, 16)
t = threading.Thread(target=flipper); t.start()
ok = 0
for _ in range(int(sys.argv[4])):
    s = socket.socket()
    if libc.connect(s.fileno(), buf, 16) == 0:
        ok += 1
    s.close()
stop = True; t.join()
print(ok)
"""


def test_a_racing_thread_cannot_aim_a_connect_at_host_loopback(dw: DirectoryWorld) -> None:
    server = serve(dw, "race", 8500, count=400)
    dw.wait_served("race")
    canary, canary_port = host_banner_server(dw)
    v4, _ = vip(dw, "race")
    r = dw.python(RACE, v4, "8500", str(canary_port), "300", disable_host_loopback=True,
                  timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) > 0  # the VIP was reached (the race did not simply break it)
    # the canary on the host's loopback never saw a connection: it would have answered
    # the first one with its banner; check no connection is queued or was accepted
    assert canary.poll() is None
    probe = dw.in_host("ss", "-Htn", "state", "established", f"dport = :{canary_port}")
    assert probe.stdout.strip() == ""
    server.kill()


SIGNALS = """
import os, signal, socket, sys, threading, time
host, port = sys.argv[1], int(sys.argv[2])
hits = 0
def on_usr1(*_):
    global hits
    hits += 1
signal.signal(signal.SIGUSR1, on_usr1)
signal.siginterrupt(signal.SIGUSR1, False)  # SA_RESTART
me = os.getpid()
stop = False
def pester():
    while not stop:
        os.kill(me, signal.SIGUSR1)
        time.sleep(0.005)
threading.Thread(target=pester, daemon=True).start()
s = socket.socket()
s.connect((host, port))  # blocking: the supervisor holds it until "signals" is served
stop = True
print(s.getpeername()[:2] == (host, port), s.recv(100).decode().split()[0], hits > 0)
"""


def test_signals_during_a_waiting_connect(dw: DirectoryWorld) -> None:
    v4, _ = vip(dw, "signals")
    client = dw.spawn(PYTHON, "-c", SIGNALS, v4, "8700")
    before = dw.stats()["waited"]
    wait_until(lambda: dw.stats()["waited"] > before, 10, "the client to wait")
    server = serve(dw, "signals", 8700)
    out, err = client.communicate(timeout=30)
    assert client.returncode == 0, err
    assert out.decode().split() == ["True", "hello", "True"]
    accepted(server)


def test_a_name_held_by_a_live_instance_keeps_its_vip(dw: DirectoryWorld) -> None:
    first = vip(dw, "stable")
    server = serve(dw, "stable", 8800)
    dw.wait_served("stable")
    assert vip(dw, "stable") == first
    server.kill()


def test_bad_requests_get_json_errors(dw: DirectoryWorld) -> None:
    for payload in (b"nonsense", b"[" * 100000, b'{"execute": 3}', b'{"execute": "nope"}',
                    b'{"execute": "resolve", "arguments": {"name": "no/slash"}}'):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(dw.socket)
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert "error" in json.loads(data), payload[:40]
    assert dw.daemon is not None and dw.daemon.poll() is None
    assert dw.api("info")["vip_cidr"] == "198.18.0.0/16"


HOLD = """
import socket, sys
s = socket.socket()
s.connect((sys.argv[1], int(sys.argv[2])))
print(s.recv(100).decode().split()[0], flush=True)
for line in sys.stdin:  # echo through the open connection until stdin closes
    s.sendall(line.encode())
    print(s.recv(100).decode().strip(), flush=True)
"""

ECHO_SERVER = """
import socket, threading
def echo(c):
    c.sendall(b"hello\\n")
    while data := c.recv(100):
        c.sendall(data)
    c.close()
s = socket.socket(); s.bind(("0.0.0.0", 8900)); s.listen()
print("ready", flush=True)
while True:
    threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()
"""


def test_a_netstackd_restart_keeps_connections_and_names(dw: DirectoryWorld) -> None:
    server = dw.spawn(PYTHON, "-c", ECHO_SERVER, name="survivor")
    assert line(server) == "ready"
    dw.wait_served("survivor")
    v4, _ = vip(dw, "survivor")
    client = subprocess.Popen(dw.run_args(PYTHON, "-c", HOLD, v4, "8900"),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    dw.procs.append(client)
    assert line(client) == "hello"
    dw.stop_daemon(signal.SIGKILL)
    assert client.stdin is not None
    client.stdin.write(b"while-down\n")
    client.stdin.flush()
    assert line(client) == "while-down"  # an open connection never needed netstackd
    dw.start_daemon("--connect-wait", "8")
    svc = dw.wait_served("survivor", timeout=5)
    assert svc["vip"] == v4 or svc["instances"] == 1
    v4_after, _ = vip(dw, "survivor")
    try:
        r = dw.run(PYTHON, "-c", HOLD, v4_after, "8900", input="", timeout=20)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no answer after the restart: {dw.stats()}\n{dw.log()}"
                             ) from None
    assert r.returncode == 0 and r.stdout.strip() == "hello", f"{r.stderr}{dw.log()}"
    client.stdin.write(b"after\n")
    client.stdin.flush()
    assert line(client) == "after"
    client.stdin.close()
    client.wait(10)


EPOLL_FIRST = """
import errno, select, socket, sys
s = socket.socket()
s.setblocking(False)
ep = select.epoll()
ep.register(s.fileno(), select.EPOLLOUT)  # before connect: the hazard
err = s.connect_ex((sys.argv[1], int(sys.argv[2])))
assert err in (0, errno.EINPROGRESS), err
assert ep.poll(20), "epoll never reported the connect"
assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
s.setblocking(True)
print(s.recv(100).decode().split()[0])
"""


def test_a_socket_in_an_epoll_before_connect_still_completes(dw: DirectoryWorld) -> None:
    server = serve(dw, "epollfirst", 9300)
    dw.wait_served("epollfirst")
    v4, _ = vip(dw, "epollfirst")
    before = dw.stats()["epoll_continued"]
    r = dw.python(EPOLL_FIRST, v4, "9300", timeout=40)
    assert r.returncode == 0 and r.stdout.strip() == "hello", r.stderr
    assert dw.stats()["epoll_continued"] == before + 1  # carried by the TAP stack instead
    accepted(server)


DEAF = """
import signal, socket, sys
s = socket.socket(); s.bind(("0.0.0.0", 9400)); s.listen()
print("ready", flush=True)
try:
    s.accept()  # blocking, nobody comes: netstackd holds the call
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_a_caught_signal_ends_a_blocking_accept(dw: DirectoryWorld) -> None:
    server = dw.spawn(PYTHON, "-c", DEAF, name="deaf")
    assert line(server) == "ready"
    dw.wait_served("deaf")
    pid = int(wait_until(lambda: [i["pid"] for i in dw.api("list_instances")["entries"]
                                  if i["name"] == "deaf"], 5, "the instance")[0])
    before = dw.stats()["interrupted"]
    wait_until(lambda: dw.stats()["containers_live"] and _in_accept(pid), 5, "accept()")
    os.kill(pid, signal.SIGINT)
    assert line(server) == "interrupted"
    assert dw.stats()["interrupted"] == before + 1


def _in_accept(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/syscall") as f:
            return f.read().split()[0] in ("43", "288")
    except (OSError, IndexError):
        return False


BY_NAME = """
import socket, sys
name, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if len(sys.argv) > 3 else socket.AF_INET
addr = socket.getaddrinfo(name, port, family, socket.SOCK_STREAM)[0][4]
s = socket.create_connection((name, port), timeout=20)  # a timeout: nonblocking inside
print(addr[0], s.getpeername()[0], s.recv(100).decode().split()[0])
"""


def test_names_resolve_through_the_stack_dns(dw: DirectoryWorld) -> None:
    server = serve(dw, "named", 9500, count=3)
    svc = dw.wait_served("named")
    before = dw.stats()["bypassed_connects"]
    for name in ("named", "named.netstack.internal", "NAMED.netstack.internal."):
        r = dw.python(BY_NAME, name, "9500")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [svc["vip"], svc["vip"], "hello"]
        accepted(server)
    assert dw.stats()["bypassed_connects"] == before + 3  # host sockets, not the TAP


def test_a_nonblocking_connect_to_a_name_served_later_completes(dw: DirectoryWorld) -> None:
    client = dw.spawn(PYTHON, "-c", BY_NAME, "latecomer", "9600")
    before = dw.stats()["continued"]
    wait_until(lambda: "latecomer" in dw.services(), 10, "the name to be resolved")
    wait_until(lambda: dw.stats()["continued"] > before, 10, "the connect")
    server = serve(dw, "latecomer", 9600)
    out, err = client.communicate(timeout=30)
    assert client.returncode == 0, err
    vip_, peer, greeting = out.decode().split()
    assert vip_ == peer == dw.services()["latecomer"]["vip"] and greeting == "hello"
    accepted(server)


LIFECYCLE = """
import ctypes, errno, json, os, socket, subprocess, sys
host, port = sys.argv[1], int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
out = {}
s = socket.create_connection((host, port))
out["peer"] = s.getpeername()[:2]
# exec: the socket crosses into a new program and is still the same socket to it
fd = s.fileno()
os.set_inheritable(fd, True)
child = subprocess.run([sys.executable, "-c",
                        "import json,socket,sys; s=socket.socket(fileno=int(sys.argv[1]));"
                        "print(json.dumps(s.getpeername()[:2]))", str(fd)],
                       pass_fds=(fd,), capture_output=True, text=True)
out["exec_peer"] = json.loads(child.stdout)
# close_range, then a new socket on the same number: nothing of the old one sticks
number = s.detach()
assert libc.syscall(436, number, number, 0) == 0  # close_range
fresh = socket.socket()
assert fresh.fileno() == number, (fresh.fileno(), number)
try:
    fresh.getpeername()
    out["fresh"] = "connected?!"
except OSError as e:
    out["fresh"] = errno.errorcode[e.errno]
print(json.dumps(out))
"""


def test_exec_and_close_range(dw: DirectoryWorld) -> None:
    server = serve(dw, "lifecycle", 9700)
    dw.wait_served("lifecycle")
    v4, _ = vip(dw, "lifecycle")
    r = dw.python(LIFECYCLE, v4, "9700")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {"peer": [v4, 9700], "exec_peer": [v4, 9700], "fresh": "ENOTCONN"}
    accepted(server)


CLOSER = """
import socket, sys
s = socket.socket(); s.bind(("0.0.0.0", 9800)); s.listen()
print("ready", flush=True)
sys.stdin.readline()
s.close()
print("closed", flush=True)
sys.stdin.readline()
"""


def test_a_service_disappears_when_its_listening_socket_closes(dw: DirectoryWorld) -> None:
    p = subprocess.Popen(dw.run_args(PYTHON, "-c", CLOSER, name="closer"),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dw.procs.append(p)
    assert line(p) == "ready"
    dw.wait_served("closer")
    assert p.stdin is not None
    p.stdin.write(b"close\n")
    p.stdin.flush()
    assert line(p) == "closed"
    wait_until(lambda: dw.services()["closer"]["instances"] == 0, 1.0,
               "the instance to go within a second")
    assert p.poll() is None  # the process lives on; only its listener went


CROWD = """
import errno, socket, sys, threading
vip, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
results = []
def one():
    s = socket.socket()
    try:
        s.connect((vip, port))  # blocking: held until the name is served, or refused
        results.append("ok")
    except OSError as e:
        results.append(errno.errorcode[e.errno])
threads = [threading.Thread(target=one) for _ in range(count)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(results.count("ok"), results.count("ECONNREFUSED"), len(results))
"""


def test_held_calls_are_bounded_per_container(dw: DirectoryWorld) -> None:
    from netstack.directory.calls import MAX_IN_FLIGHT

    v4, _ = vip(dw, "crowded")
    before = dw.stats()
    client = dw.spawn(PYTHON, "-c", CROWD, v4, "9900", str(MAX_IN_FLIGHT + 40))
    wait_until(lambda: dw.stats()["waited"] - before["waited"] == MAX_IN_FLIGHT
               and dw.stats()["over_limit"] - before["over_limit"] == 40, 20,
               "the container's held calls to reach the bound")
    server = serve(dw, "crowded", 9900, count=MAX_IN_FLIGHT)
    out, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    assert out.decode().split() == [str(MAX_IN_FLIGHT), "40", str(MAX_IN_FLIGHT + 40)]
    stats = dw.stats()
    assert stats["held"] == stats["in_flight"]  # every held call accounted for, once
    server.kill()


BOUND_CLIENT = """
import json, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 6000))  # a fixed source port, by a named process: a host socket
s.connect((sys.argv[1], int(sys.argv[2])))
print(json.dumps({"local": s.getsockname()[:2], "peer": s.getpeername()[:2],
                  "data": s.recv(100).decode()}))
"""


def test_a_named_process_connects_from_a_port_it_bound(dw: DirectoryWorld) -> None:
    server = serve(dw, "bindfirst", 9950)
    dw.wait_served("bindfirst")
    v4, _ = vip(dw, "bindfirst")
    r = dw.python(BOUND_CLIENT, v4, "9950", name="fixedport")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["local"] == ["10.0.2.100", 6000] and out["peer"] == [v4, 9950]
    assert out["data"].startswith("hello")
    addr, _peer, _sockname = accepted(server)
    assert addr == ["10.0.2.100", 6000]  # the server sees the port the client bound


REOPENER = """
import socket, sys
# like iperf3 -s: after each client, close the listener and open a new one
for _ in range(6):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 9990))
    s.listen()
    print("listening", flush=True)
    c, _ = s.accept()
    c.sendall(b"hello\\n")
    c.close()
    s.close()
"""


def test_a_listener_reopened_at_once_is_reached_not_its_closed_twin(
        dw: DirectoryWorld) -> None:
    server = dw.spawn(PYTHON, "-c", REOPENER, name="reopener")
    v4, _ = vip(dw, "reopener")
    for _ in range(6):
        assert line(server) == "listening"
        # straight after the old listener closed: it may still be registered (the sweep
        # runs every 250 ms); the refused connect sweeps at once and decides again
        got = fetch(dw, v4, 9990)
        assert got["data"] == "hello\n"


def test_netstackctl_shows_the_directory(dw: DirectoryWorld) -> None:
    from tests.helpers.directory import NETSTACK_RUN

    ctl = NETSTACK_RUN.replace("netstack-run", "netstackctl")
    server = dw.spawn(PYTHON, "-c", ECHO_SERVER.replace("8900", "8910"), name="shown",
                      labels=("tier=front",))
    assert line(server) == "ready"
    svc = dw.wait_served("shown")
    holder = subprocess.Popen(dw.run_args(PYTHON, "-c", HOLD, svc["vip"], "8910",
                                          labels=("tier=front",)),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    dw.procs.append(holder)
    assert line(holder) == "hello"

    def ctl_run(*args: str) -> str:
        r = subprocess.run([ctl, "-d", dw.socket, *args], capture_output=True, text=True,
                           timeout=20)
        assert r.returncode == 0, r.stderr
        return r.stdout

    rows = {ln.split()[0]: ln.split() for ln in ctl_run("services").splitlines()[1:]}
    assert rows["shown"][1:5] == [svc["vip"], svc["vip6"], "8910", "1"]
    assert "tier=front" in rows["shown"]
    (inst,) = [i for i in json.loads(ctl_run("instances", "--json"))["return"]["entries"]
               if i["name"] == "shown"]
    assert inst["labels"] == {"tier": "front"} and inst["port"] == 8910
    (host,) = json.loads(ctl_run("hosts", "--json"))["return"]["entries"]  # memory: just us
    assert host["local"] and host["addr"] == "127.0.0.1" and inst["node"] == host["node"]
    assert rows["shown"][5] == host["node"]
    clients = [ln.split() for ln in ctl_run("clients").splitlines()[1:]]
    assert any(c[1] == "shown" and c[2] == svc["vip"] and c[3] == "8910" for c in clients)
    profile = json.loads(ctl_run("seccomp-profile"))
    assert profile["listenerPath"] == dw.api("info")["agent_socket"]
    assert profile["syscalls"][0]["action"] == "SCMP_ACT_NOTIFY"
    assert holder.stdin is not None
    holder.stdin.close()
    holder.wait(10)


TWO_LISTENERS = """
import socket
socks = []
for port in (7100, 7101):  # both bound before either listens, as servers often do
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    socks.append(s)
for s in socks:
    s.listen()
print("both listening", flush=True)
"""


def test_published_ports_from_a_range_are_never_shared() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for namespaces")
    import socket as sk

    with sk.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        low = probe.getsockname()[1]
    w = DirectoryWorld("--port-range", f"{low}-{low + 1}")
    try:
        for _ in range(4):  # the range's start is random: a shared port would show soon
            r = w.python(TWO_LISTENERS, name="pair")
            assert r.returncode == 0 and "both listening" in r.stdout, r.stderr
    finally:
        w.close()
