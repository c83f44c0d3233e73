/* netstack C fast path: a port forward's connections, accepted and opened to the guest
 * here without Python (the other direction of csrc/flow_syn.c).
 *
 * Python lists a TCP forward's listener here (ns_listen_add) when it listens on an
 * IPv4 address, and tells the guest's MAC once it knows it (ns_listen_set_mac). When
 * the listener is readable, each connection accepted becomes a flow as
 * TcpTable.open_to_guest and handshake.open_to_guest make one: the client's address as
 * the guest sees it (listeners.client_as_seen_by_guest: 0/8, 127/8 and the guest's own
 * network appear as the gateway; every client of an IPv6 guest as the router's
 * address), our SYN with MSS, timestamp and window scale, and the flow held here as
 * Python holds one in SYN_SENT (`syn_sent`), with no connection in Python
 * (`unadopted`). The guest's SYN-ACK, when plain (no data, the right ACK, options Python
 * would take), is taken here (twin of handshake.on_synack): the ACK goes out, whatever
 * the client wrote meanwhile follows, and the flow is an established one of C's. A
 * short connection is then done before Python ever sees it (flow_syn.c's closing).
 *
 * Anything else is Python's: a listener whose guest's MAC is not known yet, a full table
 * (Python accepts, and refuses or evicts), a connection whose fd is beyond the table
 * (accepted here, listed in ctx->fwd_py_fd for Python to open), any other segment for
 * the flow (an RST, a SYN-ACK with data or the wrong ACK), any other host event; each
 * has Python take the flow on first (csrc/flow_syn.c), in SYN_SENT, and its timers.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "flow.h"

#define ACCEPTS_PER_EVENT 64 /* listeners.py ACCEPTS_PER_WAKEUP */

static struct ns_listener *listener_of(struct ns_ctx *ctx, int fd)
{
    for (int i = 0; i < ctx->nlisteners; i++)
        if (ctx->listeners[i].fd == fd)
            return &ctx->listeners[i];
    return NULL;
}

/* fd (an IPv4 TCP listener, in the loop's epoll already) forwards to guest_ip:
 * guest_port; 0, or -1 when the table of listeners is full (Python accepts then). */
int ns_listen_add(struct ns_ctx *ctx, int fd, const uint8_t *guest_ip, uint16_t guest_port,
                  int v6)
{
    if (ctx->nlisteners >= NS_LISTENERS_MAX || listener_of(ctx, fd))
        return -1;
    struct ns_listener *l = &ctx->listeners[ctx->nlisteners++];
    memset(l, 0, sizeof(*l));
    l->fd = fd;
    l->v6 = v6;
    memcpy(l->guest_ip, guest_ip, 16);
    l->guest_port = guest_port;
    return 0;
}

/* The listener closes (before its fd does); the connections it opened go on. */
void ns_listen_remove(struct ns_ctx *ctx, int fd)
{
    struct ns_listener *l = listener_of(ctx, fd);
    if (l)
        *l = ctx->listeners[--ctx->nlisteners];
}

/* The guest's MAC for the listener fd (mac NULL: unknown, Python accepts; fd -1: every
 * listener). */
void ns_listen_set_mac(struct ns_ctx *ctx, int fd, const uint8_t *mac)
{
    for (int i = 0; i < ctx->nlisteners; i++) {
        struct ns_listener *l = &ctx->listeners[i];
        if (fd != -1 && l->fd != fd)
            continue;
        l->mac_known = mac != NULL;
        if (mac)
            memcpy(l->guest_mac, mac, 6);
    }
}

/* Python is about to open this 4-tuple (IPv4 as ::ffff:a.b.c.d): a flow lingering here
 * in TIME_WAIT on it gives way (twin of open_to_guest); another flow on it is returned
 * (NULL: none). */
struct ns_flow *ns_tuple_claim(struct ns_ctx *ctx, const uint8_t *guest_ip, uint16_t guest_port,
                               const uint8_t *remote_ip, uint16_t remote_port)
{
    struct ns_flow *f = flow_lookup(ctx, guest_ip, guest_port, remote_ip, remote_port);
    if (f && f->time_wait) {
        tw_free(ctx, f);
        return NULL;
    }
    return f;
}

/* Twin of listeners.client_as_seen_by_guest for an IPv4 client (addr, 4 bytes). */
static void client_as_seen(const struct ns_ctx *ctx, const struct ns_listener *l,
                           const uint8_t *addr, uint8_t *remote)
{
    if (l->v6) {
        memcpy(remote, ctx->fwd_host6, 16);
        return;
    }
    int stand_in = addr[0] == 0 || addr[0] == 127;
    int in_network = 1;
    for (int i = 0; i < 4; i++)
        if ((addr[i] & ctx->fwd_mask[i]) != ctx->fwd_net[i])
            in_network = 0;
    memcpy(remote, V4_MAPPED, 12);
    memcpy(remote + 12, stand_in || in_network ? ctx->fwd_gateway : addr, 4);
}

/* Whether a new flow fits: Python's limit, the flows lingering here in TIME_WAIT giving
 * way first (twin of table._room); without room Python accepts, and refuses. */
static int room(struct ns_ctx *ctx)
{
    while ((ctx->py_flows + ctx->nunadopted + ctx->ntime_wait >= ctx->syn_flow_limit ||
            ctx->nfree == 0) &&
           ns_tw_evict_oldest(ctx))
        ;
    return ctx->py_flows + ctx->nunadopted + ctx->ntime_wait < ctx->syn_flow_limit &&
           ctx->nfree > 0;
}

/* One accepted connection (cfd, from the IPv4 client addr:port): 1 when it is a flow
 * now, or was closed as Python would close it; 0 when Python is to open it. */
static int open_to_guest(struct ns_ctx *ctx, struct ns_listener *l, int cfd,
                         const struct sockaddr_in *client, double now)
{
    uint8_t remote[16];
    uint16_t rport = ntohs(client->sin_port);
    client_as_seen(ctx, l, (const uint8_t *)&client->sin_addr, remote);
    struct ns_flow *old = flow_lookup(ctx, l->guest_ip, l->guest_port, remote, rport);
    if (old && old->time_wait) {
        tw_free(ctx, old); /* twin of open_to_guest: a TIME_WAIT flow gives way */
    } else if (old) {
        close(cfd); /* the 4-tuple is a live flow's: tcp_forward_tuple_busy */
        ctx->forwards_busy++;
        return 1;
    }
    if (cfd >= ctx->by_fd_cap)
        return 0;
    /* twin of HostTcpStream's _tune for an accepted socket, and its registration */
    int one = 1, zero = 0;
    if (setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0 ||
        setsockopt(cfd, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof(zero)) < 0)
        return 0;
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET; /* streams.py STREAM_EVENTS */
    ev.data.fd = cfd;
    if (epoll_ctl(ctx->syn_epfd, EPOLL_CTL_ADD, cfd, &ev) < 0)
        return 0;
    struct ns_flow *f = ns_flow_open(ctx, cfd, l->guest_ip, l->guest_port, remote, rport, l->v6);
    if (!f) {
        epoll_ctl(ctx->syn_epfd, EPOLL_CTL_DEL, cfd, NULL);
        return 0;
    }
    memcpy(f->guest_mac, l->guest_mac, 6);
    f->iss = syn_iss(ctx, l->guest_ip, l->guest_port, remote, rport, now);
    /* twin of TcpConnection's state for a connection we open: options offered, the
     * SYN-ACK decides them */
    uint32_t headers_len = (l->v6 ? IP6_LEN : IP4_LEN) + TCP_LEN;
    f->our_mss = ctx->syn_mtu - headers_len > 64 ? ctx->syn_mtu - headers_len : 64;
    f->our_wscale = ctx->syn_our_wscale;
    f->ts_enabled = 1;
    f->seg_size = ctx->syn_default_mss;
    f->snd_una = f->iss;
    f->snd_nxt = f->iss + 1;
    f->syn_sent = 1;
    f->forwarded = 1;
    ctx->forwards_in_c++;
    syn_open_unadopted(ctx, f, F_SYN, now);
    return 1;
}

/* An event on fd: 1 when fd is a listener of ours (its connections accepted), else 0. */
int fwd_host_event(struct ns_ctx *ctx, int fd, double now)
{
    struct ns_listener *l = listener_of(ctx, fd);
    if (!l)
        return 0;
    for (int i = 0; i < ACCEPTS_PER_EVENT; i++) {
        if (!l->mac_known || ctx->nfwd_py >= NS_FWD_PY_MAX || !room(ctx))
            return 0; /* Python accepts: it resolves the MAC, or refuses */
        struct sockaddr_in client;
        socklen_t len = sizeof(client);
        int cfd = accept4(fd, (struct sockaddr *)&client, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return 1;
            return 0; /* Python's accept meets the error too, and logs it */
        }
        if (len < sizeof(client) || client.sin_family != AF_INET ||
            !open_to_guest(ctx, l, cfd, &client, now)) {
            ctx->fwd_py_fd[ctx->nfwd_py] = cfd;
            ctx->fwd_py_listener[ctx->nfwd_py] = fd;
            ctx->nfwd_py++;
        }
    }
    return 1; /* more may wait: the listener is level-triggered */
}

/* A SYN-ACK (g) for f, whose SYN is ours: 1 when taken here (twin of
 * handshake.on_synack), 0 for Python. */
int fwd_rx_synack(struct ns_ctx *ctx, struct ns_flow *f, const struct guest_ip *g, double now)
{
    const uint8_t *eth = ctx->rx + VNET_LEN, *t = g->l4;
    size_t hlen = (size_t)(t[12] >> 4) * 4;
    if (f->eject || f->v6 != g->v6 || memcmp(eth + 6, f->guest_mac, 6))
        return 0;
    if ((t[13] & (F_SYN | F_ACK | F_RST | F_FIN | F_URG)) != (F_SYN | F_ACK) || hlen < TCP_LEN ||
        hlen != g->l4_len || get32(t + 8) != f->iss + 1)
        return 0; /* data on it, or the wrong ACK (Python resets it) */
    struct syn_options o;
    if (syn_parse_options(t + TCP_LEN, hlen - TCP_LEN, &o) < 0)
        return 0;
    syn_take_options(ctx, f, &o, get16(t + 14));
    f->rcv_nxt = get32(t + 4) + 1;
    f->rcv_adv = f->rcv_nxt + f->window_advertised; /* our SYN's window */
    f->snd_una = f->iss + 1;
    f->retries = 0;
    f->rto = ctx->rto_initial;
    f->rto_deadline = 0;
    f->syn_sent = 0;
    f->last_activity = now;
    flow_send_ack(ctx, f, now);
    f->host_readable = 1; /* the client may have written before the guest answered */
    flow_pump(ctx, f, now);
    return 1;
}
