/* netstack C fast path: the event loop's wait, in C (ns_loop), for the runtime on
 * EpollLoop (netstack/host/loop.py).
 *
 * One epoll holds the loop's readers (the TAP, the signal wakeup pipe, a pidfd...)
 * and every host socket. ns_loop waits on it until Python's next timer and serves
 * what C owns without returning: TAP frames of held flows (ns_rx), host-socket events
 * of held flows (flow_host_event), delayed ACKs (their deadline bounds the wait, no
 * timerfd). It returns to Python only with something for Python: a frame C did not
 * take (in ctx->rx), events of fds C does not own (ctx->ev_fd / ev_mask), flows
 * ejected or timers to move (NS_PYTHON_WORK), an interrupted wait (a signal: its
 * handler runs in Python), or the deadline.
 *
 * A request/response exchange then costs two epoll_waits (the request's frame, the
 * host's answer) and no Python at all. The TAP is read one frame per wakeup while
 * frames come one at a time (the read that would find it empty is skipped), in
 * batches as soon as a wakeup finds more queued.
 *
 * For ctx->spin seconds after an event the wait polls without sleeping: the host's
 * answer to a request just forwarded, or the guest's next segment, usually comes
 * within tens of microseconds, and a sleep and wakeup cost about that much again (in
 * a VM most of all). Between polls it yields the CPU, so a client or server that is
 * runnable on this CPU (the one whose answer we wait for, on a small machine) is not
 * kept from it. An idle stack does not spin.
 *
 * A CPU-bound task on our CPU turns those yields against us: each one hands it a whole
 * slice (about 4 ms here) while frames wait, and a spinning stack is never woken (a
 * wakeup would preempt the task). So ns_yield (the spin's yield, and the UDP paths'
 * after a batch: YIELDING in csrc/udp.h) times each yield, and when yields longer than
 * YIELD_SLOW took more than half of a YIELD_WINDOW, the stack neither yields nor spins
 * for YIELD_BACKOFF: it sleeps in epoll_wait. A client's or server's turn is shorter,
 * and long ones are rare without such a task (iperf3 UDP at no rate limit: 17 of 70,000
 * yields took 2-4 ms; connection loop: none over 2 ms). With a busy loop pinned to
 * netstack's CPU, request/response p50 read 8.0 ms before and 0.12 ms now; iperf3 UDP
 * guest->host 1400 B with the guest's sender on netstack's CPU 0.41 Gbit/s and 1.49
 * (2026-11-30). The back-offs are counted (yield_backoffs).
 */
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <time.h>

#include "flow.h"

#define YIELD_SLOW 0.001    /* a client's or server's turn is shorter; a slice is longer */
#define YIELD_WINDOW 0.05    /* more than half of it in slow yields: back off */
#define YIELD_BACKOFF 0.5

double ns_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* time.monotonic's clock */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Give the CPU to whoever is runnable on it, unless a recent yield found a CPU-bound
 * task there (see the opening comment). */
void ns_yield(struct ns_ctx *ctx)
{
    double before = ns_monotonic();
    if (before < ctx->yield_off_until)
        return;
    sched_yield();
    double after = ns_monotonic();
    if (after - before > YIELD_SLOW)
        ctx->yield_slow_time += after - before;
    if (after - ctx->yield_window >= YIELD_WINDOW) {
        if (ctx->yield_slow_time > (after - ctx->yield_window) / 2) {
            ctx->yield_off_until = after + YIELD_BACKOFF;
            ctx->yield_backoffs++;
        }
        ctx->yield_window = after;
        ctx->yield_slow_time = 0;
    }
}

/* epoll_wait's timeout in ms until `until` (rounded up, as Python's epoll.poll does:
 * never early), -1 for no deadline. */
static int timeout_ms(double until, double now)
{
    if (isinf(until))
        return -1;
    double ms = ceil((until - now) * 1000.0);
    if (ms <= 0)
        return 0;
    if (ms > 86400000.0)
        return 86400000;
    return (int)ms;
}

/* The TAP was readable: ns_rx's batch, or a single frame in lone mode. */
static long tap_readable(struct ns_ctx *ctx, double now, int max_frames)
{
    if (ctx->lone_pending)
        ctx->rx_lone = 0; /* readable right after a lone read: frames queue up */
    uint64_t before = ctx->frames_in;
    long r = ns_rx(ctx, now, ctx->rx_lone ? 1 : max_frames);
    uint64_t got = ctx->frames_in - before;
    if (!ctx->rx_lone && got == 1 && (r == 0 || r == NS_PYTHON_WORK))
        ctx->rx_lone = 1; /* one frame, then a read that found the TAP empty (not: a
                           * first frame for Python, which ends the batch before it) */
    ctx->lone_pending = ctx->rx_lone && got == 1;
    return r;
}

/* Wait on epfd until `deadline` (CLOCK_MONOTONIC seconds; INFINITY: no limit), at
 * least once. Returns the length of a frame Python must handle (in ctx->rx) or 0,
 * plus NS_PYTHON_WORK if flows wait in ctx->ejects or ctx->timers; ctx->nev events
 * are listed for Python. 0 with no events: the deadline came, or a signal interrupted
 * the wait. -errno when the link or the epoll failed. */
long ns_loop(struct ns_ctx *ctx, int epfd, double deadline, int max_frames)
{
    struct epoll_event evs[EVENTS_MAX];
    int first = 1;
    ctx->nev = 0;
    ctx->loop_returns++;
    for (;;) {
        double now = ns_monotonic();
        if (ctx->delack_next != 0 && ctx->delack_next <= now)
            delack_run(ctx, now);
        if (ctx->link_errno)
            return -ctx->link_errno;
        if (ctx->adopt_at != 0 && ctx->adopt_at <= now)
            ns_adopt_all(ctx);
        if (ctx->tw_head && ctx->flows[ctx->tw_head - 1].tw_until <= now)
            ns_tw_expire(ctx, now);
        if (tcp_python_work(ctx) || udp_python_work(ctx) || dns_python_work(ctx))
            return NS_PYTHON_WORK;
        if (!first && now >= deadline)
            return 0;
        first = 0;
        double until = deadline;
        if (ctx->delack_next != 0 && ctx->delack_next < until)
            until = ctx->delack_next;
        if (ctx->adopt_at != 0 && ctx->adopt_at < until)
            until = ctx->adopt_at;
        if (ctx->tw_head && ctx->flows[ctx->tw_head - 1].tw_until < until)
            until = ctx->flows[ctx->tw_head - 1].tw_until;
        ctx->loop_waits++;
        int timeout = timeout_ms(until, now);
        int n;
        if (timeout != 0 && ctx->spin > 0 && now < ctx->last_event + ctx->spin &&
            now >= ctx->yield_off_until) {
            /* an answer is likely soon: look again without sleeping (a wakeup costs
             * more than a few empty polls, in a VM most of all) */
            n = epoll_wait(epfd, evs, EVENTS_MAX, 0);
            if (n == 0) {
                ns_yield(ctx); /* a client or server runnable on this CPU goes first */
                continue;
            }
        } else {
            n = epoll_wait(epfd, evs, EVENTS_MAX, timeout);
        }
        if (n < 0) {
            if (errno == EINTR)
                return 0; /* Python runs the signal's handler */
            return -errno;
        }
        now = ns_monotonic();
        if (n > 0)
            ctx->last_event = now;
        int tap = 0;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.fd == ctx->tap_fd)
                tap = 1; /* last: a frame for Python stops the batch */
            else
                flow_host_event(ctx, evs[i].data.fd, evs[i].events, now);
        }
        long r = 0;
        if (tap)
            r = tap_readable(ctx, now, max_frames);
        else if (n > 0)
            ctx->lone_pending = 0;
        if (r < 0)
            return r;
        if (ctx->link_errno)
            return -ctx->link_errno;
        int work = tcp_python_work(ctx) || udp_python_work(ctx) || dns_python_work(ctx);
        if (r > 0 || ctx->nev || work) {
            if (r >= NS_PYTHON_WORK)
                return r;
            return r + (work ? NS_PYTHON_WORK : 0);
        }
    }
}
