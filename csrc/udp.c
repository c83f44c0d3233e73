/* netstack C fast path: established UDP flows (IPv4 and IPv6), both directions.
 *
 * Python's UDP proxy (netstack/udp/proxy.py) is the policy and the twin of this file:
 * it opens a flow (one unconnected host socket per guest address and port), resolves
 * the destination through the policy, and then hands the flow here
 * (netstack/udp/fastpath.py) with that destination cached: the virtual address the
 * guest used and the host sockaddr it maps to.
 *   - ns_rx passes each frame it does not run as TCP to udp_rx_frame: a well-formed
 *     datagram (no fragment, lengths and checksum right, or checksum-partial) from a
 *     held flow to its cached destination is taken. Small ones are gathered and go
 *     out at the end of the read (udp_flush_to_host) with sendmmsg, equal-size runs
 *     of one flow as one UDP_SEGMENT send; a large one, or a guest GSO frame (gso_type
 *     UDP_L4, as one UDP_SEGMENT send), goes at once, after those gathered before it.
 *     Everything else stays for Python, unchanged.
 *   - ns_host_poll passes events of held sockets to udp_host_event: recvmmsg in
 *     batches (a coalesced read, UDP_GRO: a host peer's GSO write, split back into
 *     its datagrams), written to the TAP from the guest-visible source (the rules of
 *     Policy.virtual_source): with virtio-net headers a run of equal-size datagrams
 *     from one source as one UDP GSO frame (gso_type UDP_L4, one writev, the guest's
 *     kernel splits it), else one frame each. A datagram C cannot send (a source
 *     the rules do not know, one larger than the MTU, which Python fragments) is
 *     copied to the list for Python, and so is the rest of that read, in order.
 * Python keeps flow creation, expiry, eviction and close; C counts and stamps
 * last_activity.
 */
#define _GNU_SOURCE /* sendmmsg, recvmmsg */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sched.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "udp.h"

/* ------------------------------------------------------------------ the table */

int ns_udp_new(struct ns_ctx *ctx, int max_flows, int by_fd_cap)
{
    if (ctx->udp)
        return 0;
    struct ns_udp *u = calloc(1, sizeof(*u));
    if (!u)
        return -ENOMEM;
    ctx->udp = u;
    unsigned int buckets = 64;
    while (buckets < (unsigned int)max_flows * 2)
        buckets <<= 1;
    u->max_flows = max_flows;
    u->flows = calloc((size_t)max_flows, sizeof(*u->flows));
    u->free_slots = malloc(sizeof(int) * (size_t)max_flows);
    u->buckets = calloc(buckets, sizeof(int));
    u->route_buckets = calloc(buckets, sizeof(int));
    u->bucket_mask = buckets - 1;
    u->by_fd = calloc((size_t)by_fd_cap, sizeof(int));
    u->by_fd_cap = by_fd_cap;
    u->out = malloc(OUT_CAP);
    u->out_cap = OUT_CAP;
    u->out_max = OUT_MAX;
    u->out_slot = malloc(sizeof(int) * OUT_MAX);
    u->out_off = malloc(sizeof(uint32_t) * OUT_MAX);
    u->out_len = malloc(sizeof(uint32_t) * OUT_MAX);
    u->in = malloc((size_t)RECV_SLOTS * SLOT_SIZE); /* pages are touched as datagrams fill them */
    if (!u->flows || !u->free_slots || !u->buckets || !u->route_buckets || !u->by_fd || !u->out ||
        !u->out_slot ||
        !u->out_off || !u->out_len || !u->in) {
        udp_free(ctx);
        return -ENOMEM;
    }
    for (int i = 0; i < max_flows; i++)
        u->free_slots[i] = max_flows - 1 - i;
    u->nfree = max_flows;
    u->host_loopback = 1;
    u->mtu = 1500;
    u->uso = 1; /* until the TAP refuses a UDP GSO frame */
    return 0;
}

void udp_free(struct ns_ctx *ctx)
{
    struct ns_udp *u = ctx->udp;
    if (!u)
        return;
    free(u->flows);
    free(u->free_slots);
    free(u->buckets);
    free(u->route_buckets);
    free(u->by_fd);
    free(u->out);
    free(u->out_slot);
    free(u->out_off);
    free(u->out_len);
    free(u->in);
    free(u->py);
    free(u->py_buf);
    free(u);
    ctx->udp = NULL;
}

static unsigned int bucket_of(struct ns_ctx *ctx, const uint8_t *gip, uint16_t gport)
{
    return ns_flow_hash(ctx, gip, gport, ZERO16, 0) & ctx->udp->bucket_mask;
}

struct ns_udp_flow *ns_udp_lookup(struct ns_ctx *ctx, const uint8_t *gip, uint16_t gport)
{
    struct ns_udp *u = ctx->udp;
    if (!u)
        return NULL;
    int s = u->buckets[bucket_of(ctx, gip, gport)];
    while (s) {
        struct ns_udp_flow *f = &u->flows[s - 1];
        if (f->guest_port == gport && !memcmp(f->guest_ip, gip, 16))
            return f;
        s = f->next;
    }
    return NULL;
}

/* Whether fd can be a flow's own socket here: in range, and no flow's yet. */
static int fd_free(const struct ns_ctx *ctx, int fd)
{
    const struct ns_udp *u = ctx->udp;
    return fd >= 0 && fd < u->by_fd_cap && !u->by_fd[fd] &&
           !(fd < ctx->by_fd_cap && ctx->by_fd[fd]);
}

/* A zeroed slot for fd and the guest's address and port (in no chain yet). */
static struct ns_udp_flow *new_flow(struct ns_udp *u, int fd, const uint8_t *guest_ip,
                                    uint16_t guest_port, int v6)
{
    int slot = u->free_slots[--u->nfree];
    struct ns_udp_flow *f = &u->flows[slot];
    memset(f, 0, sizeof(*f));
    f->fd = fd;
    f->slot = slot;
    f->v6 = v6;
    memcpy(f->guest_ip, guest_ip, 16);
    f->guest_port = guest_port;
    return f;
}

/* A zeroed flow for (guest_ip, guest_port) on host socket fd; the caller fills its MAC
 * and destination. NULL when full, fd out of range or held, or the key held. */
struct ns_udp_flow *ns_udp_open(struct ns_ctx *ctx, int fd, const uint8_t *guest_ip,
                                uint16_t guest_port, int v6)
{
    struct ns_udp *u = ctx->udp;
    if (!u || u->nfree == 0 || !fd_free(ctx, fd) || ns_udp_lookup(ctx, guest_ip, guest_port))
        return NULL;
    struct ns_udp_flow *f = new_flow(u, fd, guest_ip, guest_port, v6);
    unsigned int b = bucket_of(ctx, guest_ip, guest_port);
    f->next = u->buckets[b];
    u->buckets[b] = f->slot + 1;
    u->by_fd[fd] = f->slot + 1;
    return f;
}

static unsigned int route_bucket_of(struct ns_ctx *ctx, const uint8_t *gip, uint16_t gport,
                                    const uint8_t *rip, uint16_t rport)
{
    return ns_flow_hash(ctx, gip, gport, rip, rport) & ctx->udp->bucket_mask;
}

struct ns_udp_flow *udp_route_lookup(struct ns_ctx *ctx, const uint8_t *gip, uint16_t gport,
                                     const uint8_t *rip, uint16_t rport)
{
    struct ns_udp *u = ctx->udp;
    int s = u->route_buckets[route_bucket_of(ctx, gip, gport, rip, rport)];
    while (s) {
        struct ns_udp_flow *f = &u->flows[s - 1];
        if (f->guest_port == gport && f->dst_port == rport && !memcmp(f->guest_ip, gip, 16) &&
            !memcmp(f->dst_ip, rip, 16))
            return f;
        s = f->next;
    }
    return NULL;
}

/* A port forward's route back to one client: the guest's datagrams from (guest_ip,
 * guest_port) to (remote_ip, remote_port), the client as the guest sees it, go out of
 * the forward's listener (listener_fd) to the client's sockaddr (the caller fills it,
 * and the guest's MAC). Its replies stay Python's: the listener is read there. NULL
 * when full or the route is held. Twin of listeners.UdpRoute.to_client. */
struct ns_udp_flow *ns_udp_route_open(struct ns_ctx *ctx, int listener_fd,
                                      const uint8_t *guest_ip, uint16_t guest_port,
                                      const uint8_t *remote_ip, uint16_t remote_port, int v6)
{
    struct ns_udp *u = ctx->udp;
    if (!u || u->nfree == 0 || udp_route_lookup(ctx, guest_ip, guest_port, remote_ip, remote_port))
        return NULL;
    struct ns_udp_flow *f = new_flow(u, listener_fd, guest_ip, guest_port, v6);
    f->route = 1;
    memcpy(f->dst_ip, remote_ip, 16);
    f->dst_port = remote_port;
    unsigned int b = route_bucket_of(ctx, guest_ip, guest_port, remote_ip, remote_port);
    f->next = u->route_buckets[b];
    u->route_buckets[b] = f->slot + 1;
    u->nroutes++;
    return f;
}

/* A UDP port forward's listener (fd) to the guest's guest_ip:guest_port: read here
 * (csrc/udp_to_guest.c), each client's datagrams go to the guest by the client's route;
 * a datagram without one is Python's, which opens the route. NULL when full or fd is
 * out of range or held. */
struct ns_udp_flow *ns_udp_listener_open(struct ns_ctx *ctx, int fd, const uint8_t *guest_ip,
                                         uint16_t guest_port, int v6)
{
    struct ns_udp *u = ctx->udp;
    if (!u || u->nfree == 0 || !fd_free(ctx, fd))
        return NULL;
    struct ns_udp_flow *f = new_flow(u, fd, guest_ip, guest_port, v6);
    f->listener = 1;
    u->by_fd[fd] = f->slot + 1;
    return f;
}

void ns_udp_close(struct ns_ctx *ctx, struct ns_udp_flow *f)
{
    struct ns_udp *u = ctx->udp;
    int slot = f->slot;
    if (u->nout)
        udp_flush_to_host(ctx); /* its gathered datagrams still go, in order */
    int *link = f->route ? &u->route_buckets[route_bucket_of(ctx, f->guest_ip, f->guest_port,
                                                              f->dst_ip, f->dst_port)]
                         : &u->buckets[bucket_of(ctx, f->guest_ip, f->guest_port)];
    while (!f->listener && *link) { /* a listener is in no chain */
        if (*link == slot + 1) {
            *link = f->next;
            break;
        }
        link = &u->flows[*link - 1].next;
    }
    if (f->route)
        u->nroutes--;
    else if (f->fd >= 0 && f->fd < u->by_fd_cap && u->by_fd[f->fd] == slot + 1)
        u->by_fd[f->fd] = 0;
    for (int i = 0; i < u->npy; i++) /* a reused slot must not take them */
        if (u->py[i].slot == slot)
            u->py[i].slot = -1;
    f->fd = -1;
    u->free_slots[u->nfree++] = slot;
}

/* ------------------------------------------------------- guest datagrams to the host */

/* Keep one datagram for the flush. */
static int gather(struct ns_ctx *ctx, struct ns_udp_flow *f, const uint8_t *p, uint32_t len)
{
    struct ns_udp *u = ctx->udp;
    if (u->nout == u->out_max || u->out_used + len > u->out_cap)
        udp_flush_to_host(ctx);
    if (len > u->out_cap)
        return 0;
    memcpy(u->out + u->out_used, p, len);
    u->out_slot[u->nout] = f->slot;
    u->out_off[u->nout] = u->out_used;
    u->out_len[u->nout] = len;
    u->nout++;
    u->out_used += len;
    return 1;
}

static void send_now(struct ns_ctx *ctx, struct ns_udp_flow *f, uint8_t *p, uint32_t len,
                     uint16_t seg);

/* One frame at ctx->rx (virtio-net header first): 1 when taken here, 0 for Python.
 * Small datagrams are gathered for the batch's sendmmsg; a large one (a copy would
 * cost more than a send saves) or a guest GSO frame goes at once, after those
 * gathered before it. */
int udp_rx_frame(struct ns_ctx *ctx, size_t len, double now)
{
    struct ns_udp *u = ctx->udp;
    if (!u || u->nfree == u->max_flows || len < VNET_LEN + ETH_LEN + IP4_LEN + UDP_LEN)
        return 0;
    const uint8_t *v = ctx->rx, *eth = v + VNET_LEN;
    struct guest_ip g;
    if (!guest_ip_parse(ctx, len, 17, UDP_LEN, &g))
        return 0;
    uint8_t *d = g.l4;
    size_t l4_len = g.l4_len;
    int v6 = g.v6;
    if (get16(d + 4) != l4_len)
        return 0; /* a UDP length short of the IP one: Python's reading is the rule */
    uint16_t gso = 0;
    if (v[1] == VNET_GSO_UDP_L4) {
        gso = get16le(v + 4);
        if (!gso || !(v[0] & VNET_F_NEEDS_CSUM))
            return 0;
    } else if (v[1] != 0) {
        return 0;
    }
    if (!(v[0] & VNET_F_NEEDS_CSUM)) {
        if (get16(d + 6) == 0) {
            if (v6)
                return 0; /* no checksum is not allowed in IPv6 */
        } else if (ns_sum16(d, l4_len, guest_ip_pseudo(&g, 17)) != 0xffff) {
            return 0;
        }
    }
    struct ns_udp_flow *f = ns_udp_lookup(ctx, g.src, get16(d));
    if (!f || get16(d + 2) != f->dst_port || memcmp(g.dst, f->dst_ip, 16))
        f = u->nroutes ? udp_route_lookup(ctx, g.src, get16(d), g.dst, get16(d + 2)) : NULL;
    if (!f || f->v6 != v6 || memcmp(eth + 6, f->guest_mac, 6))
        return 0;
    uint32_t plen = (uint32_t)l4_len - UDP_LEN;
    if (gso >= plen)
        gso = 0;
    else if (gso && (plen + gso - 1) / gso > GUEST_GSO_MAX_SEGS)
        return 0; /* no kernel makes that many: Python drops it */
    if (plen >= SEND_NOW_MIN || gso) {
        send_now(ctx, f, d + UDP_LEN, plen, gso);
    } else if (!gather(ctx, f, d + UDP_LEN, plen)) {
        return 0;
    }
    if (gso)
        u->gso_frames_from_guest++;
    f->last_activity = now;
    return 1;
}

/* The messages of one sendmmsg to one flow's destination. */
struct batch {
    struct mmsghdr msgs[OUT_MSGS];
    struct iovec iov[OUT_MSGS];
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } ctl[OUT_MSGS];
    uint32_t count[OUT_MSGS]; /* datagrams in each message */
    uint16_t seg[OUT_MSGS];   /* its UDP_SEGMENT size, 0 for one datagram */
    int n;
};

/* A message whose UDP_SEGMENT send failed: its datagrams one by one. */
static void send_split(struct ns_ctx *ctx, struct ns_udp_flow *f, const uint8_t *p,
                       uint32_t len, uint16_t seg)
{
    struct ns_udp *u = ctx->udp;
    for (uint32_t off = 0; off < len; off += seg) {
        uint32_t n = len - off < seg ? len - off : seg;
        if (sendto(f->fd, p + off, n, MSG_DONTWAIT, (struct sockaddr *)f->host_addr,
                   f->host_addr_len) < 0) {
            u->send_errors++;
        } else {
            f->datagrams_to_host++;
            u->datagrams_to_host++;
        }
    }
}

static void send_batch(struct ns_ctx *ctx, struct ns_udp_flow *f, struct batch *b)
{
    struct ns_udp *u = ctx->udp;
    int k = 0;
    while (k < b->n) {
        int r = sendmmsg(f->fd, b->msgs + k, (unsigned int)(b->n - k), MSG_DONTWAIT);
        if (r > 0) {
            if (r > 1 || b->count[k] > 1)
                ns_yield(ctx); /* see YIELDING in udp.h */
            for (int j = k; j < k + r; j++) {
                f->datagrams_to_host += b->count[j];
                u->datagrams_to_host += b->count[j];
                if (b->seg[j])
                    u->gso_sends++;
            }
            k += r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        int err = r < 0 ? errno : EIO;
        if (b->seg[k] && err != EAGAIN && err != ENOBUFS) {
            /* EINVAL, EIO: a route or device without UDP GSO; not again on this flow */
            f->no_gso = 1;
            send_split(ctx, f, b->iov[k].iov_base, (uint32_t)b->iov[k].iov_len, b->seg[k]);
        } else {
            u->send_errors += b->count[k]; /* a full socket drops, as a full link would */
        }
        k++;
    }
    b->n = 0;
}

static void add_msg(struct ns_ctx *ctx, struct ns_udp_flow *f, struct batch *b, uint8_t *p,
                    uint32_t len, uint16_t seg, uint32_t count)
{
    if (b->n == OUT_MSGS)
        send_batch(ctx, f, b);
    int i = b->n++;
    struct msghdr *h = &b->msgs[i].msg_hdr;
    memset(h, 0, sizeof(*h));
    b->iov[i].iov_base = p;
    b->iov[i].iov_len = len;
    h->msg_name = f->host_addr;
    h->msg_namelen = f->host_addr_len;
    h->msg_iov = &b->iov[i];
    h->msg_iovlen = 1;
    b->count[i] = count;
    b->seg[i] = count > 1 ? seg : 0;
    if (count > 1) {
        h->msg_control = b->ctl[i].buf;
        h->msg_controllen = sizeof(b->ctl[i].buf);
        struct cmsghdr *c = CMSG_FIRSTHDR(h);
        c->cmsg_level = SOL_UDP_;
        c->cmsg_type = UDP_SEGMENT_;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        memcpy(CMSG_DATA(c), &seg, sizeof(seg));
    }
}

static void send_now(struct ns_ctx *ctx, struct ns_udp_flow *f, uint8_t *p, uint32_t len,
                     uint16_t seg)
{
    static struct batch b;
    udp_flush_to_host(ctx); /* what was gathered before it leaves first */
    b.n = 0;
    if (!seg)
        add_msg(ctx, f, &b, p, len, 0, 1);
    else if (!f->no_gso)
        add_msg(ctx, f, &b, p, len, seg, (len + seg - 1) / seg);
    else
        for (uint32_t off = 0; off < len; off += seg)
            add_msg(ctx, f, &b, p + off, len - off < seg ? len - off : seg, 0, 1);
    send_batch(ctx, f, &b);
}

/* Send what udp_rx_frame gathered: per flow in order; a run of equal-size datagrams of
 * one flow (the last may be shorter) as one UDP_SEGMENT message. */
void udp_flush_to_host(struct ns_ctx *ctx)
{
    struct ns_udp *u = ctx->udp;
    if (!u || !u->nout)
        return;
    static struct batch b; /* one thread; too large for the stack */
    int i = 0;
    while (i < u->nout) {
        struct ns_udp_flow *f = &u->flows[u->out_slot[i]];
        b.n = 0;
        while (i < u->nout && u->out_slot[i] == f->slot) {
            uint8_t *p = u->out + u->out_off[i];
            uint32_t len = u->out_len[i];
            i++;
            uint32_t total = len, count = 1;
            if (!f->no_gso && len > 0) {
                while (i < u->nout && u->out_slot[i] == f->slot && u->out_len[i] > 0 &&
                       u->out_len[i] <= len &&
                       total + u->out_len[i] <= GSO_MAX_BYTES && count < GSO_MAX_SEGS) {
                    uint32_t next = u->out_len[i];
                    total += next;
                    count++;
                    i++;
                    if (next < len)
                        break; /* a shorter one ends the run */
                }
            }
            add_msg(ctx, f, &b, p, total, (uint16_t)len, count);
        }
        send_batch(ctx, f, &b);
    }
    u->nout = 0;
    u->out_used = 0;
}
