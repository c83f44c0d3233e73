/* Internal to the C UDP path (csrc/udp.c: the table and guest datagrams to the host;
 * csrc/udp_to_guest.c: host datagrams to the guest): constants and byte helpers. */
#ifndef NETSTACK_UDP_H
#define NETSTACK_UDP_H

#include <stdint.h>

#include "flow.h"

#define UDP_LEN 8
#define SOL_UDP_ 17
#define UDP_SEGMENT_ 103
#define VNET_F_NEEDS_CSUM 1
#define VNET_GSO_UDP_L4 5
/* A flush sends no more than a receiver's default socket buffer holds (rmem_default
 * 212992 B: about 90 datagrams of 1400 B, or 17 of 8192 B, at their truesize), and the
 * yield after it (YIELDING below) lets the receiver drain that before the next one.
 * With 512 datagrams a flush, the receiver dropped a quarter of what we sent
 * (UdpRcvbufErrors): iperf3 guest->host, 1400 B at MTU 1500, paired rounds 2.62 against
 * 2.25 Gbit/s (medians of 3), 8192 B at MTU 65520 8.70 against 7.45 (2026-11-30). */
#define OUT_CAP (128 * 1024)  /* bytes gathered from the guest before a flush */
#define OUT_MAX 64            /* datagrams (or guest GSO frames) gathered */
#define OUT_MSGS 256          /* messages in one sendmmsg */
#define GSO_MAX_SEGS 64       /* UDP_MAX_SEGMENTS on older kernels */
#define GUEST_GSO_MAX_SEGS 128 /* UDP_MAX_SEGMENTS since 6.2; netstack/stack/dispatch.py */
#define GSO_MAX_BYTES 65000   /* under the largest UDP payload, IPv4 or IPv6 */
/* datagrams this large are sent from the frame, not gathered: below it a copy costs
 * less than the send it saves (8192 B datagrams at MTU 65520 gathered into UDP_SEGMENT
 * sends: iperf3 guest->host 8.09 Gbit/s against 3.60 sent one by one, 2026-11-29) */
#define SEND_NOW_MIN 16384
#define RECV_SLOTS 32
#define SLOT_HEAD (VNET_LEN + ETH_LEN + IP6_LEN + UDP_LEN) /* headers to the guest */
#define SLOT_SIZE 65536
#define READ_ROUNDS 4         /* recvmmsg calls per event: up to 128 datagrams */
#define VIEWS_MAX 256         /* datagrams of one read handled at once (a coalesced read
                               * is up to 128: UDP_MAX_SEGMENTS) */
#define SOL_UDP_ 17
#define UDP_GRO_ 104          /* linux/udp.h: a read may hold many datagrams of one peer */
/* GRO_AFTER: a flow's socket asks for coalesced reads (UDP_GRO) once one read brings
 * this many datagrams: a bulk peer's, never a DNS query's. Not at once for every socket:
 * the first UDP_GRO socket turns a kernel static key on and the last one's close turns
 * it off, and each of those patches kernel text on every CPU. A socket per query (DNS
 * to unreachable nameservers, tests/e2e/test_hostile.py) then lost a third of the
 * guest's queries at the TAP. netstack/host/datagrams.py has the same rule. */
#define GRO_AFTER 16

/* A datagram of a read: a whole message, or a segment of a coalesced one. */
struct dgram {
    uint8_t *p;
    uint32_t len;
    const struct sockaddr_in6 *from;
};

/* YIELDING: after a send of more than one datagram (a sendmmsg batch or a UDP_SEGMENT
 * send to the host, a UDP GSO frame to the guest) the sender yields the CPU. The
 * receiving application was just woken; on a small machine it is often runnable on
 * our CPU, and until it runs its socket buffer (about 90 datagrams of 1400 B by
 * default) takes the next batch too and drops the rest: the receiver, not netstack,
 * was where iperf3 lost its datagrams (RcvbufErrors in its namespace). Paired rounds
 * on 2 cores, iperf3 -u -b 0: 1400 B guest->host 2.29 against 1.45 Gbit/s,
 * host->guest 2.91 against 2.28; 8192 B at MTU 65520 host->guest 10.8 against 8.0,
 * guest->host unchanged. */

static const uint8_t ZERO16[16];

/* csrc/udp.c, for csrc/udp_to_guest.c: a forward's route by its 4-tuple */
struct ns_udp_flow *udp_route_lookup(struct ns_ctx *ctx, const uint8_t *gip, uint16_t gport,
                                     const uint8_t *rip, uint16_t rport);

static inline void put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v & 0xff; }
static inline void put16le(uint8_t *p, uint16_t v) { p[0] = v & 0xff; p[1] = v >> 8; }
static inline uint16_t get16le(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint16_t fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

#endif
