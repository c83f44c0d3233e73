/* netstack C fast path: established TCP flows (IPv4 and IPv6), both directions, without Python.
 *
 * Python's TCP core (netstack/tcp/connection.py) is the whole protocol and the twin of
 * this file. While a connection is established and nothing unusual is happening, Python
 * hands it here (netstack/tcp/fastpath.py copies its state into a struct ns_flow):
 *   - ns_rx reads frames from the TAP. An in-order segment with only ACK/PSH (and at
 *     most a timestamp option) for a flow held here is handled in C: ACK processing,
 *     payload to the host socket (small segments of a batch gathered into one send),
 *     host data pumped to the guest. Every other frame is returned to Python as is.
 *   - ns_host_poll waits on the host-socket epoll: plain readable/writable events of
 *     flows held here are handled in C; the rest are listed for Python.
 * A guest-opened connection is handed over as soon as its SYN-ACK is out (`handshake`):
 * the guest's ACK of it (and the data after it) is taken here, and Python sees the
 * connection established when it next takes the flow back.
 * Closing is taken here too, as Python's flags say it: the guest's bare FIN (the host
 * socket's write side shut down, the FIN acknowledged as any segment, delayed: our
 * FIN usually carries it), the host's EOF (our FIN sent after its data), the guest's
 * ACK of our FIN. When both ways are closed and
 * our FIN is acknowledged the flow is listed `EJECT_DONE`, and Python closes the
 * connection: a short connection costs Python its SYN and that, not a call per FIN (a
 * flow Python never saw closes here, or lingers here in TIME_WAIT: flush_dirty).
 * Whatever else C cannot finish (a host error, a socket that filled, a zero window, a
 * FIN with data) marks the flow `eject` and lists it; Python takes the flow back
 * (ns_flow_flush, copy, ns_flow_close) and goes on in Python.
 * Frames to the guest (segments, the window, host data pumped, our FIN) are built in
 * csrc/flow_to_guest.c; SYNs answered in C are csrc/flow_syn.c's.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "flow.h"

/* ---------------------------------------------------------- guest bytes to the host */

static int unsent_reserve(struct ns_flow *f, uint32_t more)
{
    if (f->unsent_len + more <= f->unsent_cap)
        return 0;
    uint32_t cap = f->unsent_cap ? f->unsent_cap : 4096;
    while (cap < f->unsent_len + more)
        cap *= 2;
    uint8_t *p = realloc(f->unsent, cap);
    if (!p)
        return -1;
    f->unsent = p;
    f->unsent_cap = cap;
    return 0;
}

/* Write the gathered bytes; a short write leaves the rest and ejects the flow. */
static void write_unsent(struct ns_ctx *ctx, struct ns_flow *f)
{
    if (!f->unsent_len)
        return;
    ssize_t n = send(f->fd, f->unsent, f->unsent_len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR) {
            flow_eject(ctx, f, EJECT_ERROR, errno);
            return;
        }
        n = 0;
    }
    f->written_since += n;
    if ((uint32_t)n < f->unsent_len) {
        memmove(f->unsent, f->unsent + n, f->unsent_len - (uint32_t)n);
        f->unsent_len -= (uint32_t)n;
        f->blocked = 1;
        flow_eject(ctx, f, EJECT_BLOCKED, 0);
        return;
    }
    f->unsent_len = 0;
    if (f->unsent_cap > UNSENT_KEEP) { /* a burst's buffer is not kept while idle */
        free(f->unsent);
        f->unsent = NULL;
        f->unsent_cap = 0;
    }
}

/* Twin of ToHost.take with nothing pending: small segments are gathered, large ones
 * written at once. Returns bytes taken (all of them unless the socket failed). */
static uint32_t take(struct ns_ctx *ctx, struct ns_flow *f, const uint8_t *p, uint32_t len)
{
    if (len <= ctx->gather_max_segment && f->unsent_len + len <= UNSENT_MAX) {
        if (unsent_reserve(f, len) < 0) {
            flow_eject(ctx, f, EJECT_ERROR, ENOMEM);
            return 0;
        }
        memcpy(f->unsent + f->unsent_len, p, len);
        f->unsent_len += len;
        return len;
    }
    ssize_t n = send(f->fd, p, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR) {
            flow_eject(ctx, f, EJECT_ERROR, errno);
            return 0;
        }
        n = 0;
    }
    f->written_since += n;
    if ((uint32_t)n < len) {
        uint32_t rest = len - (uint32_t)n;
        if (unsent_reserve(f, rest) < 0) {
            flow_eject(ctx, f, EJECT_ERROR, ENOMEM);
            return (uint32_t)n;
        }
        memcpy(f->unsent, p + n, rest);
        f->unsent_len = rest;
        f->blocked = 1;
        flow_eject(ctx, f, EJECT_BLOCKED, 0);
    }
    return len;
}

static void mark_dirty(struct ns_ctx *ctx, struct ns_flow *f)
{
    if (!f->dirty) {
        f->dirty = 1;
        ctx->dirty[ctx->ndirty++] = f->slot;
    }
}

/* Twin of TcpConnection.flush: gathered bytes out, acknowledged host bytes dropped,
 * the ACK the guest is owed. */
/* Acknowledged host bytes leave the socket at once: only a real read moves the
 * socket's receive window (and frees its buffer), and a sender that waits for it would
 * wait forever on a few bytes held back. */
static void flush_data(struct ns_ctx *ctx, struct ns_flow *f)
{
    write_unsent(ctx, f);
    if (f->acked_in_queue && f->eject != EJECT_ERROR) {
        long done = ns_discard(f->fd, (size_t)f->acked_in_queue);
        if (done < 0) {
            flow_eject(ctx, f, EJECT_ERROR, (int)-done);
        } else {
            f->acked_in_queue = 0;
            f->peek_off = f->peek_off > done ? f->peek_off - done : 0;
        }
    }
}

void ns_flow_flush(struct ns_ctx *ctx, struct ns_flow *f, double now)
{
    flush_data(ctx, f);
    if (f->ack_needed && f->eject != EJECT_ERROR)
        flow_send_ack(ctx, f, now);
}

/* Delayed ACK: when a batch brought less than two full segments since our last ACK,
 * the ACK waits up to delack_delay for host data to carry it (a request answered at
 * once costs one frame to the guest, not two). More data, or the delay running out,
 * sends it. The deadline is a timerfd in the host-socket epoll (ns_host_poll runs it),
 * armed only when a deadline comes before the armed one: no timer churn; under ns_loop
 * (ctx->loop_delack) no timerfd at all: the loop's wait ends at ctx->delack_next. */
static void arm_delack_timer(struct ns_ctx *ctx, double at)
{
    if (ctx->loop_delack)
        return; /* ns_loop waits until ctx->delack_next itself */
    if (ctx->delack_armed_at != 0 && ctx->delack_armed_at <= at)
        return;
    struct itimerspec its;
    memset(&its, 0, sizeof(its));
    its.it_value.tv_sec = (time_t)at;
    its.it_value.tv_nsec = (long)((at - (double)(time_t)at) * 1e9);
    if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0)
        its.it_value.tv_nsec = 1; /* zero would disarm it */
    if (timerfd_settime(ctx->delack_fd, TFD_TIMER_ABSTIME, &its, NULL) == 0)
        ctx->delack_armed_at = at;
}

static int delay_ack(struct ns_ctx *ctx, struct ns_flow *f, double now)
{
    if ((uint32_t)(f->rcv_nxt - f->rcv_acked) >= 2 * f->our_mss || ctx->delack_delay <= 0)
        return 0;
    if (!f->delack_listed) {
        f->delack_listed = 1;
        f->delack_at = now + ctx->delack_delay;
        ctx->delacks[ctx->ndelacks++] = f->slot;
        if (ctx->delack_next == 0 || f->delack_at < ctx->delack_next)
            ctx->delack_next = f->delack_at;
        arm_delack_timer(ctx, f->delack_at);
    }
    return 1;
}

/* Send the delayed ACKs that are due (or drop those data already carried); re-arm
 * the timer for the rest. */
void delack_run(struct ns_ctx *ctx, double now)
{
    uint64_t expirations;
    if (!ctx->loop_delack && read(ctx->delack_fd, &expirations, sizeof(expirations)) < 0) {
        /* EAGAIN: not expired yet (a spurious wakeup) */
    }
    ctx->delack_armed_at = 0;
    double next = 0;
    for (int i = 0; i < ctx->ndelacks;) {
        struct ns_flow *f = &ctx->flows[ctx->delacks[i]];
        if (f->ack_needed && !f->eject && f->delack_at > now) {
            if (next == 0 || f->delack_at < next)
                next = f->delack_at;
            i++;
            continue;
        }
        if (f->ack_needed && !f->eject)
            flow_send_ack(ctx, f, now);
        f->delack_listed = 0;
        ctx->delacks[i] = ctx->delacks[--ctx->ndelacks];
    }
    ctx->delack_next = next;
    if (next != 0)
        arm_delack_timer(ctx, next);
}

static void flush_dirty(struct ns_ctx *ctx, double now)
{
    for (int i = 0; i < ctx->ndirty; i++) {
        struct ns_flow *f = &ctx->flows[ctx->dirty[i]];
        f->dirty = 0;
        if (f->eject == EJECT_DONE && f->unadopted) { /* Python never saw it */
            if (f->fin_to_guest_first)
                tw_enter(ctx, f, now); /* our FIN went first: TIME_WAIT, here */
            else
                syn_close(ctx, f, now); /* closed here */
            continue;
        }
        if (f->eject)
            continue;
        flush_data(ctx, f);
        if (f->ack_needed && f->eject != EJECT_ERROR && !delay_ack(ctx, f, now))
            flow_send_ack(ctx, f, now);
    }
    ctx->ndirty = 0;
}

/* ------------------------------------------------------------- frames from the guest */

/* One frame at ctx->rx (virtio-net header first): 1 when handled here, 0 for Python. */
static int rx_frame(struct ns_ctx *ctx, size_t len, double now)
{
    if (len < VNET_LEN + ETH_LEN + IP4_LEN + TCP_LEN)
        return 0;
    const uint8_t *eth = ctx->rx + VNET_LEN;
    struct guest_ip g;
    if (!guest_ip_parse(ctx, len, 6, TCP_LEN, &g))
        return 0;
    const uint8_t *t = g.l4;
    size_t l4_len = g.l4_len;
    size_t hlen = (size_t)(t[12] >> 4) * 4;
    uint8_t flags = t[13];
    struct ns_flow *f = NULL;
    int looked_up = 0;
    if (ctx->ntime_wait || ctx->nunadopted) { /* a flow of C's own in TIME_WAIT? */
        f = flow_lookup(ctx, g.src, get16(t), g.dst, get16(t + 2));
        looked_up = 1;
        if (f && f->v6 == g.v6 && !f->time_wait && f->unadopted && f->eject == EJECT_DONE &&
            f->fin_to_guest_first)
            tw_enter(ctx, f, now); /* closed earlier in this batch: it lingers from now */
        if (f && f->v6 == g.v6 && f->time_wait) {
            if ((flags & (F_SYN | F_ACK)) != F_SYN)
                return tw_rx_frame(ctx, f, &g, now);
            tw_free(ctx, f); /* the guest reuses the 4-tuple: a new flow (table.py) */
            f = NULL;
        }
    }
    if ((flags & (F_SYN | F_RST | F_URG)) || !(flags & F_ACK)) {
        if ((flags & (F_SYN | F_ACK)) == (F_SYN | F_ACK)) { /* to a SYN of ours? */
            if (!looked_up)
                f = flow_lookup(ctx, g.src, get16(t), g.dst, get16(t + 2));
            return f && f->syn_sent ? fwd_rx_synack(ctx, f, &g, now) : 0;
        }
        return flags & F_SYN ? syn_rx_frame(ctx, &g, now) : 0;
    }
    int fin = flags & F_FIN;
    int has_ts = 0;
    if (hlen == TCP_LEN + TS_LEN && hlen <= l4_len && t[20] == 1 && t[21] == 1 && t[22] == 8 &&
        t[23] == 10)
        has_ts = 1;
    else if (hlen != TCP_LEN)
        return 0;
    if (!looked_up)
        f = flow_lookup(ctx, g.src, get16(t), g.dst, get16(t + 2));
    if (!f || f->eject || f->syn_sent || f->v6 != g.v6 || memcmp(eth + 6, f->guest_mac, 6))
        return 0; /* an IPv6 frame with v4-mapped addresses is not the IPv4 flow's */
    uint32_t seq = get32(t + 4), ack = get32(t + 8);
    uint32_t window = (uint32_t)get16(t + 14) << f->guest_wscale;
    uint32_t plen = (uint32_t)(l4_len - hlen);
    if (seq != f->rcv_nxt || seq_lt(f->snd_nxt, ack))
        return 0; /* out of order, a probe, or an ACK of what we never sent */
    if ((fin && plen) || (f->fin_from_guest && (fin || plen)))
        return 0; /* a FIN is taken here bare, once; no data comes after it */
    if (f->handshake && ack != f->snd_nxt)
        return 0; /* not the ACK of our SYN-ACK: Python answers it */
    if ((int64_t)plen > (int32_t)(f->rcv_adv - f->rcv_nxt))
        return 0; /* past the window we advertised: Python takes what fits */
    int progress = seq_lt(f->snd_una, ack);
    if (!progress) {
        if (ack != f->snd_una)
            return 0; /* an old ACK */
        if (f->snd_una != f->snd_nxt && plen == 0 && !fin && window == f->guest_window)
            return 0; /* a duplicate ACK: Python counts them */
    }
    if (fin && f->unsent_len) {
        write_unsent(ctx, f); /* the bytes before the FIN go first */
        if (f->eject)
            return 0;
    }
    if (plen && f->unsent_len &&
        (plen > ctx->gather_max_segment || f->unsent_len + plen > UNSENT_MAX)) {
        write_unsent(ctx, f); /* in order first; a short write ejects: Python takes it */
        if (f->eject)
            return 0;
    }

    f->last_activity = now;
    if (has_ts && f->ts_enabled)
        f->ts_recent = get32(t + 24);
    if (progress) {
        if (f->handshake) {
            f->handshake = 0; /* our SYN's sequence number: no byte in the host queue */
        } else {
            uint32_t acked = ack - f->snd_una;
            if (f->fin_to_guest && ack == f->snd_nxt) {
                f->fin_acked = 1;
                acked -= 1; /* our FIN's sequence number: no byte either */
            }
            f->acked_in_queue += acked;
        }
        f->snd_una = ack;
        f->retries = 0;
        f->rto = ctx->rto_initial;
        if (f->snd_una == f->snd_nxt)
            f->rto_deadline = 0;
        else
            flow_arm_rto(ctx, f, now);
    } else if (f->snd_una == f->snd_nxt) {
        f->retries = 0;
    }
    f->guest_window = window;
    if (plen) {
        uint32_t taken = take(ctx, f, t + hlen, plen);
        f->rcv_nxt += taken;
        f->bytes_from_guest += taken;
        f->ack_needed = 1;
    }
    if (fin) {
        /* twin of TcpConnection._on_data's FIN: nothing is gathered (written above),
         * so the host's write side closes now; a failed shutdown, as in Python, is
         * left to the socket's next event */
        f->fin_from_guest = 1;
        f->rcv_nxt += 1;
        f->ack_needed = 1; /* delayed as any ACK: the host's EOF usually comes first,
                            * and our FIN carries it (three frames to the guest for a
                            * short connection, not four) */
        shutdown(f->fd, SHUT_WR);
        f->host_write_shut = 1;
    }
    if (f->fin_from_guest && f->fin_to_guest && f->fin_acked)
        flow_eject(ctx, f, EJECT_DONE, 0); /* the owed ACK goes in the release's flush */
    mark_dirty(ctx, f);
    if (f->host_readable && !f->eject)
        flow_pump(ctx, f, now);
    return 1;
}

/* Read up to max_frames frames. Returns the length of a frame Python must handle (it is
 * in ctx->rx); when the TAP is drained or max_frames were read (gathered writes and
 * owed ACKs flushed), 0, or NS_PYTHON_WORK if flows wait in ctx->ejects or ctx->timers;
 * -errno when the link failed. */
long ns_rx(struct ns_ctx *ctx, double now, int max_frames)
{
    for (int i = 0; i < max_frames; i++) {
        ssize_t n;
        if (ctx->vnet) {
            n = read(ctx->tap_fd, ctx->rx, ctx->rx_cap);
        } else {
            n = read(ctx->tap_fd, ctx->rx + VNET_LEN, ctx->rx_cap - VNET_LEN);
            if (n >= 0) {
                memset(ctx->rx, 0, VNET_LEN);
                n += VNET_LEN;
            }
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            return -errno;
        }
        ctx->frames_in++;
        if (!rx_frame(ctx, (size_t)n, now) && !dns_rx_frame(ctx, (size_t)n, now) &&
            !udp_rx_frame(ctx, (size_t)n, now)) {
            udp_flush_to_host(ctx); /* a flow's datagrams leave in order, C's first */
            dns_flush_to_host(ctx);
            syn_frame_to_python(ctx, (size_t)n); /* its flow first, if Python lacks it */
            return n;
        }
        ctx->frames_in_c++;
        if (ctx->link_errno)
            return -ctx->link_errno;
        if (i == 0) {
            /* the first frame's data goes to the host before we look for a second: a
             * lone request does not wait for the read that finds the TAP empty */
            for (int d = 0; d < ctx->ndirty; d++) {
                struct ns_flow *f = &ctx->flows[ctx->dirty[d]];
                if (!f->eject)
                    write_unsent(ctx, f);
            }
            /* not UDP's gathered datagrams: their first alone would cost a send and a
             * wakeup of the receiver per batch (bulk guest->host 1.38 against 1.58
             * Gbit/s in an A/B); a lone one waits for the read that finds the TAP empty */
        }
    }
    udp_flush_to_host(ctx);
    dns_flush_to_host(ctx);
    flush_dirty(ctx, now);
    if (ctx->link_errno)
        return -ctx->link_errno;
    return tcp_python_work(ctx) || dns_python_work(ctx) ? NS_PYTHON_WORK : 0;
}

/* What ns_rx does when it stops at a drained TAP, for a reader that stops early (after
 * a frame for Python): gathered bytes to the host, owed ACKs to the guest. Returns 0,
 * NS_PYTHON_WORK or -errno as ns_rx does. */
long ns_rx_flush(struct ns_ctx *ctx, double now)
{
    udp_flush_to_host(ctx);
    dns_flush_to_host(ctx);
    flush_dirty(ctx, now);
    if (ctx->link_errno)
        return -ctx->link_errno;
    return tcp_python_work(ctx) || dns_python_work(ctx) ? NS_PYTHON_WORK : 0;
}

/* -------------------------------------------------------------- host socket events */

/* Twin of TcpConnection.on_host_writable with nothing pending: a window update when
 * the socket drained enough that the guest may be waiting for one. */
static void host_writable(struct ns_ctx *ctx, struct ns_flow *f, double now)
{
    if (f->window_advertised >= ctx->window_max / 2)
        return;
    if ((uint32_t)(f->rcv_adv - f->rcv_nxt) >= 2 * f->our_mss)
        return; /* the guest can still send: the ACK of what it sends carries the window */
    uint32_t before = f->window_advertised, edge_before = f->rcv_adv;
    uint16_t field = flow_window_field(ctx, f, 1);
    if (f->window_advertised >= 2 * (uint64_t)before + f->our_mss) {
        flow_emit(ctx, f, F_ACK, field, 0, now);
        f->ack_needed = 0;
    } else {
        f->window_advertised = before; /* nothing was advertised */
        f->rcv_adv = edge_before;
    }
}

/* One host-socket event: a held flow's plain readable/writable is served here, the
 * delayed-ACK timer run; anything else is listed in ctx->ev_fd / ev_mask for Python.
 * Shared by ns_host_poll and ns_loop (csrc/loop.c). */
void flow_host_event(struct ns_ctx *ctx, int fd, uint32_t events, double now)
{
    if (fd == ctx->delack_fd) {
        delack_run(ctx, now);
        return;
    }
    if (udp_host_event(ctx, fd, events, now) || dns_host_event(ctx, fd, events, now))
        return;
    if (ctx->nlisteners && fwd_host_event(ctx, fd, now))
        return;
    struct ns_flow *f = NULL;
    if (fd >= 0 && fd < ctx->by_fd_cap && ctx->by_fd[fd])
        f = &ctx->flows[ctx->by_fd[fd] - 1];
    if (f && f->peer_closed)
        events &= ~(uint32_t)EPOLLRDHUP; /* known already */
    if (f && (f->handshake || f->syn_sent) && !f->eject &&
        !(events & ~(uint32_t)(EPOLLIN | EPOLLOUT))) {
        if (events & EPOLLIN)
            f->host_readable = 1; /* pumped once the handshake is done */
        return;
    }
    const uint32_t served = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLHUP;
    if (!f || f->eject || f->handshake || f->syn_sent || (events & ~served)) {
        if (f)
            syn_list_adopt(ctx, f); /* Python takes the flow on before the event */
        ctx->ev_fd[ctx->nev] = fd;
        ctx->ev_mask[ctx->nev] = events;
        ctx->nev++;
        return;
    }
    /* twin of HostTcpStream.on_events: the host's FIN (or hang-up) comes behind its
     * data; the pump reads to it and sends ours */
    if (events & (EPOLLRDHUP | EPOLLHUP))
        f->peer_closed = 1;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) {
        f->host_readable = 1;
        flow_pump(ctx, f, now);
    }
    if ((events & EPOLLOUT) && !f->eject)
        host_writable(ctx, f, now);
}

/* One epoll_wait (no blocking) on the host-socket epoll. Events of flows held here
 * are handled; the others are listed in ctx->ev_fd / ev_mask for Python. Returns how
 * many were listed, plus NS_PYTHON_WORK if flows wait in ctx->ejects or ctx->timers;
 * or -errno. */
long ns_host_poll(struct ns_ctx *ctx, int epfd, double now)
{
    struct epoll_event evs[EVENTS_MAX];
    ctx->nev = 0;
    int n = epoll_wait(epfd, evs, EVENTS_MAX, 0);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    for (int i = 0; i < n; i++)
        flow_host_event(ctx, evs[i].data.fd, evs[i].events, now);
    if (ctx->link_errno)
        return -ctx->link_errno;
    int work = tcp_python_work(ctx) || udp_python_work(ctx) || dns_python_work(ctx);
    return ctx->nev + (work ? NS_PYTHON_WORK : 0);
}
