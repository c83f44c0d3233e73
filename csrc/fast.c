/* netstack C fast path: one's-complement sums and socket helpers on the data path.
 *
 * Every function here has a pure-Python twin in netstack/_fast.py; a test runs both on
 * random buffers and compares. Nothing here keeps state or allocates.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/sockios.h>

/* 16-bit one's-complement sum of buf (big-endian words, odd tail padded with zero),
 * added to seed and folded to 16 bits. Not inverted: callers chain sums. */
uint32_t ns_sum16(const uint8_t *buf, size_t len, uint32_t seed)
{
    uint64_t acc = 0;
    size_t i = 0;
    /* 8 bytes at a time into a 64-bit accumulator; 32-bit loads cannot overflow
     * a 64-bit sum before 2^32 iterations, far beyond any frame. */
    for (; i + 8 <= len; i += 8) {
        uint32_t a, b;
        memcpy(&a, buf + i, 4);
        memcpy(&b, buf + i + 4, 4);
        acc += a;
        acc += b;
    }
    for (; i + 4 <= len; i += 4) {
        uint32_t a;
        memcpy(&a, buf + i, 4);
        acc += a;
    }
    /* the loads above are host (little) endian; fold, then byte-swap the 16-bit
     * result, which is exact for one's-complement sums (RFC 1071 section 2B). */
    while (acc >> 16)
        acc = (acc & 0xffff) + (acc >> 16);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    acc = ((acc & 0xff) << 8) | (acc >> 8);
#endif
    for (; i + 2 <= len; i += 2)
        acc += ((uint32_t)buf[i] << 8) | buf[i + 1];
    if (i < len)
        acc += (uint32_t)buf[i] << 8;
    acc += seed; /* the seed is a big-endian sum: added after the swap */
    while (acc >> 16)
        acc = (acc & 0xffff) + (acc >> 16);
    return (uint32_t)acc;
}

/* The Internet checksum: the inverted folded sum. */
uint16_t ns_checksum(const uint8_t *buf, size_t len, uint32_t seed)
{
    return (uint16_t)(~ns_sum16(buf, len, seed) & 0xffff);
}

/* Drop len bytes from the head of a TCP socket's receive queue without copying them
 * (Linux: MSG_TRUNC on a stream socket discards). Returns bytes dropped or -errno. */
long ns_discard(int fd, size_t len)
{
    ssize_t n = recv(fd, NULL, len, MSG_TRUNC | MSG_DONTWAIT);
    return n < 0 ? -errno : (long)n;
}

/* Bytes a TCP socket's send buffer can still take: SO_SNDBUF less SIOCOUTQ.
 * Returns -errno on failure. */
long ns_sock_send_space(int fd)
{
    int sndbuf = 0, outq = 0;
    socklen_t l = sizeof(sndbuf);
    if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &l) < 0)
        return -errno;
    if (ioctl(fd, SIOCOUTQ, &outq) < 0)
        return -errno;
    return sndbuf > outq ? (long)(sndbuf - outq) : 0;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v & 0xff; }
static void put32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24; p[1] = (v >> 16) & 0xff; p[2] = (v >> 8) & 0xff; p[3] = v & 0xff;
}
static void put16le(uint8_t *p, uint16_t v) { p[0] = v & 0xff; p[1] = v >> 8; }

/* The TCP header (20 bytes, or 32 with the timestamp option) at t, checksum zero. */
static void put_tcp(uint8_t *t, size_t hlen, uint16_t sport, uint16_t dport, uint32_t seq,
                    uint32_t ack, uint8_t flags, uint16_t window, uint32_t ts_val,
                    uint32_t ts_ecr)
{
    put16(t, sport);
    put16(t + 2, dport);
    put32(t + 4, seq);
    put32(t + 8, ack);
    t[12] = (uint8_t)((hlen / 4) << 4);
    t[13] = flags;
    put16(t + 14, window);
    put16(t + 16, 0);
    put16(t + 18, 0);
    if (hlen == 32) {
        t[20] = 1; t[21] = 1; t[22] = 8; t[23] = 10;
        put32(t + 24, ts_val);
        put32(t + 28, ts_ecr);
    }
}

/* The TCP checksum from the pseudo-header sum: left partial for the guest's kernel with
 * a virtio-net header at v (GSO of gso_type when the payload exceeds gso_size), or
 * complete. l3_end is where TCP starts, counted from the Ethernet header. */
static void finish_tcp(uint8_t *v, uint8_t *t, size_t hlen, size_t l4_len, uint32_t pseudo,
                       int vnet, uint8_t gso_type, uint16_t gso_size, uint16_t l3_end)
{
    while (pseudo >> 16)
        pseudo = (pseudo & 0xffff) + (pseudo >> 16);
    if (!vnet) {
        put16(t + 16, ns_checksum(t, l4_len, pseudo));
        return;
    }
    put16(t + 16, (uint16_t)pseudo);
    int gso = l4_len - hlen > gso_size && gso_size > 0;
    v[0] = 1;                       /* VIRTIO_NET_HDR_F_NEEDS_CSUM */
    v[1] = gso ? gso_type : 0;      /* GSO_TCPV4 / GSO_TCPV6, or NONE */
    put16le(v + 2, gso ? (uint16_t)(l3_end + hlen) : 0);
    put16le(v + 4, gso ? gso_size : 0);
    put16le(v + 6, l3_end);         /* csum_start */
    put16le(v + 8, 16);             /* csum_offset: TCP checksum field */
}

/* Ethernet header, then a 20-byte IPv4 header (DF, TTL 64) with its checksum; returns
 * the pseudo-header sum of its addresses (without protocol and length). */
static uint32_t put_eth_ip4(uint8_t *e, const uint8_t *eth_dst, const uint8_t *eth_src,
                            const uint8_t *ip_src, const uint8_t *ip_dst, uint8_t proto,
                            uint16_t total, uint16_t ip_id)
{
    uint8_t *ip = e + 14;
    memcpy(e, eth_dst, 6);
    memcpy(e + 6, eth_src, 6);
    put16(e + 12, 0x0800);
    ip[0] = 0x45; ip[1] = 0;
    put16(ip + 2, total);
    put16(ip + 4, ip_id);
    put16(ip + 6, 0x4000);
    ip[8] = 64; ip[9] = proto;
    put16(ip + 10, 0);
    memcpy(ip + 12, ip_src, 4);
    memcpy(ip + 16, ip_dst, 4);
    put16(ip + 10, ns_checksum(ip, 20, 0));
    return ns_sum16(ip + 12, 8, 0);
}

/* Ethernet header, then a 40-byte IPv6 header (hop limit 64, no extension headers);
 * returns the pseudo-header sum of its addresses (without next header and length). */
static uint32_t put_eth_ip6(uint8_t *e, const uint8_t *eth_dst, const uint8_t *eth_src,
                            const uint8_t *ip_src, const uint8_t *ip_dst, uint8_t next,
                            uint16_t payload_len)
{
    uint8_t *ip = e + 14;
    memcpy(e, eth_dst, 6);
    memcpy(e + 6, eth_src, 6);
    put16(e + 12, 0x86dd);
    put32(ip, 6u << 28);
    put16(ip + 4, payload_len);
    ip[6] = next;
    ip[7] = 64;
    memcpy(ip + 8, ip_src, 16);
    memcpy(ip + 24, ip_dst, 16);
    return ns_sum16(ip + 8, 32, 0);
}

/* Headers for one TCP/IPv4 segment to the guest, written in front of a payload that is
 * already in place: at `start` a 10-byte virtio-net header, then Ethernet, IPv4 (20
 * bytes, DF, TTL 64), TCP (20 bytes, or 32 with the timestamp option), then
 * payload_len bytes of payload. With vnet the TCP checksum is left partial (the
 * pseudo-header sum) and the header asks for GSO when payload_len > gso_size > 0;
 * without it the checksum is complete. Returns the frame's end offset, or -1 when it
 * would not fit in buflen. Twin: netstack.tcp.output.SegmentWriter._headers_py. */
long ns_tcp4_frame(uint8_t *buf, size_t buflen, size_t start, const uint8_t *eth_dst,
                   const uint8_t *eth_src, const uint8_t *ip_src, const uint8_t *ip_dst,
                   uint16_t sport, uint16_t dport, uint32_t seq, uint32_t ack, uint8_t flags,
                   uint16_t window, int has_ts, uint32_t ts_val, uint32_t ts_ecr,
                   uint32_t payload_len, uint16_t ip_id, int vnet, uint16_t gso_size)
{
    size_t hlen = has_ts ? 32 : 20;
    size_t l2 = start + 10, l3 = l2 + 14, l4 = l3 + 20;
    size_t l4_len = hlen + payload_len;
    if (payload_len > 65535 - 20 - hlen || start > buflen || l4 + l4_len > buflen)
        return -1;
    uint8_t *v = buf + start, *t = buf + l4;
    uint32_t pseudo = put_eth_ip4(buf + l2, eth_dst, eth_src, ip_src, ip_dst, 6,
                                  (uint16_t)(20 + l4_len), ip_id) +
                      6 + (uint32_t)l4_len;
    put_tcp(t, hlen, sport, dport, seq, ack, flags, window, ts_val, ts_ecr);
    finish_tcp(v, t, hlen, l4_len, pseudo, vnet, 1, gso_size, 34);
    return (long)(l4 + l4_len);
}

/* The IPv6 twin of ns_tcp4_frame: Ethernet, a 40-byte IPv6 header (hop limit 64, no
 * extension headers), TCP, payload already in place. With vnet the checksum is partial
 * and GSO_TCPV6 is asked for when payload_len > gso_size > 0. Returns the frame's end
 * offset, or -1 when it would not fit. Twin: SegmentWriter._headers_py. */
long ns_tcp6_frame(uint8_t *buf, size_t buflen, size_t start, const uint8_t *eth_dst,
                   const uint8_t *eth_src, const uint8_t *ip_src, const uint8_t *ip_dst,
                   uint16_t sport, uint16_t dport, uint32_t seq, uint32_t ack, uint8_t flags,
                   uint16_t window, int has_ts, uint32_t ts_val, uint32_t ts_ecr,
                   uint32_t payload_len, int vnet, uint16_t gso_size)
{
    size_t hlen = has_ts ? 32 : 20;
    size_t l2 = start + 10, l3 = l2 + 14, l4 = l3 + 40;
    size_t l4_len = hlen + payload_len;
    if (payload_len > 65535 - hlen || start > buflen || l4 + l4_len > buflen)
        return -1;
    uint8_t *v = buf + start, *t = buf + l4;
    uint32_t pseudo = put_eth_ip6(buf + l2, eth_dst, eth_src, ip_src, ip_dst, 6,
                                  (uint16_t)l4_len) +
                      (uint32_t)(l4_len >> 16) + (uint32_t)(l4_len & 0xffff) + 6;
    put_tcp(t, hlen, sport, dport, seq, ack, flags, window, ts_val, ts_ecr);
    finish_tcp(v, t, hlen, l4_len, pseudo, vnet, 4, gso_size, 54);
    return (long)(l4 + l4_len);
}

/* A UDP datagram to the guest as one frame: a zeroed virtio-net header, Ethernet, IPv4
 * (DF, TTL 64, ip_id) or IPv6 (hop limit 64), UDP with its full checksum, the payload
 * copied. Returns the frame's length, or -1 when it would not fit buflen or a UDP
 * length. Twin: GuestOutput.send_udp's Python path. */
long ns_udp_frame(uint8_t *buf, size_t buflen, const uint8_t *eth_dst, const uint8_t *eth_src,
                  const uint8_t *ip_src, const uint8_t *ip_dst, int v6, uint16_t sport,
                  uint16_t dport, const uint8_t *payload, size_t payload_len, uint16_t ip_id)
{
    size_t l3 = 10 + 14, l4 = l3 + (v6 ? 40 : 20);
    size_t udp_len = 8 + payload_len;
    if (udp_len > 65535 || l4 + udp_len > buflen || (!v6 && udp_len > 65535 - 20))
        return -1;
    uint8_t *u = buf + l4;
    memset(buf, 0, 10);
    uint32_t pseudo =
        v6 ? put_eth_ip6(buf + 10, eth_dst, eth_src, ip_src, ip_dst, 17, (uint16_t)udp_len)
           : put_eth_ip4(buf + 10, eth_dst, eth_src, ip_src, ip_dst, 17,
                         (uint16_t)(20 + udp_len), ip_id);
    pseudo += 17 + (uint32_t)udp_len;
    put16(u, sport);
    put16(u + 2, dport);
    put16(u + 4, (uint16_t)udp_len);
    put16(u + 6, 0);
    memcpy(u + 8, payload, payload_len);
    uint16_t csum = ns_checksum(u, udp_len, pseudo);
    put16(u + 6, csum ? csum : 0xffff);
    return (long)(l4 + udp_len);
}
