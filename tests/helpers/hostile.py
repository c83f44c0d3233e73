"""A hostile guest: raw frames straight onto the TAP (AF_PACKET), inside the guest
namespace. `python hostile.py KIND COUNT [SEED]`; prints how many frames it sent.

  garbage   malformed and odd frames of every layer (see `garbage_frames`)
  mutate    well-formed frames of every kind (ARP, IPv4/IPv6, TCP, UDP, ICMP, DHCP, NDP,
            fragments) with bits flipped, cut short or lying lengths (see `mutate`)
  dnsflood  UDP DNS queries to 10.0.2.3 from distinct source ports
  neighbours IPv6 NDP and echoes, each naming a fresh address (see `neighbour_frames`)
  synflood  TCP SYNs to 10.0.2.2:PORT (argv[4]) from spoofed source ports
  udpflood  UDP datagrams from distinct source ports to 10.0.2.2:PORT (argv[4])
  pingflood ICMP echo requests to the gateway
  v6loopback IPv6 SYNs and UDP to ::1, ::, ::ffff:127.0.0.1, fd00::2, fe80::2 port 22
  overrun   raw connections from a spoofed in-network address to 10.0.2.2:PORT that
            push bytes in order whatever the window (see `overrun`)
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


def v6_frame(nh: int, l4: bytes, src: bytes, dst: bytes, dst_mac: bytes = ROUTER_MAC6) -> bytes:
    """An IPv6 frame with the L4 checksum filled (at csum_at in l4, if any)."""
    at = {6: 16, 17: 6, 58: 2}.get(nh)
    if at is not None and len(l4) >= at + 2:
        pseudo = src + dst + struct.pack("!IxxxB", len(l4), nh)
        l4 = l4[:at] + b"\0\0" + l4[at + 2 :]
        l4 = l4[:at] + struct.pack("!H", csum(pseudo + l4)) + l4[at + 2 :]
    hops = 255 if nh == 58 else 64  # NDP insists on 255
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(l4), nh, hops, src, dst)
    return eth(ip6 + l4, 0x86DD, dst=dst_mac)


def valid_frames(rng: random.Random) -> list[bytes]:
    """One well-formed frame of each kind the stack parses: the seeds for mutation."""
    me6 = socket.inet_pton(socket.AF_INET6, "fd00::100")
    ll6 = socket.inet_pton(socket.AF_INET6, "fe80::100")
    router6 = socket.inet_pton(socket.AF_INET6, "fe80::2")
    far6 = socket.inet_pton(socket.AF_INET6, "2001:db8::2")
    sport = rng.randrange(1024, 65536)
    syn = tcp_header(sport, 7000, rng.getrandbits(32), 0, 0x02, b"\x02\x04\x05\xb4")
    dnsq = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x04test\x00\x00\x01\x00\x01"
    udp_dns = struct.pack("!HHHH", sport, 53, 8 + len(dnsq), 0) + dnsq
    udp_far = struct.pack("!HHHH", sport, 9, 8 + 5, 0) + b"hello"
    echo = struct.pack("!BBHHH", 8, 0, 0, 0x4242, 1) + b"x" * 16
    echo = echo[:2] + struct.pack("!H", csum(echo)) + echo[4:]
    dhcp = bytearray(240)
    dhcp[0:4] = b"\x01\x01\x06\x00"
    dhcp[28:34] = MY_MAC
    dhcp[236:240] = b"\x63\x82\x53\x63"
    dhcp += b"\x35\x01\x01" + b"\x37\x03\x01\x03\x06" * 3 + b"\x0c\x02hh" * 4 + b"\xff"
    udp_dhcp = struct.pack("!HHHH", 68, 67, 8 + len(dhcp), 0) + bytes(dhcp)
    body = os.urandom(32)
    frag_udp = struct.pack("!HHHH", sport, 9, 8 + len(body), 0) + body
    ns = struct.pack("!BBHI16s", 135, 0, 0, 0, router6) + b"\x01\x01" + MY_MAC
    rs = struct.pack("!BBHI", 133, 0, 0, 0) + b"\x01\x01" + MY_MAC
    na = struct.pack("!BBHI16s", 136, 0, 0, 0x20000000, me6) + b"\x02\x01" + MY_MAC
    echo6 = struct.pack("!BBHHH", 128, 0, 0, 7, 1) + b"y" * 16
    frag6 = struct.pack("!BBHI", 17, 0, 0x0001, rng.getrandbits(32)) + frag_udp[:16]
    arp_req = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, MY_MAC, GUEST_IP, bytes(6), GW_IP)
    return [
        eth(arp_req, 0x0806, dst=b"\xff" * 6),
        eth(ip_header(6, len(syn)) + syn),
        eth(ip_header(17, len(udp_dns), dst=socket.inet_aton("10.0.2.3")) + udp_dns, dst=DNS_MAC),
        eth(ip_header(17, len(udp_far), dst=socket.inet_aton("192.0.2.77")) + udp_far),
        eth(ip_header(1, len(echo)) + echo),
        eth(ip_header(1, len(echo), dst=socket.inet_aton("192.0.2.77")) + echo),
        eth(ip_header(17, len(udp_dhcp), src=b"\0" * 4, dst=b"\xff" * 4) + udp_dhcp,
            dst=b"\xff" * 6),  # fmt: skip
        eth(ip_header(17, 16, ident=rng.randrange(65536), frag=0x2000, total=36) + frag_udp[:16]),
        eth(ip_header(17, 24, ident=rng.randrange(65536), frag=0x0002, total=44) + frag_udp[16:]),
        v6_frame(6, syn, me6, far6),
        v6_frame(17, udp_far, me6, far6),
        v6_frame(58, ns, me6, socket.inet_pton(socket.AF_INET6, "ff02::1:ff00:2"),
                 dst_mac=b"\x33\x33\xff\x00\x00\x02"),  # fmt: skip
        v6_frame(58, rs, ll6, socket.inet_pton(socket.AF_INET6, "ff02::2"),
                 dst_mac=b"\x33\x33\x00\x00\x00\x02"),  # fmt: skip
        v6_frame(58, na, me6, router6),
        v6_frame(58, echo6, me6, router6),
        v6_frame(44, frag6, me6, far6),
    ]


def neighbour_frames(rng: random.Random, n: int) -> list[bytes]:
    """Frames that each name a fresh IPv6 address: neighbour and router solicitations
    from it, advertisements with it as target (in and out of the prefix), echoes from it."""
    out: list[bytes] = []
    router6 = socket.inet_pton(socket.AF_INET6, "fe80::2")
    snm = socket.inet_pton(socket.AF_INET6, "ff02::1:ff00:2")
    snm_mac = b"\x33\x33\xff\x00\x00\x02"
    for i in range(n):
        low = rng.getrandbits(64).to_bytes(8, "big")
        prefix = (b"\xfd" + bytes(7), b"\xfe\x80" + bytes(6), b"\x20\x01\x0d\xb8" + bytes(4))
        addr = prefix[i % 3] + low
        k = i % 4
        if k == 0:
            ns = struct.pack("!BBHI16s", 135, 0, 0, 0, router6) + b"\x01\x01" + MY_MAC
            out.append(v6_frame(58, ns, addr, snm, dst_mac=snm_mac))
        elif k == 1:
            rs = struct.pack("!BBHI", 133, 0, 0, 0) + b"\x01\x01" + MY_MAC
            out.append(v6_frame(58, rs, addr, socket.inet_pton(socket.AF_INET6, "ff02::2"),
                                dst_mac=b"\x33\x33\x00\x00\x00\x02"))  # fmt: skip
        elif k == 2:
            na = struct.pack("!BBHI16s", 136, 0, 0, 0x20000000, addr) + b"\x02\x01" + MY_MAC
            out.append(v6_frame(58, na, prefix[0] + bytes(7) + b"\x64", router6))
        else:
            echo = struct.pack("!BBHHH", 128, 0, 0, 7, i & 0xFFFF) + b"y" * 8
            out.append(v6_frame(58, echo, addr, router6))
    return out


def mutate(rng: random.Random, frame: bytes) -> bytes:
    """The frame with bits flipped, cut short, or a length field that lies."""
    f = bytearray(frame)
    k = rng.randrange(4)
    if k == 0:  # flip a few bits anywhere past the MACs
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(12, len(f))
            f[i] ^= 1 << rng.randrange(8)
    elif k == 1:  # cut short
        del f[rng.randrange(14, len(f)) :]
    elif k == 2:  # a length field lies: IPv4 total length, IPv6 payload length, UDP length
        lie = struct.pack("!H", rng.choice([0, 1, 7, 8, 20, 40, len(f), 1500, 0xFFFF]))
        if f[12:14] == b"\x08\x00":
            at = rng.choice([16, 14 + 20 + 4])  # IPv4 total length, or UDP length
        elif f[12:14] == b"\x86\xdd":
            at = rng.choice([18, 14 + 40 + 4])
        else:
            at = rng.randrange(14, len(f) - 1)
        if at + 2 <= len(f):
            f[at : at + 2] = lie
    else:  # one byte of the header set at random
        f[rng.randrange(14, min(len(f), 14 + 60))] = rng.randrange(256)
    return bytes(f)


def mutated_frames(rng: random.Random, n: int) -> list[bytes]:
    out: list[bytes] = []
    while len(out) < n:
        for f in valid_frames(rng):
            out.append(mutate(rng, f) if rng.random() < 0.8 else f)
    return out[:n]


def v6_loopback_frames(count: int) -> list[bytes]:
    """IPv6 packets from the guest's own address to loopback in every disguise."""
    src = socket.inet_pton(socket.AF_INET6, guest_v6())
    dsts = ["::1", "::", "::ffff:127.0.0.1", "::127.0.0.1", "fd00::2", "fe80::2", "fd00::7",
            "64:ff9b::127.0.0.1", "2002:7f00:1::1", "::ffff:0:127.0.0.1"]  # fmt: skip
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


SPOOFED_IP = socket.inet_aton("10.0.2.77")  # in the network, not the guest kernel's


def overrun(sock: socket.socket, port: int, flows: int, per_flow: int) -> int:
    """Raw connections to 10.0.2.2:port from SPOOFED_IP (the guest kernel drops what
    comes back to that address, so it never resets them), each pushing per_flow bytes
    in order whatever window the stack advertises. Returns the segments sent."""
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    rx.bind(("tap0", 0))
    rx.settimeout(5)
    seqs: dict[int, int] = {}
    acks: dict[int, int] = {}
    for i in range(flows):
        sport = 30000 + i
        seqs[sport] = 1000 + i * 10_000_000
        syn = tcp_header(sport, port, seqs[sport], 0, 0x02, b"\x02\x04\x05\xb4")
        sock.send(eth(ip_header(6, len(syn), src=SPOOFED_IP) + syn))
        deadline = time.monotonic() + 5
        while sport not in acks and time.monotonic() < deadline:
            frame = rx.recv(65535)
            ip = frame[14:]
            if frame[12:14] != b"\x08\x00" or ip[9] != 6 or ip[16:20] != SPOOFED_IP:
                continue
            t = ip[(ip[0] & 0xF) * 4 :]
            src_port, dst_port, seq = struct.unpack_from("!HHI", t)
            if src_port == port and dst_port == sport and t[13] & 0x12 == 0x12:
                acks[sport] = (seq + 1) & 0xFFFFFFFF
        if sport not in acks:
            raise SystemExit(f"no SYN-ACK for port {sport}")
        seqs[sport] += 1
        ack = tcp_header(sport, port, seqs[sport], acks[sport], 0x10)
        sock.send(eth(ip_header(6, len(ack), src=SPOOFED_IP) + ack))
    rx.close()
    chunk = b"o" * 1400
    sent = 0
    for _ in range(per_flow // len(chunk)):
        for sport in seqs:
            t = tcp_header(sport, port, seqs[sport], acks[sport], 0x18)
            sock.send(eth(ip_header(6, len(t) + len(chunk), src=SPOOFED_IP) + t + chunk))
            seqs[sport] = (seqs[sport] + len(chunk)) & 0xFFFFFFFF
            sent += 1
            if sent % 32 == 0:
                time.sleep(0.002)  # paced: the stack reads them, not the TAP queue's overflow
    return sent


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
    elif kind == "mutate":
        rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
        frames = mutated_frames(rng, count)
    elif kind == "neighbours":
        seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
        frames = neighbour_frames(random.Random(seed), count)
    elif kind == "dnsflood":  # UDP DNS queries to 10.0.2.3 from distinct source ports
        dnsq = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x04test\x00\x00\x01\x00\x01"
        frames = []
        for i in range(count):
            q = struct.pack("!H", i & 0xFFFF) + dnsq[2:]
            u = struct.pack("!HHHH", 1024 + i % 64000, 53, 8 + len(q), 0) + q
            frames.append(eth(ip_header(17, len(u), dst=socket.inet_aton("10.0.2.3")) + u,
                              dst=DNS_MAC))  # fmt: skip
    elif kind == "overrun":  # overrun FLOWS PORT BYTES_PER_FLOW
        print(overrun(s, int(sys.argv[3]), count, int(sys.argv[4])))
        return
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
    # garbage is paced so the stack parses it all, not the ring
    # (each DNS query opens host sockets: slower to serve, so paced harder)
    pace = {"garbage": 128, "mutate": 32, "dnsflood": 16, "neighbours": 64}.get(kind, 0)
    for i, f in enumerate(frames):
        if pace and i % pace == pace - 1:
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
