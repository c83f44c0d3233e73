/* netstack C fast path: a guest's SYN to the gateway, opened here without Python.
 *
 * The gateway's TCP ports are host loopback's (stack/policy.py; with -6 the router's
 * address, fd00::2, is ::1's), and a loopback connect() is complete when it returns.
 * So when Python has said the gateway goes to 127.0.0.1 and nothing more is decided
 * per connection (ctx->syn_on, syn_on6: the C loop runs, the host loopback is
 * allowed, no --outbound-addr for the family), a plain SYN to it is
 * answered here: a host socket connected, a SYN-ACK with the options Python's
 * handshake would pick (tcp/handshake.py, the twin), and the flow held in C as Python
 * holds one whose SYN-ACK is out (`handshake`); a refused connect gets its RST here.
 * Anything else about the SYN (data on it, a malformed option, an address Python
 * would drop, a connect that did not complete at once, a full table) leaves it to
 * Python, as before.
 *
 * Python has no connection for such a flow (`unadopted`). A short connection is done
 * before it needs one: when both ways close with the guest first, the flow is closed
 * here (syn_close); with the host first, it lingers here in TIME_WAIT
 * (csrc/flow_time_wait.c). Python takes a flow on (ctx->adopts, then ns_adopted) the moment it
 * has to see it: a frame or host event C leaves to Python, an eject, its API listing,
 * and every flow still open adopt_after seconds after it was opened (before its first
 * retransmission could be due: its timers are Python's).
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "flow.h"

#define OPT_END 0
#define OPT_NOP 1
#define OPT_MSS 2
#define OPT_WSCALE 3
#define OPT_TIMESTAMP 8
#define MAX_WSCALE 14
#define SYNACK_OPTIONS_MAX 20 /* MSS 4, NOP NOP timestamp 12, NOP window scale 4 */

/* Twin of wire/tcp.py parse_options for what a SYN carries (and a segment's
 * timestamp): 0 with o filled, -1 for a malformed list (Python's to refuse). */
int syn_parse_options(const uint8_t *p, size_t n, struct syn_options *o)
{
    memset(o, 0, sizeof(*o));
    o->wscale = -1;
    size_t i = 0;
    while (i < n) {
        uint8_t kind = p[i];
        if (kind == OPT_END)
            break;
        if (kind == OPT_NOP) {
            i++;
            continue;
        }
        if (i + 1 >= n)
            return -1;
        uint8_t len = p[i + 1];
        if (len < 2 || i + len > n)
            return -1;
        if (kind == OPT_MSS && len == 4) {
            o->mss = get16(p + i + 2);
        } else if (kind == OPT_WSCALE && len == 3) {
            o->wscale = p[i + 2] < MAX_WSCALE ? p[i + 2] : MAX_WSCALE;
        } else if (kind == OPT_TIMESTAMP && len == 10) {
            o->has_ts = 1;
            o->ts_val = get32(p + i + 2);
        }
        i += len;
    }
    return 0;
}

/* Whether g is a SYN's IP layer C takes: to the gateway (IPv4) or the router's
 * address (IPv6), from an address Python takes segments from (dispatch.py _ipv4,
 * _ipv6): inside the guest's network or /64, and not one of ours. */
static int syn_addresses(const struct ns_ctx *ctx, const struct guest_ip *g)
{
    if (g->v6) {
        return ctx->syn_on6 && !memcmp(g->dst, ctx->syn_host6, 16) &&
               !memcmp(g->src, ctx->syn_prefix6, 8) && memcmp(g->src, ctx->syn_host6, 16) &&
               memcmp(g->src, ctx->syn_dns6, 16);
    }
    const uint8_t *src = g->src + 12;
    if (!ctx->syn_on || memcmp(g->dst + 12, ctx->syn_gateway, 4))
        return 0;
    for (int i = 0; i < 4; i++)
        if ((src[i] & ctx->syn_mask[i]) != ctx->syn_net[i])
            return 0;
    return memcmp(src, ctx->syn_gateway, 4) && memcmp(src, ctx->syn_dns, 4);
}

/* Whether mac is a source MAC Python drops: multicast, zero, or one of ours. */
static int spoofed_mac(const struct ns_ctx *ctx, const uint8_t *mac)
{
    static const uint8_t zero[6];
    return (mac[0] & 1) || !memcmp(mac, zero, 6) || !memcmp(mac, ctx->gateway_mac, 6) ||
           !memcmp(mac, ctx->dns_mac, 6) || !memcmp(mac, ctx->router_mac, 6) ||
           !memcmp(mac, ctx->dns6_mac, 6);
}

/* A host socket connected to 127.0.0.1:port (::1 with v6), or -1 with *err the errno
 * of the call that failed (0: the connect is not complete). Twin of HostTcpStream's
 * _start_connect and _tune, for a connect complete when it returns. */
static int connect_loopback(struct ns_ctx *ctx, uint16_t port, int v6, int *err)
{
    *err = 0;
    int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *err = errno;
        return -1;
    }
    int one = 1, zero = 0;
    struct sockaddr_storage to;
    socklen_t to_len;
    memset(&to, 0, sizeof(to));
    if (v6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&to;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        a->sin6_addr = in6addr_loopback;
        to_len = sizeof(*a);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&to;
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        to_len = sizeof(*a);
    }
    struct tcp_info info;
    socklen_t info_len = sizeof(info);
    if (fd >= ctx->by_fd_cap ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof(zero)) < 0)
        goto fail;
    if (connect(fd, (struct sockaddr *)&to, to_len) < 0 && errno != EINPROGRESS) {
        *err = errno; /* refused, for one */
        goto fail;
    }
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &info_len) < 0)
        goto fail;
    if (info.tcpi_state == TCP_CLOSE) { /* refused at once: the RST came inline */
        socklen_t len = sizeof(*err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, err, &len) < 0)
            *err = 0;
        goto fail;
    }
    if (info.tcpi_state != TCP_ESTABLISHED)
        goto fail; /* not complete at once (a full backlog): Python waits for it */
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET; /* streams.py STREAM_EVENTS */
    ev.data.fd = fd;
    if (epoll_ctl(ctx->syn_epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        goto fail;
    return fd;
fail:
    close(fd);
    return -1;
}

/* Twin of handshake.send_synack (flags SYN|ACK): MSS, the timestamp if the guest
 * sent one, the window scale if it offered one; and of handshake.send_syn (flags SYN,
 * a forwarded connection's: csrc/flow_forward.c), whose flow offers both. The window
 * unscaled, as in every SYN. */
void syn_send(struct ns_ctx *ctx, struct ns_flow *f, uint8_t flags, double now)
{
    long space = ns_sock_send_space(f->fd);
    f->space_known = space > 0 ? space : 0;
    f->written_since = 0;
    int64_t window = f->space_known + ctx->pending_slack;
    if (window > ctx->window_max)
        window = ctx->window_max;
    if (window > 0xffff)
        window = 0xffff;
    f->window_advertised = (uint32_t)window;
    f->rcv_adv = f->rcv_nxt + (uint32_t)window;

    /* the options go where a payload would, then the header's length says so */
    size_t start = 0, l4 = VNET_LEN + ETH_LEN + (f->v6 ? IP6_LEN : IP4_LEN);
    uint8_t *o = ctx->tx + l4 + TCP_LEN;
    size_t olen = 0;
    o[olen++] = OPT_MSS;
    o[olen++] = 4;
    o[olen++] = (uint8_t)(f->our_mss >> 8);
    o[olen++] = (uint8_t)f->our_mss;
    if (f->ts_enabled) {
        uint32_t tsv = (uint32_t)(uint64_t)(now * 1000.0);
        o[olen++] = OPT_NOP;
        o[olen++] = OPT_NOP;
        o[olen++] = OPT_TIMESTAMP;
        o[olen++] = 10;
        for (int i = 3; i >= 0; i--)
            o[olen++] = (uint8_t)(tsv >> (8 * i));
        for (int i = 3; i >= 0; i--)
            o[olen++] = (uint8_t)(f->ts_recent >> (8 * i));
    }
    if (f->guest_wscale || f->our_wscale) {
        o[olen++] = OPT_NOP;
        o[olen++] = OPT_WSCALE;
        o[olen++] = 3;
        o[olen++] = (uint8_t)f->our_wscale;
    }
    long end =
        f->v6 ? ns_tcp6_frame(ctx->tx, ctx->tx_cap, start, f->guest_mac, ctx->gateway_mac,
                              f->remote_ip, f->guest_ip, f->remote_port, f->guest_port, f->iss,
                              f->rcv_nxt, flags, (uint16_t)window, 0, 0, 0, (uint32_t)olen,
                              ctx->vnet, 0)
              : ns_tcp4_frame(ctx->tx, ctx->tx_cap, start, f->guest_mac, ctx->gateway_mac,
                              f->remote_ip + 12, f->guest_ip + 12, f->remote_port, f->guest_port,
                              f->iss, f->rcv_nxt, flags, (uint16_t)window, 0, 0, 0,
                              (uint32_t)olen, ctx->ip_id++, ctx->vnet, 0);
    if (end < 0)
        return;
    uint8_t *t = ctx->tx + l4;
    t[12] = (uint8_t)(((TCP_LEN + olen) / 4) << 4);
    if (!ctx->vnet) { /* a complete checksum covers the header length: again */
        const uint8_t *ip = ctx->tx + VNET_LEN + ETH_LEN;
        uint32_t pseudo = (f->v6 ? ns_sum16(ip + 8, 32, 0) : ns_sum16(ip + 12, 8, 0)) + 6 +
                          (uint32_t)(TCP_LEN + olen);
        while (pseudo >> 16)
            pseudo = (pseudo & 0xffff) + (pseudo >> 16);
        t[16] = t[17] = 0;
        uint16_t sum = ns_checksum(t, TCP_LEN + olen, pseudo);
        t[16] = (uint8_t)(sum >> 8);
        t[17] = (uint8_t)sum;
    }
    link_write(ctx, start, (size_t)end);
}

/* Twin of handshake.take_syn_options: what the guest's SYN or SYN-ACK decides (its
 * options o, its window). */
void syn_take_options(const struct ns_ctx *ctx, struct ns_flow *f,
                      const struct syn_options *o, uint16_t window)
{
    uint32_t headers_len = (f->v6 ? IP6_LEN : IP4_LEN) + TCP_LEN;
    uint32_t mss_to_guest = o->mss ? (uint32_t)o->mss : ctx->syn_default_mss;
    if (mss_to_guest > ctx->syn_mtu - headers_len)
        mss_to_guest = ctx->syn_mtu - headers_len;
    int64_t seg = (int64_t)mss_to_guest - (o->has_ts ? TS_LEN : 0);
    f->seg_size = seg > 64 ? (uint32_t)seg : 64;
    f->guest_wscale = o->wscale >= 0 ? o->wscale : 0;
    f->our_wscale = o->wscale >= 0 ? ctx->syn_our_wscale : 0;
    f->ts_enabled = o->has_ts;
    f->ts_recent = o->ts_val;
    f->guest_window = window; /* a SYN's window is never scaled */
}

/* RFC 6528: a keyed hash of the 4-tuple plus a 4-microsecond clock. */
uint32_t syn_iss(const struct ns_ctx *ctx, const uint8_t *gip, uint16_t gport,
                 const uint8_t *rip, uint16_t rport, double now)
{
    return (uint32_t)tuple_siphash(ctx->iss_key, gip, gport, rip, rport) +
           (uint32_t)(uint64_t)(now * 250000.0);
}

/* Twin of TcpConnection.refuse(Refusal.RESET) for a refused connect: RST|ACK to the
 * guest's SYN (at g->l4). */
static void refuse_syn(struct ns_ctx *ctx, const struct guest_ip *g)
{
    const uint8_t *guest_mac = ctx->rx + VNET_LEN + 6, *t = g->l4;
    uint32_t ack = get32(t + 4) + 1;
    uint16_t gport = get16(t), rport = get16(t + 2);
    long end = g->v6 ? ns_tcp6_frame(ctx->tx, ctx->tx_cap, 0, guest_mac, ctx->gateway_mac,
                                      g->dst, g->src, rport, gport, 0, ack, F_RST | F_ACK, 0, 0,
                                      0, 0, 0, ctx->vnet, 0)
                     : ns_tcp4_frame(ctx->tx, ctx->tx_cap, 0, guest_mac, ctx->gateway_mac,
                                     g->dst + 12, g->src + 12, rport, gport, 0, ack,
                                     F_RST | F_ACK, 0, 0, 0, 0, 0, ctx->ip_id++, ctx->vnet, 0);
    if (end > 0)
        link_write(ctx, 0, (size_t)end);
}

/* A guest's SYN (the TCP header at g->l4): 1 when it was answered here (opened, or
 * refused as the host refused it), 0 for Python. */
int syn_rx_frame(struct ns_ctx *ctx, const struct guest_ip *g, double now)
{
    if (!ctx->syn_on && !ctx->syn_on6)
        return 0;
    const uint8_t *eth = ctx->rx + VNET_LEN, *t = g->l4;
    size_t hlen = (size_t)(t[12] >> 4) * 4;
    uint8_t flags = t[13];
    if ((flags & (F_SYN | F_ACK | F_RST | F_FIN | F_URG | F_PSH)) != F_SYN || hlen < TCP_LEN ||
        hlen != g->l4_len)
        return 0; /* a plain SYN without data only (ECN's bits aside) */
    if (!syn_addresses(ctx, g) || spoofed_mac(ctx, eth + 6))
        return 0; /* not the gateway's, or a source Python drops */
    uint16_t gport = get16(t), rport = get16(t + 2);
    if (flow_lookup(ctx, g->src, gport, g->dst, rport))
        return 0; /* a retransmitted SYN, or a 4-tuple reused: Python decides */
    /* the oldest flow lingering here in TIME_WAIT gives way (twin of table._room) */
    while ((ctx->py_flows + ctx->nunadopted + ctx->ntime_wait >= ctx->syn_flow_limit ||
            ctx->nfree == 0) &&
           ns_tw_evict_oldest(ctx))
        ;
    if (ctx->py_flows + ctx->nunadopted + ctx->ntime_wait >= ctx->syn_flow_limit ||
        ctx->py_half_open + ctx->nunadopted >= ctx->syn_half_open_limit || ctx->nfree == 0)
        return 0; /* Python's limits, each flow here counted half-open: past them Python
                   * evicts or refuses */
    struct syn_options opts;
    if (syn_parse_options(t + TCP_LEN, hlen - TCP_LEN, &opts) < 0)
        return 0;
    int err;
    int fd = connect_loopback(ctx, rport, g->v6, &err);
    if (fd < 0 && err == ECONNREFUSED) {
        /* no listener: the guest's connect is refused here, not connected twice */
        refuse_syn(ctx, g);
        ctx->syns_in_c++;
        ctx->closed_in_c++;
        return 1;
    }
    if (fd < 0)
        return 0; /* out of fds, not complete at once: Python tries, and answers */
    struct ns_flow *f = ns_flow_open(ctx, fd, g->src, gport, g->dst, rport, g->v6);
    if (!f) {
        close(fd);
        return 0;
    }
    uint32_t seq = get32(t + 4);
    memcpy(f->guest_mac, eth + 6, 6);
    f->iss = syn_iss(ctx, g->src, gport, g->dst, rport, now);
    /* twin of TcpConnection's MSS, and of handshake.take_syn_options */
    uint32_t headers_len = (g->v6 ? IP6_LEN : IP4_LEN) + TCP_LEN;
    f->our_mss = ctx->syn_mtu - headers_len > 64 ? ctx->syn_mtu - headers_len : 64;
    syn_take_options(ctx, f, &opts, get16(t + 14));
    f->rcv_nxt = seq + 1;
    f->rcv_acked = f->rcv_nxt;
    f->snd_una = f->iss;
    f->snd_nxt = f->iss + 1;
    f->handshake = 1;
    ctx->syns_in_c++;
    syn_open_unadopted(ctx, f, F_SYN | F_ACK, now);
    return 1;
}

/* f, opened here with its handshake's state, is held with no connection in Python: our
 * SYN (flags F_SYN, a forward's) or SYN-ACK goes out, Python adopts it by adopt_after. */
void syn_open_unadopted(struct ns_ctx *ctx, struct ns_flow *f, uint8_t flags, double now)
{
    f->rto = ctx->rto_initial;
    f->unadopted = 1;
    f->created = now;
    f->last_activity = now;
    ctx->nunadopted++;
    syn_send(ctx, f, flags, now);
    f->rto_deadline = now + f->rto; /* Python's, once it adopts the flow (before then) */
    if (ctx->adopt_at == 0)
        ctx->adopt_at = now + ctx->adopt_after;
}

/* Python is to take f on (a frame, event or eject of its own that C leaves). */
void syn_list_adopt(struct ns_ctx *ctx, struct ns_flow *f)
{
    if (!f->unadopted || f->adopt_listed)
        return;
    if (f->eject == EJECT_DONE)
        return; /* closing here (or lingering here in TIME_WAIT): Python never sees it */
    f->adopt_listed = 1;
    ctx->adopts[ctx->nadopts++] = f->slot;
}

/* A TCP frame at ctx->rx (len bytes) goes to Python: a flow it belongs to that Python
 * has not seen is listed first. */
void syn_frame_to_python(struct ns_ctx *ctx, size_t len)
{
    struct guest_ip g;
    if (!ctx->nunadopted || len < VNET_LEN + ETH_LEN + IP4_LEN + TCP_LEN ||
        !guest_ip_parse(ctx, len, 6, TCP_LEN, &g))
        return;
    struct ns_flow *f = flow_lookup(ctx, g.src, get16(g.l4), g.dst, get16(g.l4 + 2));
    if (f)
        syn_list_adopt(ctx, f);
}

/* A flow Python never saw closed both ways, the guest first: what it owes goes out,
 * then the host socket closes (twin of the release of EJECT_DONE and _close). */
void syn_close(struct ns_ctx *ctx, struct ns_flow *f, double now)
{
    f->eject = 0; /* ns_flow_flush's ACK goes out */
    ns_flow_flush(ctx, f, now);
    close(f->fd); /* out of the epoll with it */
    ctx->closed_in_c++;
    ns_flow_close(ctx, f);
}

/* Every flow Python has not seen is listed: ns_loop at ctx->adopt_at, the API's
 * listing, the stack closing. */
void ns_adopt_all(struct ns_ctx *ctx)
{
    ctx->adopt_at = 0;
    for (int i = 0; i < ctx->max_flows && ctx->nadopts < ctx->nunadopted; i++)
        if (ctx->flows[i].unadopted)
            syn_list_adopt(ctx, &ctx->flows[i]);
}

/* Python took f on: its connection has f's state. */
void ns_adopted(struct ns_ctx *ctx, struct ns_flow *f)
{
    if (f->unadopted)
        ctx->nunadopted--;
    f->unadopted = 0;
    if (f->adopt_listed) {
        for (int i = 0; i < ctx->nadopts; i++)
            if (ctx->adopts[i] == f->slot) {
                ctx->adopts[i] = ctx->adopts[--ctx->nadopts];
                break;
            }
    }
    f->adopt_listed = 0;
}
