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
