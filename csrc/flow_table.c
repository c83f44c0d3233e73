/* netstack C fast path: the flow path's context and flow table (slots, a hash on the
 * 4-tuple, an fd index) and the lists C leaves for Python. The data path is flow.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "flow.h"

/* ------------------------------------------------------------------ the table */

/* SipHash-1-3 of the 4-tuple under the context's random key: a guest that picks its
 * ports and addresses cannot aim them at one bucket without knowing the key (an
 * unkeyed hash lets it chain every flow it opens into one list). Addresses are 16
 * bytes, an IPv4 one as ::ffff:a.b.c.d; 36 bytes in all. */
#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                       \
    do {                                                                               \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                      \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                          \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                          \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                      \
    } while (0)

uint64_t tuple_siphash(const uint64_t key[2], const uint8_t *gip, uint16_t gport,
                       const uint8_t *rip, uint16_t rport)
{
    uint64_t k0 = key[0], k1 = key[1];
    uint64_t v0 = k0 ^ 0x736f6d6570736575ull, v1 = k1 ^ 0x646f72616e646f6dull;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ull, v3 = k1 ^ 0x7465646279746573ull;
    uint64_t m[5];
    memcpy(&m[0], gip, 8);
    memcpy(&m[1], gip + 8, 8);
    memcpy(&m[2], rip, 8);
    memcpy(&m[3], rip + 8, 8);
    m[4] = (uint64_t)36 << 56 | (uint64_t)gport << 16 | rport;
    for (int i = 0; i < 5; i++) {
        v3 ^= m[i];
        SIPROUND;
        v0 ^= m[i];
    }
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static unsigned int flow_hash(const struct ns_ctx *ctx, const uint8_t *gip, uint16_t gport,
                              const uint8_t *rip, uint16_t rport)
{
    uint64_t h = tuple_siphash(ctx->hash_key, gip, gport, rip, rport);
    return (unsigned int)(h ^ (h >> 32));
}

unsigned int ns_flow_hash(struct ns_ctx *ctx, const uint8_t *gip, uint16_t gport,
                          const uint8_t *rip, uint16_t rport)
{
    return flow_hash(ctx, gip, gport, rip, rport);
}

const uint8_t V4_MAPPED[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

struct ns_ctx *ns_ctx_new(int tap_fd, int vnet, uint8_t *rx, size_t rx_cap, int max_flows,
                          int by_fd_cap)
{
    struct ns_ctx *ctx = calloc(1, sizeof(*ctx));
    if (!ctx)
        return NULL;
    ctx->delack_fd = -1;
    if (getrandom(ctx->hash_key, sizeof(ctx->hash_key), 0) != (ssize_t)sizeof(ctx->hash_key) ||
        getrandom(ctx->iss_key, sizeof(ctx->iss_key), 0) != (ssize_t)sizeof(ctx->iss_key)) {
        free(ctx); /* no secret, no table: the caller runs without the flow path */
        return NULL;
    }
    unsigned int buckets = 64;
    while (buckets < (unsigned int)max_flows * 2)
        buckets <<= 1;
    ctx->tap_fd = tap_fd;
    ctx->vnet = vnet;
    ctx->rx = rx;
    ctx->rx_cap = rx_cap;
    ctx->tx_cap = VNET_LEN + ETH_LEN + IP6_LEN + TCP_LEN + TS_LEN + MAX_PACKET;
    ctx->tx = malloc(ctx->tx_cap);
    ctx->max_flows = max_flows;
    ctx->flows = calloc((size_t)max_flows, sizeof(struct ns_flow));
    ctx->free_slots = malloc(sizeof(int) * (size_t)max_flows);
    ctx->buckets = calloc(buckets, sizeof(int));
    ctx->bucket_mask = buckets - 1;
    ctx->by_fd = calloc((size_t)by_fd_cap, sizeof(int));
    ctx->by_fd_cap = by_fd_cap;
    ctx->dirty = malloc(sizeof(int) * (size_t)max_flows);
    ctx->ejects = malloc(sizeof(int) * (size_t)max_flows);
    ctx->timers = malloc(sizeof(int) * (size_t)max_flows);
    ctx->delacks = malloc(sizeof(int) * (size_t)max_flows);
    ctx->adopts = malloc(sizeof(int) * (size_t)max_flows);
    ctx->ev_fd = malloc(sizeof(int) * EVENTS_MAX);
    ctx->ev_mask = malloc(sizeof(uint32_t) * EVENTS_MAX);
    if (!ctx->tx || !ctx->flows || !ctx->free_slots || !ctx->buckets || !ctx->by_fd ||
        !ctx->dirty || !ctx->ejects || !ctx->timers || !ctx->delacks || !ctx->adopts || !ctx->ev_fd ||
        !ctx->ev_mask) {
        ns_ctx_free(ctx);
        return NULL;
    }
    for (int i = 0; i < max_flows; i++)
        ctx->free_slots[i] = max_flows - 1 - i;
    ctx->nfree = max_flows;
    ctx->rto_initial = 0.2;
    ctx->window_max = 1 << 20;
    ctx->pending_slack = 64 * 1024;
    ctx->gather_max_segment = 16 * 1024;
    ctx->delack_delay = 0.001;
    ctx->time_wait_s = 2.0; /* tcp/params.py TIME_WAIT (Python sets it) */
    ctx->delack_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (ctx->delack_fd < 0)
        ctx->delack_delay = 0; /* no timer: ACKs are not delayed */
    return ctx;
}

void ns_ctx_free(struct ns_ctx *ctx)
{
    if (!ctx)
        return;
    if (ctx->flows)
        for (int i = 0; i < ctx->max_flows; i++) {
            free(ctx->flows[i].unsent);
            if (ctx->flows[i].unadopted)
                close(ctx->flows[i].fd); /* Python never had it */
        }
    for (int i = 0; i < ctx->nfwd_py; i++)
        close(ctx->fwd_py_fd[i]); /* accepted here, never given to Python */
    free(ctx->tx);
    free(ctx->flows);
    free(ctx->free_slots);
    free(ctx->buckets);
    free(ctx->by_fd);
    free(ctx->dirty);
    free(ctx->ejects);
    free(ctx->timers);
    free(ctx->delacks);
    free(ctx->adopts);
    free(ctx->ev_fd);
    free(ctx->ev_mask);
    if (ctx->delack_fd >= 0)
        close(ctx->delack_fd);
    udp_free(ctx);
    dns_free(ctx);
    free(ctx);
}

struct ns_flow *flow_lookup(struct ns_ctx *ctx, const uint8_t *gip, uint16_t gport,
                            const uint8_t *rip, uint16_t rport)
{
    int s = ctx->buckets[flow_hash(ctx, gip, gport, rip, rport) & ctx->bucket_mask];
    while (s) {
        struct ns_flow *f = &ctx->flows[s - 1];
        if (f->guest_port == gport && f->remote_port == rport && !memcmp(f->guest_ip, gip, 16) &&
            !memcmp(f->remote_ip, rip, 16))
            return f;
        s = f->next;
    }
    return NULL;
}

/* A flow slot for an established connection, zeroed but for its addresses and fd (the
 * caller fills the state); NULL when full, the fd is out of range, or the 4-tuple or
 * fd is held already. */
struct ns_flow *ns_flow_open(struct ns_ctx *ctx, int fd, const uint8_t *guest_ip,
                             uint16_t guest_port, const uint8_t *remote_ip, uint16_t remote_port,
                             int v6)
{
    if (ctx->nfree == 0 || fd < 0 || fd >= ctx->by_fd_cap || ctx->by_fd[fd])
        return NULL;
    if (flow_lookup(ctx, guest_ip, guest_port, remote_ip, remote_port))
        return NULL;
    int slot = ctx->free_slots[--ctx->nfree];
    struct ns_flow *f = &ctx->flows[slot];
    memset(f, 0, sizeof(*f)); /* no buffer: ns_flow_close freed it */
    f->fd = fd;
    f->slot = slot;
    memcpy(f->guest_ip, guest_ip, 16);
    memcpy(f->remote_ip, remote_ip, 16);
    f->v6 = v6;
    f->guest_port = guest_port;
    f->remote_port = remote_port;
    f->py_timer_at = INFINITY;
    unsigned int b =
        flow_hash(ctx, guest_ip, guest_port, remote_ip, remote_port) & ctx->bucket_mask;
    f->next = ctx->buckets[b];
    ctx->buckets[b] = slot + 1;
    ctx->by_fd[fd] = slot + 1;
    return f;
}

void flow_list_remove(int *list, int *n, int slot)
{
    for (int i = 0; i < *n; i++)
        if (list[i] == slot) {
            list[i] = list[--*n];
            return;
        }
}

void ns_flow_close(struct ns_ctx *ctx, struct ns_flow *f)
{
    int slot = f->slot;
    if (f->time_wait)
        tw_unlink(ctx, f);
    unsigned int b = flow_hash(ctx, f->guest_ip, f->guest_port, f->remote_ip, f->remote_port) &
                     ctx->bucket_mask;
    int *link = &ctx->buckets[b];
    while (*link) {
        if (*link == slot + 1) {
            *link = f->next;
            break;
        }
        link = &ctx->flows[*link - 1].next;
    }
    if (f->fd >= 0 && f->fd < ctx->by_fd_cap && ctx->by_fd[f->fd] == slot + 1)
        ctx->by_fd[f->fd] = 0;
    if (f->dirty)
        flow_list_remove(ctx->dirty, &ctx->ndirty, slot);
    flow_list_remove(ctx->ejects, &ctx->nejects, slot);
    flow_list_remove(ctx->timers, &ctx->ntimers, slot);
    if (f->delack_listed)
        flow_list_remove(ctx->delacks, &ctx->ndelacks, slot);
    if (f->adopt_listed)
        flow_list_remove(ctx->adopts, &ctx->nadopts, slot);
    f->delack_listed = 0;
    f->adopt_listed = 0;
    if (f->unadopted)
        ctx->nunadopted--;
    f->unadopted = 0;
    f->dirty = 0;
    f->eject = 0;
    f->unsent_len = 0;
    free(f->unsent);
    f->unsent = NULL;
    f->unsent_cap = 0;
    f->fd = -1;
    ctx->free_slots[ctx->nfree++] = slot;
}

void flow_eject(struct ns_ctx *ctx, struct ns_flow *f, int why, int err)
{
    if (f->eject)
        return;
    f->eject = why;
    f->err = err;
    if (f->unadopted && why == EJECT_DONE)
        return; /* closed here once its ACK is out, or lingering here in TIME_WAIT
                 * (flush_dirty): Python never knew it */
    ctx->ejects[ctx->nejects++] = f->slot;
    syn_list_adopt(ctx, f); /* Python takes it on before it takes it back */
}
