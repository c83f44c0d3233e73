/* netstack C fast path: TIME_WAIT for the flows Python never saw.
 *
 * A flow opened here from the guest's SYN (csrc/flow_syn.c) that the host closes
 * first (our FIN before the guest's) ends with us as the active closer: it lingers in
 * TIME_WAIT for ctx->time_wait_s (tcp/params.py TIME_WAIT), to answer a retransmitted
 * FIN. Python used to take every such flow on just for that; a server that closes
 * first (HTTP/1.0, `Connection: close`) cost a Python connection per request.
 * Here, as TcpConnection does it (the twin: _close with a linger, on_segment in
 * TIME_WAIT, TcpTable.on_segment and _room):
 *   - tw_enter: the owed ACK goes out, the host socket closes, the flow keeps its slot
 *     and its 4-tuple, no fd, on a list oldest first.
 *   - a FIN is answered with an ACK (window 0: no socket behind it), an RST in the
 *     window ends it, another SYN is answered with an ACK (RFC 5961 4.2); other
 *     segments are dropped. A plain SYN on the 4-tuple ends it and opens a new flow
 *     (rx_frame in flow.c; table.py's "the guest reuses the 4-tuple").
 *   - ns_tw_expire ends those whose time is up (ns_loop waits no longer than the
 *     oldest); ns_tw_evict_oldest ends the oldest when the table is full (C's SYNs,
 *     and Python's TcpTable._room).
 * Ending one counts it closed (closed_in_c, Python's tcp_flows_closed), as Python's
 * table counts a TIME_WAIT connection it removes. Python does not list these flows
 * (list_connections); get_stats counts them with the TCP flows.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "flow.h"

static struct ns_flow *slot_flow(struct ns_ctx *ctx, int slot_plus_one)
{
    return slot_plus_one ? &ctx->flows[slot_plus_one - 1] : NULL;
}

/* Off the TIME_WAIT list (ns_flow_close calls it too). */
void tw_unlink(struct ns_ctx *ctx, struct ns_flow *f)
{
    if (!f->time_wait)
        return;
    struct ns_flow *prev = slot_flow(ctx, f->tw_prev), *next = slot_flow(ctx, f->tw_next);
    if (prev)
        prev->tw_next = f->tw_next;
    else
        ctx->tw_head = f->tw_next;
    if (next)
        next->tw_prev = f->tw_prev;
    else
        ctx->tw_tail = f->tw_prev;
    f->tw_prev = f->tw_next = 0;
    f->time_wait = 0;
    ctx->ntime_wait--;
}

/* f, closed both ways with our FIN first and that FIN acknowledged (EJECT_DONE),
 * lingers: twin of the release of EJECT_DONE, _maybe_finish and _close(linger=now). */
void tw_enter(struct ns_ctx *ctx, struct ns_flow *f, double now)
{
    f->eject = 0;
    ns_flow_flush(ctx, f, now); /* the ACK of the guest's FIN, acknowledged bytes dropped */
    if (f->dirty) { /* entered from rx_frame: flush_dirty has nothing left to do for it */
        flow_list_remove(ctx->dirty, &ctx->ndirty, f->slot);
        f->dirty = 0;
    }
    if (f->delack_listed)
        flow_list_remove(ctx->delacks, &ctx->ndelacks, f->slot);
    if (f->timer_listed)
        flow_list_remove(ctx->timers, &ctx->ntimers, f->slot);
    if (f->adopt_listed)
        flow_list_remove(ctx->adopts, &ctx->nadopts, f->slot);
    f->delack_listed = f->timer_listed = f->adopt_listed = 0;
    if (f->fd >= 0 && f->fd < ctx->by_fd_cap && ctx->by_fd[f->fd] == f->slot + 1)
        ctx->by_fd[f->fd] = 0;
    close(f->fd); /* out of the epoll with it */
    f->fd = -1;
    free(f->unsent);
    f->unsent = NULL;
    f->unsent_len = f->unsent_cap = 0;
    f->unadopted = 0; /* nothing for Python to take on: it never will */
    ctx->nunadopted--;
    f->rto_deadline = 0;
    f->ack_needed = 0;
    f->time_wait = 1;
    f->tw_until = now + ctx->time_wait_s;
    f->tw_next = 0;
    f->tw_prev = ctx->tw_tail;
    struct ns_flow *tail = slot_flow(ctx, ctx->tw_tail);
    if (tail)
        tail->tw_next = f->slot + 1;
    else
        ctx->tw_head = f->slot + 1;
    ctx->tw_tail = f->slot + 1;
    ctx->ntime_wait++;
}

/* Its TIME_WAIT is over (time, a reset, a new SYN, room needed): the slot is free. */
void tw_free(struct ns_ctx *ctx, struct ns_flow *f)
{
    tw_unlink(ctx, f);
    ctx->closed_in_c++;
    ns_flow_close(ctx, f);
}

void ns_tw_expire(struct ns_ctx *ctx, double now)
{
    struct ns_flow *f;
    while ((f = slot_flow(ctx, ctx->tw_head)) && f->tw_until <= now)
        tw_free(ctx, f);
}

/* 1 when the oldest flow in TIME_WAIT here gave way, 0 when there is none. */
int ns_tw_evict_oldest(struct ns_ctx *ctx)
{
    struct ns_flow *f = slot_flow(ctx, ctx->tw_head);
    if (!f)
        return 0;
    tw_free(ctx, f);
    return 1;
}

/* Twin of TcpConnection._send_ack with no host socket: window 0. */
static void tw_ack(struct ns_ctx *ctx, struct ns_flow *f, double now)
{
    f->window_advertised = 0;
    flow_emit(ctx, f, F_ACK, 0, 0, now);
}

/* A segment (TCP header at g->l4) for f in TIME_WAIT, other than a plain SYN: 1 when
 * taken here, 0 for Python (a malformed header or options, which Python drops and
 * counts; a frame from another MAC than the flow's). Twin of TcpConnection.on_segment
 * in TIME_WAIT. */
int tw_rx_frame(struct ns_ctx *ctx, struct ns_flow *f, const struct guest_ip *g, double now)
{
    const uint8_t *t = g->l4;
    size_t hlen = (size_t)(t[12] >> 4) * 4;
    struct syn_options opts;
    if (hlen < TCP_LEN || hlen > g->l4_len || memcmp(ctx->rx + VNET_LEN + 6, f->guest_mac, 6) ||
        syn_parse_options(t + TCP_LEN, hlen - TCP_LEN, &opts) < 0)
        return 0;
    uint8_t flags = t[13];
    uint32_t seq = get32(t + 4);
    if (flags & F_RST) {
        int32_t d = (int32_t)(seq - f->rcv_nxt);
        uint32_t window = f->window_advertised > 1 ? f->window_advertised : 1;
        if (d >= 0 && (uint32_t)d <= window)
            tw_free(ctx, f); /* reset by the guest */
        return 1;
    }
    if (flags & F_SYN) {
        tw_ack(ctx, f, now); /* a challenge ACK (RFC 5961 4.2) */
        return 1;
    }
    if (!(flags & F_ACK))
        return 1;
    f->last_activity = now;
    if (f->ts_enabled && opts.has_ts && seq == f->rcv_nxt)
        f->ts_recent = opts.ts_val;
    if (flags & F_FIN)
        tw_ack(ctx, f, now); /* our ACK of its FIN was lost */
    return 1;
}
