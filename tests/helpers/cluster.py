"""Two "hosts" sharing one directory in etcd: two DirectoryWorld network namespaces on a
veth (192.0.2.1 and 192.0.2.2, TEST-NET-1, nothing else on that link), a real etcd
(Debian's etcd-server) listening in host A, and a netstackd in each with
`--store etcd://192.0.2.1:2379 --publish-addr 192.0.2.N`. Everything stays in the
namespaces the test made and goes with close(), also when setting up fails."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from typing import Any

from tests.helpers.directory import DirectoryWorld, wait_until
from tests.netns import sh

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCD_ADDR = "192.0.2.1"

# a CA, a server certificate (also for clientAuth: etcd dials its own gateway with it)
# and a client certificate
TLS_SCRIPT = """set -e
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=test-ca
printf 'subjectAltName=IP:{addr}\\nextendedKeyUsage=serverAuth,clientAuth\\n' > server.ext
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=etcd
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt \\
  -days 2 -extfile server.ext
printf 'extendedKeyUsage=clientAuth\\n' > client.ext
openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=netstackd
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt \\
  -days 2 -extfile client.ext
"""


class Host(DirectoryWorld):
    """A DirectoryWorld whose netstackd starts only once the cluster's network is up."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self._deferred = True
        super().__init__()
        self._deferred = False
        self.daemon_args: list[str] = []

    def start_daemon(self, *args: str) -> None:
        if self._deferred:
            return
        super().start_daemon(*(args or tuple(self.daemon_args)))


class Cluster:
    def __init__(self, ttl: int = 2, tls: bool = False, members: int = 1) -> None:
        """tls: etcd serves HTTPS and wants client certificates (a CA made here).
        members: 3 runs a three-member etcd cluster in host A (clients on ports 2379,
        2479, 2579 of 192.0.2.1; self.etcd is member 0, self.members all of them)."""
        self.hosts: list[Host] = []
        self.etcd: subprocess.Popen[bytes] | None = None
        self.members: list[subprocess.Popen[bytes]] = []
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://{ETCD_ADDR}:2379"
        self.urls = [f"http://{ETCD_ADDR}:{2379 + 100 * i}" for i in range(members)]
        try:
            self.a = Host("192.0.2.1")
            self.hosts.append(self.a)
            self.b = Host("192.0.2.2")
            self.hosts.append(self.b)
            self.data = self.a.dir / "etcd-data"
            self.etcd_log = self.a.dir / "etcd.log"
            self.pki = self.a.dir / "pki"
            if tls:
                self.pki.mkdir()
                subprocess.run(["sh", "-c", TLS_SCRIPT.replace("{addr}", ETCD_ADDR)],
                               cwd=self.pki, check=True, capture_output=True, timeout=60)
            sh("ip", "-n", self.a.host, "link", "add", "veth0", "type", "veth", "peer", "name",
               "veth0", "netns", self.b.host)
            for h in self.hosts:
                sh("ip", "-n", h.host, "addr", "add", f"{h.addr}/24", "dev", "veth0")
                sh("ip", "-n", h.host, "link", "set", "veth0", "up")
            if members == 1:
                self.start_etcd()
            else:
                self.start_members()
            for h in self.hosts:
                # B's first endpoint has no etcd: B fails over to the next one
                store = f"etcd://{ETCD_ADDR}:2379"
                if members > 1:
                    store = "etcd://" + ",".join(u.split("//")[1] for u in self.urls)
                elif h is self.b:
                    store = f"etcd://{ETCD_ADDR}:2390,{ETCD_ADDR}:2379"
                h.daemon_args = ["--store", store, "--publish-addr",
                                 h.addr, "--port-range", "20000-20999", "--etcd-ttl",
                                 str(ttl), "--node", f"host-{h.addr}", "--connect-wait", "8"]
                if tls:
                    h.daemon_args += ["--etcd-cacert", str(self.pki / "ca.crt"),
                                      "--etcd-cert", str(self.pki / "client.crt"),
                                      "--etcd-key", str(self.pki / "client.key")]
                h.start_daemon()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ etcd
    def start_etcd(self) -> None:
        tls = []
        if self.tls:
            tls = ["--cert-file", str(self.pki / "server.crt"),
                   "--key-file", str(self.pki / "server.key"),
                   "--client-cert-auth", "--trusted-ca-file", str(self.pki / "ca.crt")]
        with open(self.etcd_log, "ab") as log:
            self.etcd = subprocess.Popen(
                ["ip", "netns", "exec", self.a.host, ETCD, "--name", "t",
                 "--data-dir", str(self.data),
                 "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                 "--listen-peer-urls", "http://127.0.0.1:2380",
                 "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                 "--initial-cluster", "t=http://127.0.0.1:2380", *tls],
                stdout=log, stderr=log)
        wait_until(lambda: self.etcd_healthy() or self.etcd.poll() is not None, 20,
                   "etcd")
        assert self.etcd.poll() is None, self.etcd_log.read_text()[-3000:]

    def start_members(self) -> None:
        peers = ",".join(f"m{i}=http://127.0.0.1:{2380 + 100 * i}"
                         for i in range(len(self.urls)))
        for i, url in enumerate(self.urls):
            with open(self.a.dir / f"etcd-m{i}.log", "ab") as log:
                self.members.append(subprocess.Popen(
                    ["ip", "netns", "exec", self.a.host, ETCD, "--name", f"m{i}",
                     "--data-dir", str(self.a.dir / f"etcd-m{i}"),
                     "--listen-client-urls", url, "--advertise-client-urls", url,
                     "--listen-peer-urls", f"http://127.0.0.1:{2380 + 100 * i}",
                     "--initial-advertise-peer-urls", f"http://127.0.0.1:{2380 + 100 * i}",
                     "--initial-cluster", peers, "--initial-cluster-state", "new",
                     "--heartbeat-interval", "100", "--election-timeout", "1000"],
                    stdout=log, stderr=log))
        self.etcd = self.members[0]
        wait_until(lambda: all(self.status(i) for i in range(len(self.urls)))
                   or any(m.poll() is not None for m in self.members), 30, "etcd members")
        assert all(m.poll() is None for m in self.members), "an etcd member exited"

    def status(self, member: int) -> dict[str, Any] | None:
        """A member's /v3/maintenance/status (None: it does not answer)."""
        try:
            return dict(self.etcd_call("/v3/maintenance/status", {}, self.urls[member]))
        except (OSError, ValueError):
            return None

    def leader(self) -> int:
        """The index of the live member that leads now (waits for an election)."""
        def leads(i: int) -> bool:
            st = self.status(i) if self.members[i].poll() is None else None
            return bool(st and st.get("leader") and st["leader"] == st["header"]["member_id"])
        found = wait_until(lambda: [i for i in range(len(self.members)) if leads(i)], 15,
                           "an etcd leader")
        return int(found[0])

    def stop_etcd(self, sig: int = signal.SIGKILL) -> None:
        assert self.etcd is not None
        self.etcd.send_signal(sig)
        self.etcd.wait(10)

    def etcd_call(self, path: str, body: dict[str, Any], url: str | None = None) -> Any:
        """etcd's JSON gateway (/v3/...), from inside host A."""
        tls = []
        if self.tls:
            tls = ["--cacert", str(self.pki / "ca.crt"), "--cert", str(self.pki / "client.crt"),
                   "--key", str(self.pki / "client.key")]
        r = self.a.in_host("curl", "-sf", "-m", "3", *tls, "-X", "POST", f"{url or self.url}{path}",
                           "-d", json.dumps(body), timeout=10)
        if r.returncode != 0:
            raise OSError(f"etcd {path}: curl exited {r.returncode}")
        return json.loads(r.stdout)

    def etcd_healthy(self) -> bool:
        try:
            return bool(self.etcd_call("/v3/kv/range", {"key": "AA=="}))
        except (OSError, ValueError):
            return False

    def compact(self) -> int:
        revision = int(self.etcd_call("/v3/kv/range", {"key": "AA=="})["header"]["revision"])
        self.etcd_call("/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision

    def link(self, host: Host, up: bool) -> None:
        sh("ip", "-n", host.host, "link", "set", "veth0", "up" if up else "down")

    # --------------------------------------------------------------- cleanup
    def close(self) -> None:
        for h in self.hosts:  # daemons first: they revoke their leases
            for p in h.procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
        for h in reversed(self.hosts):
            h.close()  # (etcd's namespace goes with host A)
        for etcd in {self.etcd, *self.members} - {None}:
            assert etcd is not None
            if etcd.poll() is None:
                etcd.kill()
                etcd.wait(5)

