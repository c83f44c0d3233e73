/* Internal to the C flow path (csrc/flow.c, csrc/flow_table.c): constants, byte
 * helpers and what the two files share. Not part of the cffi cdef (that is fast.h). */
#ifndef NETSTACK_FLOW_H
#define NETSTACK_FLOW_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fast.h"

#define VNET_LEN 10
#define ETH_LEN 14
#define IP4_LEN 20
#define IP6_LEN 40
#define TCP_LEN 20
#define TS_LEN 12
#define MAX_PACKET 65535
#define UNSENT_MAX (512 * 1024)
#define UNSENT_KEEP (16 * 1024) /* a held flow keeps a gather buffer up to this size */
#define EVENTS_MAX 256
#define NS_PYTHON_WORK (1 << 24) /* above any frame length or event count */
#define NS_LISTENERS_MAX 64 /* ctx->listeners (fast.h, whose cdef takes literal sizes) */
#define NS_FWD_PY_MAX 64    /* ctx->fwd_py_fd */

#define F_FIN 0x01
#define F_SYN 0x02
#define F_RST 0x04
#define F_PSH 0x08
#define F_ACK 0x10
#define F_URG 0x20

#ifndef SO_PEEK_OFF
#define SO_PEEK_OFF 42
#endif

/* eject reasons, mirrored in netstack/tcp/fastpath.py */
#define EJECT_ERROR 1   /* a host socket call failed: err holds errno */
#define EJECT_PUMP 2    /* host EOF, or a zero window to probe: Python's pump decides */
#define EJECT_BLOCKED 3 /* the host socket took part of a write: Python queues the rest */
#define EJECT_DONE 4    /* both ways closed and our FIN acknowledged: Python closes it */

static inline uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline int seq_lt(uint32_t a, uint32_t b) { return (int32_t)(a - b) < 0; }

/* csrc/flow_table.c */
extern const uint8_t V4_MAPPED[12];
struct ns_flow *flow_lookup(struct ns_ctx *ctx, const uint8_t *gip, uint16_t gport,
                            const uint8_t *rip, uint16_t rport);
void flow_eject(struct ns_ctx *ctx, struct ns_flow *f, int why, int err);
uint64_t tuple_siphash(const uint64_t key[2], const uint8_t *gip, uint16_t gport,
                       const uint8_t *rip, uint16_t rport);

/* The IP layer of a frame from the guest at ctx->rx (len bytes, virtio-net header
 * first), as every C path takes it: IPv4 without options or fragments, its header
 * checksum right, sent to the gateway's or the DNS address's MAC; or IPv6 with no
 * extension header, sent to the router's or DNS's MAC; carrying `proto` in at least
 * min_l4 bytes. 1 with *g filled; 0 for anything else (the frame is Python's). The
 * caller has checked len covers the headers (VNET_LEN + ETH_LEN + IP4_LEN + min_l4). */
struct guest_ip {
    uint8_t src[16], dst[16]; /* IPv4 as ::ffff:a.b.c.d */
    uint8_t *ip;              /* the IP header */
    uint8_t *l4;
    size_t l4_len;
    int v6;
};

static inline int guest_ip_parse(const struct ns_ctx *ctx, size_t len, uint8_t proto,
                                 size_t min_l4, struct guest_ip *g)
{
    const uint8_t *eth = ctx->rx + VNET_LEN;
    uint8_t *ip = ctx->rx + VNET_LEN + ETH_LEN;
    size_t l3_len = len - VNET_LEN - ETH_LEN;
    uint16_t ethertype = get16(eth + 12);
    if (ethertype == 0x0800) {
        if (memcmp(eth, ctx->gateway_mac, 6) && memcmp(eth, ctx->dns_mac, 6))
            return 0;
        if (ip[0] != 0x45 || ip[9] != proto || (get16(ip + 6) & 0x3fff))
            return 0; /* options, another protocol, or a fragment */
        size_t total = get16(ip + 2);
        if (total < IP4_LEN + min_l4 || total > l3_len || ns_checksum(ip, IP4_LEN, 0) != 0)
            return 0;
        memcpy(g->src, V4_MAPPED, 12);
        memcpy(g->src + 12, ip + 12, 4);
        memcpy(g->dst, V4_MAPPED, 12);
        memcpy(g->dst + 12, ip + 16, 4);
        g->l4 = ip + IP4_LEN;
        g->l4_len = total - IP4_LEN;
        g->v6 = 0;
    } else if (ethertype == 0x86dd) {
        if (memcmp(eth, ctx->router_mac, 6) && memcmp(eth, ctx->dns6_mac, 6))
            return 0;
        if (l3_len < IP6_LEN + min_l4 || (ip[0] >> 4) != 6 || ip[6] != proto)
            return 0; /* another protocol after the fixed header: extension headers too */
        size_t payload = get16(ip + 4);
        if (payload < min_l4 || IP6_LEN + payload > l3_len)
            return 0;
        memcpy(g->src, ip + 8, 16);
        memcpy(g->dst, ip + 24, 16);
        g->l4 = ip + IP6_LEN;
        g->l4_len = payload;
        g->v6 = 1;
    } else {
        return 0;
    }
    g->ip = ip;
    return 1;
}

/* The sum of g's UDP/TCP pseudo-header (its length included). */
static inline uint32_t guest_ip_pseudo(const struct guest_ip *g, uint8_t proto)
{
    uint32_t addrs = g->v6 ? ns_sum16(g->ip + 8, 32, 0) : ns_sum16(g->ip + 12, 8, 0);
    return addrs + proto + (uint32_t)g->l4_len;
}

/* csrc/udp.c: the hooks flow.c and flow_table.c call */
int udp_rx_frame(struct ns_ctx *ctx, size_t len, double now);
void udp_flush_to_host(struct ns_ctx *ctx);
int udp_host_event(struct ns_ctx *ctx, int fd, uint32_t events, double now);
int udp_python_work(const struct ns_ctx *ctx);
void udp_free(struct ns_ctx *ctx);

/* csrc/dns.c: the hooks flow.c, loop.c and flow_table.c call */
#define DNS_SLOTS 256
#define DNS_GUESTS 8
#define DNS_QUERY_MAX 512
#define DNS_PY_MAX 512
#define DNS_SOCKET_QUERIES 100 /* forwarder.UPSTREAM_QUERIES */
int dns_rx_frame(struct ns_ctx *ctx, size_t len, double now);
void dns_flush_to_host(struct ns_ctx *ctx);
int dns_host_event(struct ns_ctx *ctx, int fd, uint32_t events, double now);
int dns_python_work(const struct ns_ctx *ctx);
int dns_wants_socket(const struct ns_dns *d);
void dns_free(struct ns_ctx *ctx);

/* csrc/flow.c, for csrc/loop.c and csrc/flow_syn.c */
void flow_host_event(struct ns_ctx *ctx, int fd, uint32_t events, double now);
void delack_run(struct ns_ctx *ctx, double now);

/* csrc/flow_to_guest.c: a held flow's frames to the guest */
void link_write(struct ns_ctx *ctx, size_t start, size_t end);
void ns_yield(struct ns_ctx *ctx);
void flow_emit(struct ns_ctx *ctx, struct ns_flow *f, uint8_t flags, uint16_t window,
               uint32_t payload_len, double now);
uint16_t flow_window_field(struct ns_ctx *ctx, struct ns_flow *f, int fresh);
void flow_send_ack(struct ns_ctx *ctx, struct ns_flow *f, double now);
void flow_arm_rto(struct ns_ctx *ctx, struct ns_flow *f, double now);
void flow_pump(struct ns_ctx *ctx, struct ns_flow *f, double now);

/* csrc/flow_table.c */
void flow_list_remove(int *list, int *n, int slot);

/* csrc/flow_syn.c: guest SYNs opened here, and the flows Python has not seen */
struct syn_options {
    int mss, wscale, has_ts;
    uint32_t ts_val;
};
int syn_parse_options(const uint8_t *p, size_t n, struct syn_options *o);
int syn_rx_frame(struct ns_ctx *ctx, const struct guest_ip *g, double now);
void syn_list_adopt(struct ns_ctx *ctx, struct ns_flow *f);
void syn_frame_to_python(struct ns_ctx *ctx, size_t len);
void syn_close(struct ns_ctx *ctx, struct ns_flow *f, double now);

void syn_send(struct ns_ctx *ctx, struct ns_flow *f, uint8_t flags, double now);
void syn_open_unadopted(struct ns_ctx *ctx, struct ns_flow *f, uint8_t flags, double now);
void syn_take_options(const struct ns_ctx *ctx, struct ns_flow *f,
                      const struct syn_options *o, uint16_t window);
uint32_t syn_iss(const struct ns_ctx *ctx, const uint8_t *gip, uint16_t gport,
                 const uint8_t *rip, uint16_t rport, double now);

/* csrc/flow_forward.c: port forwards' connections accepted here */
int fwd_host_event(struct ns_ctx *ctx, int fd, double now);
int fwd_rx_synack(struct ns_ctx *ctx, struct ns_flow *f, const struct guest_ip *g, double now);

/* csrc/flow_time_wait.c: flows Python never saw, closed our FIN first, in TIME_WAIT */
void tw_enter(struct ns_ctx *ctx, struct ns_flow *f, double now);
int tw_rx_frame(struct ns_ctx *ctx, struct ns_flow *f, const struct guest_ip *g, double now);
void tw_free(struct ns_ctx *ctx, struct ns_flow *f);
void tw_unlink(struct ns_ctx *ctx, struct ns_flow *f);

/* Whether Python has TCP work after a C call: flows to take back or on, timers */
static inline int tcp_python_work(const struct ns_ctx *ctx)
{
    return ctx->nejects || ctx->ntimers || ctx->nadopts || ctx->nfwd_py;
}

#endif
