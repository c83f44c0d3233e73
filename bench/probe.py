"""Guest-side probes (run with any python3 inside the guest namespace):

    probe.py rr HOST PORT COUNT           request/response latency: p50 and p99 in us
    probe.py crr HOST PORT SECONDS        new connections per second
    probe.py hold HOST PORT COUNT FILE    open COUNT connections, touch FILE, wait for stdin
    probe.py names HOST PORT COUNT        getsockname() cost in us per call (the best of
                                          5 rounds of COUNT/5): on a socket connected to
                                          HOST:PORT, and on one listening on 127.0.0.1
                                          (under netstackd: a trap answered, and a trap
                                          continued into the netns)
and the host-side server for them:
    probe.py serve PORT                   echo (rr), accept-and-close (crr), hold
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
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
    elif kind == "names":
        print(json.dumps(names(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
    elif kind == "hold":
        hold(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
