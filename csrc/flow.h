/* Internal to the C flow path (csrc/flow.c, csrc/flow_table.c): constants, byte
 * helpers and what the two files share. Not part of the cffi cdef (that is fast.h). */
#ifndef NETSTACK_FLOW_H
#define NETSTACK_FLOW_H

#include <stddef.h>
#include <stdint.h>

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

/* csrc/flow.c, for csrc/loop.c */
void flow_host_event(struct ns_ctx *ctx, int fd, uint32_t events, double now);
void delack_run(struct ns_ctx *ctx, double now);

#endif
