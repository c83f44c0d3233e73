"""Guest-side probes (run with any python3 inside the guest namespace):

    probe.py rr HOST PORT COUNT           request/response latency: p50 and p99 in us
    probe.py crr HOST PORT SECONDS        new connections per second
    probe.py hold HOST PORT COUNT FILE    open COUNT connections, touch FILE, wait for stdin
    probe.py dns SERVER SECONDS INFLIGHT NAME ADDR
                                          DNS queries per second: INFLIGHT A queries for
                                          NAME kept in flight against SERVER:53 for
                                          SECONDS; answered qps, p50 latency in us,
                                          timeouts (no answer in 1 s) and wrong answers
                                          (not ADDR)
    probe.py names HOST PORT COUNT        getsockname() cost in us per call (the best of
                                          5 rounds of COUNT/5): on a socket connected to
                                          HOST:PORT, and on one listening on 127.0.0.1
                                          (under netstackd: a trap answered, and a trap
                                          continued into the netns)
    probe.py gso HOST PORT SEG SECONDS    host->guest UDP from a GSO sender (a QUIC
                                          server's UDP_SEGMENT writes of 64 KiB, datagrams
                                          of SEG bytes) to a socket reading coalesced
                                          (UDP_GRO), as a QUIC client's does: Gbit/s
                                          received and the loss
    probe.py gsosend HOST PORT SEG SECONDS
                                          the same guest->host: this side's GSO writes to
                                          gsoserve's coalesced reads
and the host-side servers for them:
    probe.py serve PORT                   echo (rr), accept-and-close (crr), hold
    probe.py gsoserve PORT                the GSO sender ("go SEG SECONDS": a run to the
                                          asker, "end BYTES" from PORT+1 closes it) and
                                          receiver ("take": counts until "done", answers
                                          "got BYTES SECONDS" from PORT+1)
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import select
import socket
import struct
import sys
import time


def raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rr(host: str, port: int, count: int) -> dict[str, float]:
    s = socket.create_connection((host, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"x" * 64
    times = []
    for i in range(count + 100):
        t0 = time.perf_counter_ns()
        s.sendall(msg)
        got = 0
        while got < len(msg):
            got += len(s.recv(4096))
        if i >= 100:  # warm-up
            times.append(time.perf_counter_ns() - t0)
    times.sort()
    return {"p50_us": times[len(times) // 2] / 1000, "p99_us": times[len(times) * 99 // 100] / 1000}


def crr(host: str, port: int, seconds: float) -> dict[str, float]:
    n = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds and n < 200_000:
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(b"c")
        s.recv(1)
        s.close()
        n += 1
    return {"conn_per_s": n / (time.monotonic() - t0)}


def per_call_us(sock: socket.socket, count: int, rounds: int = 5) -> float:
    """The best round: on a shared machine the slow rounds measure the neighbours."""
    for _ in range(100):  # warm-up
        sock.getsockname()
    per_round = max(1, count // rounds)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for _ in range(per_round):
            sock.getsockname()
        best = min(best, (time.perf_counter_ns() - t0) / per_round / 1000)
    return best


def names(host: str, port: int, count: int) -> dict[str, float]:
    with socket.create_connection((host, port), timeout=10) as connected, socket.socket() as local:
        local.bind(("127.0.0.1", 0))
        local.listen()
        return {
            "connected_us": per_call_us(connected, count),
            "local_us": per_call_us(local, count),
        }


def hold(host: str, port: int, count: int, flag: str) -> None:
    raise_nofile()
    socks = [socket.create_connection((host, port), timeout=10) for _ in range(count)]
    open(flag, "w").close()
    sys.stdin.read()
    for s in socks:
        s.close()


DNS_TIMEOUT_S = 1.0
DNS_MAX_SECONDS = 30.0


def dns_query(qid: int, name: str) -> bytes:
    """An A/IN query with recursion desired."""
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p)
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + b"\0\1\0\1"


def dns(
    server: str, seconds: float, inflight: int, name: str, addr: str, port: int = 53
) -> dict[str, float]:
    """Keep `inflight` queries outstanding on one non-blocking socket, matched by id."""
    seconds = min(seconds, DNS_MAX_SECONDS)
    want = socket.inet_aton(addr)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.connect((server, port))
    s.setblocking(False)
    questions = dns_query(0, name)[2:]
    pending: dict[int, int] = {}  # id -> send time, ns
    lat: list[int] = []
    sent = timeouts = wrong = 0

    def send_one() -> bool:
        nonlocal sent
        qid = random.getrandbits(16)
        while qid in pending:
            qid = random.getrandbits(16)
        try:
            s.send(struct.pack("!H", qid) + questions)
        except BlockingIOError:
            return False
        pending[qid] = time.perf_counter_ns()
        sent += 1
        return True

    t0 = time.perf_counter_ns()
    end = t0 + int(seconds * 1e9)
    for _ in range(inflight):
        send_one()
    while (now := time.perf_counter_ns()) < end:
        select.select([s], [], [], 0.05)
        while True:
            try:
                reply = s.recv(4096)
            except BlockingIOError:
                break
            now = time.perf_counter_ns()
            if len(reply) < 12:
                continue
            start = pending.pop(struct.unpack_from("!H", reply)[0], None)
            if start is None:
                continue  # late, after its timeout
            ancount = struct.unpack_from("!H", reply, 6)[0]
            # the answer's RDATA ends the reply (one A record, no other sections)
            if ancount < 1 or reply[-4:] != want:
                wrong += 1
            else:
                lat.append(now - start)
            send_one()
        for qid, start in list(pending.items()):
            if now - start > DNS_TIMEOUT_S * 1e9:
                del pending[qid]
                timeouts += 1
        while len(pending) < inflight and send_one():
            pass
    elapsed = (time.perf_counter_ns() - t0) / 1e9
    lat.sort()
    return {
        "qps": len(lat) / elapsed,
        "answered": len(lat),
        "p50_us": lat[len(lat) // 2] / 1000 if lat else float("nan"),
        "timeouts": timeouts,
        "wrong": wrong,
        "sent": sent,
    }


SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
GSO_BYTES = 65000  # a GSO write: under the largest UDP payload


def gso_writes(sock: socket.socket, to: tuple[str, int], seg: int, seconds: float) -> int:
    """UDP_SEGMENT writes of GSO_BYTES (datagrams of seg bytes) to `to` at no rate limit
    for the seconds given (30 at most); the bytes the kernel took."""
    blob = bytes(seg * max(1, GSO_BYTES // seg))
    control = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", seg))]
    sent = 0
    end = time.monotonic() + min(seconds, 30)
    while time.monotonic() < end:
        for _ in range(16):
            try:
                sent += sock.sendmsg([blob], control, 0, to)
            except OSError:  # ENOBUFS and the like: the rate is the receiver's
                pass
    return sent


def gso_serve(port: int) -> None:
    """Serve `gso` and `gsosend` runs one at a time. "go SEG SECONDS": UDP_SEGMENT writes
    to the asker at no rate limit for the seconds asked, then the bytes sent, from the
    port above (another peer, so no stack merges it into the data), a few times.
    "take": count what the asker sends, read coalesced (UDP_GRO), until a "done" from
    another of its ports or a second of silence; then "got BYTES SECONDS" from the port
    above."""
    data = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    data.bind(("0.0.0.0", port))
    data.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    data.setsockopt(SOL_UDP, UDP_GRO, 1)
    marks = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    marks.bind(("0.0.0.0", port + 1))
    print("ready", flush=True)
    buf = bytearray(1 << 16)
    while True:
        data.settimeout(None)
        n, peer = data.recvfrom_into(buf)
        words = bytes(buf[:n]).split()
        if len(words) == 3 and words[0] == b"go":
            sent = gso_writes(data, peer, int(words[1]), float(words[2]))
            for _ in range(5):
                marks.sendto(b"end %d" % sent, peer)
                time.sleep(0.02)
        elif words == [b"take"]:
            got, first, last = 0, 0.0, 0.0
            data.settimeout(1)
            while True:
                try:
                    n, sender = data.recvfrom_into(buf)
                except TimeoutError:
                    break
                if sender == peer:
                    last = time.monotonic()
                    first = first or last
                    got += n
                elif sender[0] == peer[0] and bytes(buf[:4]) == b"done":
                    break
            marks.sendto(b"got %d %f" % (got, last - first), peer)


def gso(host: str, port: int, seg: int, seconds: float) -> dict[str, float]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # as far as rmem_max allows
    try:
        s.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        pass  # a kernel before 5.0: one datagram a read
    s.settimeout(2)
    s.sendto(b"go %d %f" % (seg, seconds), (host, port))
    buf = bytearray(1 << 16)
    got = 0
    first = last = 0.0
    sent = None
    while sent is None:
        try:
            n, peer = s.recvfrom_into(buf)
        except TimeoutError:
            break
        if peer[1] == port + 1:
            sent = int(bytes(buf[4:n]))
            break
        now = time.monotonic()
        if not got:
            first = now
        got += n
        last = now
    if not got or sent is None:
        raise SystemExit(f"gso: received {got} bytes, end mark {'seen' if sent else 'missing'}")
    return {
        "gbit_s": got * 8 / max(last - first, 1e-6) / 1e9,
        "loss_pct": 100 * (1 - got / sent) if sent else 0.0,
        "bytes": got,
    }


def gso_send(host: str, port: int, seg: int, seconds: float) -> dict[str, float]:
    """Guest->host UDP from a GSO sender (this side's 64 KiB UDP_SEGMENT writes) to
    gsoserve's coalesced reads: Gbit/s received and the loss."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(b"take", (host, port))
    time.sleep(0.05)
    sent = gso_writes(s, (host, port), seg, seconds)
    done = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    done.settimeout(0.2)
    answer = None
    for _ in range(20):  # until the answer comes: "done" may be lost on a full queue
        done.sendto(b"done", (host, port))
        try:
            answer = s.recv(100).split()
            break
        except TimeoutError:
            pass
    if not answer or answer[0] != b"got":
        raise SystemExit("gsosend: no count from the receiver")
    got, span = int(answer[1]), float(answer[2])
    return {
        "gbit_s": got * 8 / max(span, 1e-6) / 1e9,
        "loss_pct": 100 * (1 - got / sent) if sent else 0.0,
        "bytes": got,
    }


async def serve(port: int) -> None:
    raise_nofile()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(client, "0.0.0.0", port, backlog=4096)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "serve":
        asyncio.run(serve(int(sys.argv[2])))
    elif kind == "rr":
        print(json.dumps(rr(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
    elif kind == "crr":
        print(json.dumps(crr(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))))
    elif kind == "dns":
        a = sys.argv
        print(json.dumps(dns(a[2], float(a[3]), int(a[4]), a[5], a[6])))
    elif kind == "names":
        print(json.dumps(names(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
    elif kind == "gsoserve":
        gso_serve(int(sys.argv[2]))
    elif kind == "gso":
        a = sys.argv
        print(json.dumps(gso(a[2], int(a[3]), int(a[4]), float(a[5]))))
    elif kind == "gsosend":
        a = sys.argv
        print(json.dumps(gso_send(a[2], int(a[3]), int(a[4]), float(a[5]))))
    elif kind == "hold":
        hold(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
