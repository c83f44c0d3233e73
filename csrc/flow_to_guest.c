/* netstack C fast path: a held TCP flow's frames to the guest (the twin of
 * netstack/tcp/to_guest.py and SegmentWriter): segments built in front of their
 * payload, the window advertised, host data pumped into frames, our FIN, the
 * retransmission timer armed. csrc/flow.c calls these; see it for the flow path.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "flow.h"

/* ------------------------------------------------------------ frames to the guest */

void link_write(struct ns_ctx *ctx, size_t start, size_t end)
{
    size_t skip = ctx->vnet ? 0 : VNET_LEN;
    ssize_t n = write(ctx->tap_fd, ctx->tx + start + skip, end - start - skip);
    if (n < 0 && errno != EAGAIN && errno != EINTR && errno != ENOBUFS)
        ctx->link_errno = errno;
    ctx->frames_out++;
}

static size_t payload_offset(int hlen) { return VNET_LEN + ETH_LEN + IP6_LEN + (size_t)hlen; }

static uint32_t ts_val(double now) { return (uint32_t)(uint64_t)(now * 1000.0); }

/* Twin of SegmentWriter.send for IPv4: the payload (payload_len bytes) is already at
 * payload_offset(hlen); one frame on a vnet link, seg_size chunks on a plain one. */
static long build(struct ns_ctx *ctx, struct ns_flow *f, size_t start, uint32_t seq,
                  uint8_t flags, uint16_t window, uint32_t tsv, uint32_t payload_len, int vnet,
                  uint16_t gso_size)
{
    if (f->v6)
        return ns_tcp6_frame(ctx->tx, ctx->tx_cap, start, f->guest_mac, ctx->gateway_mac,
                             f->remote_ip, f->guest_ip, f->remote_port, f->guest_port, seq,
                             f->rcv_nxt, flags, window, f->ts_enabled, tsv, f->ts_recent,
                             payload_len, vnet, gso_size);
    return ns_tcp4_frame(ctx->tx, ctx->tx_cap, start, f->guest_mac, ctx->gateway_mac,
                         f->remote_ip + 12, f->guest_ip + 12, f->remote_port, f->guest_port, seq,
                         f->rcv_nxt, flags, window, f->ts_enabled, tsv, f->ts_recent, payload_len,
                         ctx->ip_id++, vnet, gso_size);
}

/* Twin of SegmentWriter.send: the payload (payload_len bytes) is already at
 * payload_offset(hlen); one frame on a vnet link, seg_size chunks on a plain one. */
void flow_emit(struct ns_ctx *ctx, struct ns_flow *f, uint8_t flags, uint16_t window,
                 uint32_t payload_len, double now)
{
    int hlen = TCP_LEN + (f->ts_enabled ? TS_LEN : 0);
    size_t l3 = f->v6 ? IP6_LEN : IP4_LEN;
    size_t start = payload_offset(hlen) - (VNET_LEN + ETH_LEN + l3 + (size_t)hlen);
    uint32_t tsv = ts_val(now);
    f->rcv_acked = f->rcv_nxt;
    if (payload_len <= f->seg_size || ctx->vnet) {
        long end = build(ctx, f, start, f->snd_nxt, flags, window, tsv, payload_len, ctx->vnet,
                         (uint16_t)f->seg_size);
        if (end > 0)
            link_write(ctx, start, (size_t)end);
        return;
    }
    uint32_t done = 0;
    while (done < payload_len) {
        uint32_t n = payload_len - done < f->seg_size ? payload_len - done : f->seg_size;
        uint8_t fl = done + n == payload_len ? flags : (uint8_t)(flags & ~(F_FIN | F_PSH));
        long end = build(ctx, f, start + done, f->snd_nxt + done, fl, window, tsv, n, 0,
                         (uint16_t)n);
        if (end > 0)
            link_write(ctx, start + done, (size_t)end);
        done += n;
    }
}

/* Twin of ToHost.window and TcpConnection._window_field. */
uint16_t flow_window_field(struct ns_ctx *ctx, struct ns_flow *f, int fresh)
{
    int64_t window;
    if (f->blocked) {
        window = ctx->pending_slack - (int64_t)f->unsent_len;
        if (window < 0)
            window = 0;
    } else {
        int64_t estimate = f->space_known - f->written_since;
        if (fresh || estimate <= f->space_known / 2) {
            long space = ns_sock_send_space(f->fd);
            f->space_known = space > 0 ? space : 0;
            f->written_since = 0;
            estimate = f->space_known;
        }
        window = estimate + ctx->pending_slack;
        if (window > ctx->window_max)
            window = ctx->window_max;
    }
    f->window_advertised = (uint32_t)window;
    int64_t field = window >> f->our_wscale;
    if (field > 0xffff)
        field = 0xffff;
    /* twin of TcpConnection.advertise: the right edge moves, never left */
    int64_t room = (int32_t)(f->rcv_adv - f->rcv_nxt);
    int64_t adv = field << f->our_wscale;
    if (room < adv || room > ctx->window_max)
        f->rcv_adv = f->rcv_nxt + (uint32_t)adv;
    return (uint16_t)field;
}

void flow_send_ack(struct ns_ctx *ctx, struct ns_flow *f, double now)
{
    flow_emit(ctx, f, F_ACK, flow_window_field(ctx, f, 0), 0, now);
    f->ack_needed = 0;
}

void flow_arm_rto(struct ns_ctx *ctx, struct ns_flow *f, double now)
{
    f->rto_deadline = now + f->rto;
    if (f->rto_deadline < f->py_timer_at && !f->timer_listed && !f->unadopted) {
        /* (a flow Python has not seen is adopted before its deadline: flow_syn.c) */
        /* Python's timer would come too late: it is told after this call */
        f->timer_listed = 1;
        ctx->timers[ctx->ntimers++] = f->slot;
    }
}

/* Twin of tcp/to_guest.py send_fin: the host's EOF was read. */
static void send_fin(struct ns_ctx *ctx, struct ns_flow *f, double now)
{
    flow_emit(ctx, f, F_FIN | F_ACK, flow_window_field(ctx, f, 0), 0, now);
    f->ack_needed = 0;
    f->fin_to_guest = 1;
    if (!f->fin_from_guest)
        f->fin_to_guest_first = 1;
    f->snd_nxt += 1;
    f->last_activity = now;
    if (f->rto_deadline == 0)
        flow_arm_rto(ctx, f, now);
}

/* Twin of tcp/to_guest.py pump: host data the guest's window allows, then our
 * FIN once the host's EOF is reached. */
void flow_pump(struct ns_ctx *ctx, struct ns_flow *f, double now)
{
    int hlen = TCP_LEN + (f->ts_enabled ? TS_LEN : 0);
    uint8_t *payload = ctx->tx + payload_offset(hlen);
    while (!f->eject && !f->fin_to_guest) {
        int64_t in_flight = (int32_t)(f->snd_nxt - f->snd_una);
        int64_t room = (int64_t)f->guest_window - in_flight;
        if (room <= 0) {
            if (in_flight == 0 && f->rto_deadline == 0)
                flow_eject(ctx, f, EJECT_PUMP, 0); /* persist: Python probes the window */
            return;
        }
        int64_t limit = MAX_PACKET - IP4_LEN - hlen;
        if (room < limit)
            limit = room;
        int64_t off = f->acked_in_queue + in_flight;
        if (off != f->peek_off) {
            int o = (int)off;
            if (setsockopt(f->fd, SOL_SOCKET, SO_PEEK_OFF, &o, sizeof(o)) < 0) {
                flow_eject(ctx, f, EJECT_ERROR, errno);
                return;
            }
            f->peek_off = off;
        }
        ssize_t n = recv(f->fd, payload, (size_t)limit, MSG_PEEK | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                f->host_readable = 0;
                return;
            }
            flow_eject(ctx, f, EJECT_ERROR, errno);
            return;
        }
        if (n == 0) {
            f->host_readable = 0;
            f->eof_from_host = 1;
            send_fin(ctx, f, now);
            return;
        }
        f->peek_off += n;
        flow_emit(ctx, f, F_ACK | F_PSH, flow_window_field(ctx, f, 0), (uint32_t)n, now);
        f->ack_needed = 0;
        f->snd_nxt += (uint32_t)n;
        f->bytes_to_guest += (uint64_t)n;
        f->last_activity = now;
        if (f->rto_deadline == 0)
            flow_arm_rto(ctx, f, now);
        if (n < limit && !f->peer_closed) {
            f->host_readable = 0; /* drained: the next byte brings a fresh edge */
            return;
        }
    }
}
