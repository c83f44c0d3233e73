"""A hostile guest: raw frames straight onto the TAP (AF_PACKET), inside the guest
namespace. `python hostile.py KIND COUNT [SEED]`; prints how many frames it sent.

  garbage   malformed and odd frames of every layer (see `garbage_frames`)
  synflood  TCP SYNs to 10.0.2.2:PORT (argv[4]) from spoofed source ports
  udpflood  UDP datagrams from distinct source ports to 10.0.2.2:PORT (argv[4])
  pingflood ICMP echo requests to the gateway
  v6loopback IPv6 SYNs and UDP to ::1, ::, ::ffff:127.0.0.1, fd00::2, fe80::2 port 22
  inflow    odd segments inside a live connection to 10.0.2.2:PORT (argv[3]): its
            ports and numbers are read off the guest's own frames (see `inflow_frames`)
"""

from __future__ import annotations

import os
import random
import socket
import struct
import sys
import time

GW_MAC = bytes.fromhex("52550a000202")
DNS_MAC = bytes.fromhex("52550a000203")
GUEST_IP = socket.inet_aton("10.0.2.100")
GW_IP = socket.inet_aton("10.0.2.2")


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip_header(
    proto: int,
    payload_len: int,
    src: bytes = GUEST_IP,
    dst: bytes = GW_IP,
    ident: int = 1,
    frag: int = 0x4000,
    ihl: int = 5,
    total: int | None = None,
    options: bytes = b"",
) -> bytes:
    total = 20 + len(options) + payload_len if total is None else total
    h = (
        struct.pack(
            "!BBHHHBBH4s4s", 0x40 | ihl, 0, total & 0xFFFF, ident, frag, 64, proto, 0, src, dst
        )
        + options
    )
    return h[:10] + struct.pack("!H", csum(h)) + h[12:]


def tcp_header(
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    options: bytes = b"",
    offset: int | None = None,
) -> bytes:
    off = (20 + len(options)) // 4 if offset is None else offset
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, off << 4, flags, 65535, 0, 0) + options


def eth(
    payload: bytes, ethertype: int = 0x0800, src: bytes | None = None, dst: bytes = GW_MAC
) -> bytes:
    return dst + (src or MY_MAC) + struct.pack("!H", ethertype) + payload


def garbage_frames(rng: random.Random, n: int) -> list[bytes]:
    out: list[bytes] = []
    while len(out) < n:
        k = rng.randrange(16)
        if k == 0:  # random bytes of any length
            out.append(os.urandom(rng.randrange(0, 200)))
        elif k == 1:  # truncated IPv4 header
            out.append(eth(ip_header(6, 0)[: rng.randrange(0, 20)]))
        elif k == 2:  # total_length larger than the frame, or smaller than the header
            out.append(eth(ip_header(17, 8, total=rng.choice([0, 5, 19, 60000])) + b"\0" * 8))
        elif k == 3:  # bad IP checksum
            h = bytearray(ip_header(17, 8))
            h[10] ^= 0xFF
            out.append(eth(bytes(h) + b"\0" * 8))
        elif k == 4:  # odd TCP flags and data offsets
            flags = rng.choice([0, 0x03, 0x3F, 0xFF, 0x06, 0x05, 0x29])
            t = tcp_header(
                rng.randrange(1, 65536),
                80,
                rng.getrandbits(32),
                rng.getrandbits(32),
                flags,
                offset=rng.choice([0, 2, 5, 15]),
            )
            out.append(eth(ip_header(6, len(t)) + t))
        elif k == 5:  # malformed TCP options
            opts = rng.choice(
                [
                    b"\x02\x00\x00\x00",
                    b"\x08\x30\x00\x00",
                    b"\x03\x01\x00\x00",
                    b"\x05\xff\x00\x00",
                    bytes([rng.randrange(256)]) * 4,
                ]
            )
            t = tcp_header(rng.randrange(1, 65536), 80, 1, 0, 0x02, options=opts)
            out.append(eth(ip_header(6, len(t)) + t))
        elif k == 6:  # IP fragments: random offsets, overlaps, huge offsets
            frag = rng.choice([0x2000, 0x2001, 0x1FFF, 0x2000 | rng.randrange(8192), 5])
            body = os.urandom(rng.choice([8, 16, 24, 7]))
            out.append(eth(ip_header(17, len(body), ident=rng.randrange(8), frag=frag) + body))
        elif k == 7:  # ARP garbage
            out.append(eth(os.urandom(rng.randrange(0, 40)), 0x0806, dst=b"\xff" * 6))
        elif k == 8:  # DHCP garbage
            u = struct.pack("!HHHH", 68, 67, 8 + 250, 0) + os.urandom(250)
            out.append(
                eth(ip_header(17, len(u), src=b"\0" * 4, dst=b"\xff" * 4) + u, dst=b"\xff" * 6)
            )
        elif k == 9:  # UDP length lies
            u = struct.pack("!HHHH", 1000, 53, rng.choice([0, 3, 9000]), 0) + b"x" * 10
            out.append(eth(ip_header(17, len(u)) + u))
        elif k == 10:  # spoofed sources: loopback, the gateway, outside the network
            src = rng.choice([b"\x7f\0\0\x01", GW_IP, b"\x08\x08\x08\x08", b"\0\0\0\0"])
            t = tcp_header(rng.randrange(1, 65536), 80, 1, 0, 0x02)
            out.append(eth(ip_header(6, len(t), src=src) + t))
        elif k == 11:  # destinations that must never be reached: loopback, 0.0.0.0...
            dst = rng.choice(
                [
                    b"\x7f\0\0\x01",
                    b"\x7f\x01\x02\x03",
                    b"\0\0\0\0",
                    b"\xff\xff\xff\xff",
                    b"\xe0\0\0\x01",
                ]
            )
            t = tcp_header(rng.randrange(1, 65536), 22, 1, 0, 0x02)
            out.append(eth(ip_header(6, len(t), dst=dst) + t))
        elif k == 12:  # ICMP of every type, truncated
            body = bytes([rng.randrange(256), rng.randrange(256)]) + os.urandom(
                rng.randrange(0, 12)
            )
            out.append(eth(ip_header(1, len(body)) + body))
        elif k == 13:  # IPv4 options of odd lengths
            opts = os.urandom(4 * rng.randrange(1, 10))
            out.append(eth(ip_header(17, 8, ihl=5 + len(opts) // 4, options=opts) + b"\0" * 8))
        elif k == 14:  # spoofed MACs: ours, zero, multicast
            src = rng.choice([GW_MAC, DNS_MAC, b"\0" * 6, b"\x01\0\x5e\0\0\x01"])
            t = tcp_header(rng.randrange(1, 65536), 80, 1, 0, 0x02)
            out.append(eth(ip_header(6, len(t)) + t, src=src))
        else:  # unknown protocols and ethertypes
            if rng.random() < 0.5:
                out.append(eth(ip_header(rng.choice([0, 4, 41, 47, 50, 132, 255]), 8) + b"\0" * 8))
            else:
                out.append(eth(os.urandom(30), rng.choice([0x86DD, 0x8100, 0x88CC, 0x1234])))
    return out


ROUTER_MAC6 = bytes.fromhex("525600000002")


def v6_loopback_frames(count: int) -> list[bytes]:
    """IPv6 packets from the guest's own address to loopback in every disguise."""
    src = socket.inet_pton(socket.AF_INET6, guest_v6())
    dsts = ["::1", "::", "::ffff:127.0.0.1", "::127.0.0.1", "fd00::2", "fe80::2", "fd00::7"]
    out = []
    for i in range(count):
        dst = socket.inet_pton(socket.AF_INET6, dsts[i % len(dsts)])
        if i % 2:
            l4 = tcp_header(2000 + i % 1000, 22, i, 0, 0x02)
            nh = 6
        else:
            l4 = struct.pack("!HHHH", 2000 + i % 1000, 22, 8 + 4, 0) + b"ping"
            nh = 17
        ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(l4), nh, 64, src, dst)
        out.append(eth(ip6 + l4, 0x86DD, dst=ROUTER_MAC6))
    return out


def guest_v6() -> str:
    with open("/proc/net/if_inet6") as f:
        for line in f:
            fields = line.split()
            if fields[5] == "tap0" and fields[0].startswith("fd00"):
                return socket.inet_ntop(socket.AF_INET6, bytes.fromhex(fields[0]))
    return "fd00::100"


def sniff_flow(port: int, timeout: float = 10.0) -> tuple[int, int, int, int]:
    """(guest port, seq, ack, window) of the guest's latest segment to 10.0.2.2:port."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # outgoing too
    s.bind(("tap0", 0))
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                frame, addr = s.recvfrom(65535)
            except TimeoutError:
                break
            if addr[2] != socket.PACKET_OUTGOING or len(frame) < 54:
                continue
            ip = frame[14:]
            ihl = (ip[0] & 0xF) * 4
            if frame[12:14] != b"\x08\x00" or ip[9] != 6 or ip[16:20] != GW_IP:
                continue
            sport, dport, seq, ack = struct.unpack_from("!HHII", ip, ihl)
            window = struct.unpack_from("!H", ip, ihl + 14)[0]
            if dport == port:
                return sport, seq, ack, window
    finally:
        s.close()
    raise SystemExit("no live flow to sniff")


def inflow_frames(port: int, sport: int, seq: int, ack: int, window: int) -> list[bytes]:
    """Segments a hostile guest may send inside its own connection: none may stall or
    corrupt the transfer beyond what the guest asked for (its ACK/window lies)."""

    def seg(seq_: int, ack_: int, flags: int, payload: bytes = b"", options: bytes = b"",
            win: int = window) -> bytes:  # fmt: skip
        t = tcp_header(sport, port, seq_ & 0xFFFFFFFF, ack_ & 0xFFFFFFFF, flags, options)
        t = t[:14] + struct.pack("!H", win) + t[16:]
        return eth(ip_header(6, len(t) + len(payload)) + t + payload)

    ack_flag, psh, urg = 0x10, 0x08, 0x20
    sack = b"\x01\x01\x05\x0a" + struct.pack("!II", ack - 3000, ack - 1000)
    return [
        seg(seq - 50, ack, ack_flag | psh, b"o" * 50),  # old data again
        seg(seq + 1_000_000, ack, ack_flag | psh, b"f" * 100),  # far beyond the window
        seg(seq, ack + 0x40000000, ack_flag),  # acknowledges what was never sent
        seg(seq - 1, ack, ack_flag),  # a keepalive / window probe
        seg(seq, ack, ack_flag, options=sack),  # SACK blocks
        seg(seq, ack, ack_flag | urg),  # urgent pointer set
        seg(seq, ack, ack_flag),  # duplicate ACKs: three of them ask for a retransmit
        seg(seq, ack, ack_flag),
        seg(seq, ack, ack_flag),
        seg(seq, ack, ack_flag, win=0),  # the window slams shut
        seg(seq, ack - 0x40000000, ack_flag),  # an ACK from long ago
    ]


def main() -> None:
    kind, count = sys.argv[1], int(sys.argv[2])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("tap0", 0))
    global MY_MAC
    MY_MAC = s.getsockname()[4]
    sent = 0
    if kind == "garbage":
        rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
        frames = garbage_frames(rng, count)
    elif kind == "synflood":
        port = int(sys.argv[3])
        frames = [
            eth(ip_header(6, 20) + tcp_header(1024 + i % 64000, port, i, 0, 0x02))
            for i in range(count)
        ]
    elif kind == "udpflood":
        port = int(sys.argv[3])
        frames = [
            eth(ip_header(17, 12) + struct.pack("!HHHH", 1024 + i % 64000, port, 12, 0) + b"flood")
            for i in range(count)
        ]
    elif kind == "pingflood":
        frames = []
        for i in range(count):
            icmp = struct.pack("!BBHHH", 8, 0, 0, 0x4242, i & 0xFFFF) + b"x" * 56
            icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
            frames.append(eth(ip_header(1, len(icmp)) + icmp))
    elif kind == "v6loopback":
        frames = v6_loopback_frames(count)
    elif kind == "inflow":  # count rounds, each with freshly sniffed numbers
        port = int(sys.argv[3])
        numbers = sniff_flow(port)
        for i in range(count):
            if i % 5 == 4:  # fresher numbers when the guest sends some (it is slow)
                try:
                    numbers = sniff_flow(port, timeout=0.5)
                except SystemExit:
                    pass
            for f in inflow_frames(port, *numbers):
                s.send(f)
                sent += 1
            time.sleep(0.05)
        print(sent)
        return
    else:
        raise SystemExit(f"unknown kind {kind}")
    pace = kind == "garbage"  # garbage is paced so the stack parses it all, not the ring
    for i, f in enumerate(frames):
        if pace and i % 128 == 127:
            time.sleep(0.002)
        if len(f) < 14:
            f = f.ljust(14, b"\0")
        try:
            s.send(f)
            sent += 1
        except OSError:
            pass  # the TAP queue is full: the flood outran the stack, as intended
    print(sent)


MY_MAC = b"\x02\0\0\0\0\x01"

if __name__ == "__main__":
    main()
