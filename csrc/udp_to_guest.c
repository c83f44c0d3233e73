/* netstack C fast path: host datagrams of held UDP flows to the guest (the other
 * half of csrc/udp.c, whose opening comment describes both): recvmmsg in batches
 * (coalesced reads split at their UDP_GRO size, as netstack/host/datagrams.py does),
 * sources translated as Policy.virtual_source does, UDP GSO frames to the TAP, and
 * what C cannot send listed for Python in order. */
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

/* ------------------------------------------------------- host datagrams to the guest */

static int is_martian6(const uint8_t *a)
{
    static const uint8_t discard[8] = {1, 0, 0, 0, 0, 0, 0, 0};
    return !memcmp(a, ZERO16, 15) || !memcmp(a, V4_MAPPED, 12) || !memcmp(a, ZERO16, 12) ||
           (a[0] == 0xfe && (a[1] & 0xc0) == 0x80) || a[0] == 0xff || !memcmp(a, discard, 8);
}

/* Twin of Policy.virtual_source for the cases it maps; 0 for Python (it drops them). */
static int virtual_source(const struct ns_udp *u, const struct ns_udp_flow *f,
                          const struct sockaddr_in6 *from, uint8_t *src)
{
    if (!f->v6) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)from;
        if (s4->sin_family != AF_INET)
            return 0;
        const uint8_t *a = (const uint8_t *)&s4->sin_addr;
        if (a[0] == 127) {
            if (a[1] || a[2] || a[3] != 1 || !u->host_loopback)
                return 0;
            memcpy(src, u->gateway_ip, 4);
            return 1;
        }
        memcpy(src, a, 4);
        return 1;
    }
    if (from->sin6_family != AF_INET6)
        return 0;
    const uint8_t *a = (const uint8_t *)&from->sin6_addr;
    if (!memcmp(a, ZERO16, 15) && a[15] == 1) {
        if (!u->host_loopback)
            return 0;
        memcpy(src, u->host6_ip, 16);
        return 1;
    }
    if (is_martian6(a))
        return 0;
    memcpy(src, a, 16);
    return 1;
}

static void for_python(struct ns_ctx *ctx, struct ns_udp_flow *f, const uint8_t *p,
                       uint32_t len, const struct sockaddr_in6 *from)
{
    struct ns_udp *u = ctx->udp;
    f->to_python = 1; /* the rest of this read follows it, in order */
    if (u->npy == u->py_max) {
        int max = u->py_max ? u->py_max * 2 : 64;
        struct ns_udp_for_python *py = realloc(u->py, sizeof(*py) * (size_t)max);
        if (!py) {
            u->send_errors++;
            return;
        }
        u->py = py;
        u->py_max = max;
    }
    if (u->py_used + len > u->py_cap) {
        uint32_t cap = u->py_cap ? u->py_cap : 65536;
        while (cap < u->py_used + len)
            cap *= 2;
        uint8_t *buf = realloc(u->py_buf, cap);
        if (!buf) {
            u->send_errors++;
            return;
        }
        u->py_buf = buf;
        u->py_cap = cap;
    }
    struct ns_udp_for_python *e = &u->py[u->npy++];
    e->slot = f->slot;
    e->family = from->sin6_family;
    memset(e->addr, 0, 16);
    if (from->sin6_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)from;
        memcpy(e->addr, &s4->sin_addr, 4);
        e->port = ntohs(s4->sin_port);
    } else {
        memcpy(e->addr, &from->sin6_addr, 16);
        e->port = ntohs(from->sin6_port);
    }
    e->off = u->py_used;
    e->len = len;
    memcpy(u->py_buf + u->py_used, p, len);
    u->py_used += len;
}

void ns_udp_python_done(struct ns_ctx *ctx)
{
    struct ns_udp *u = ctx->udp;
    if (!u)
        return;
    u->npy = 0;
    u->py_used = 0;
    if (u->py_cap > (1u << 20)) { /* a burst's buffer is not kept */
        free(u->py_buf);
        u->py_buf = NULL;
        u->py_cap = 0;
    }
}

int udp_python_work(const struct ns_ctx *ctx) { return ctx->udp && ctx->udp->npy; }

/* Write headers for `count` datagrams of one source (each `seg` bytes but the last,
 * `total` in all) into hdr: one frame, or with vnet and count > 1 one UDP GSO frame the
 * guest's kernel splits at seg. Returns the header length. */
static size_t frame_headers(struct ns_ctx *ctx, struct ns_udp_flow *f, uint8_t *hdr,
                            const uint8_t *src, uint16_t sport, uint32_t total, uint16_t seg,
                            int count, const struct iovec *payload)
{
    size_t l3 = f->v6 ? IP6_LEN : IP4_LEN;
    uint8_t *vh = hdr, *e = vh + VNET_LEN, *ip = e + ETH_LEN, *d = ip + l3;
    uint32_t l4_len = UDP_LEN + total;
    memcpy(e, f->guest_mac, 6);
    uint32_t pseudo;
    if (f->v6) {
        memcpy(e + 6, ctx->router_mac, 6);
        put16(e + 12, 0x86dd);
        ip[0] = 0x60;
        ip[1] = ip[2] = ip[3] = 0;
        put16(ip + 4, (uint16_t)l4_len);
        ip[6] = 17;
        ip[7] = 64;
        memcpy(ip + 8, src, 16);
        memcpy(ip + 24, f->guest_ip, 16);
        pseudo = ns_sum16(ip + 8, 32, 0) + 17 + l4_len;
    } else {
        memcpy(e + 6, ctx->gateway_mac, 6);
        put16(e + 12, 0x0800);
        ip[0] = 0x45;
        ip[1] = 0;
        put16(ip + 2, (uint16_t)(IP4_LEN + l4_len));
        put16(ip + 4, ctx->ip_id);
        ctx->ip_id = (uint16_t)(ctx->ip_id + count); /* the segments take one each */
        put16(ip + 6, 0x4000);
        ip[8] = 64;
        ip[9] = 17;
        put16(ip + 10, 0);
        memcpy(ip + 12, src, 4);
        memcpy(ip + 16, f->guest_ip + 12, 4);
        put16(ip + 10, ns_checksum(ip, IP4_LEN, 0));
        pseudo = ns_sum16(ip + 12, 8, 0) + 17 + l4_len;
    }
    put16(d, sport);
    put16(d + 2, f->guest_port);
    put16(d + 4, (uint16_t)l4_len);
    memset(vh, 0, VNET_LEN);
    if (ctx->vnet) { /* the guest's kernel takes a partial checksum as it is */
        put16(d + 6, fold(pseudo));
        vh[0] = VNET_F_NEEDS_CSUM;
        if (count > 1) {
            vh[1] = VNET_GSO_UDP_L4;
            put16le(vh + 2, (uint16_t)(ETH_LEN + l3 + UDP_LEN));
            put16le(vh + 4, seg);
        }
        put16le(vh + 6, (uint16_t)(ETH_LEN + l3));
        put16le(vh + 8, 6);
    } else {
        put16(d + 6, 0);
        uint32_t sum = ns_sum16(d, UDP_LEN, pseudo);
        for (int i = 0; i < count; i++)
            sum = ns_sum16(payload[i].iov_base, payload[i].iov_len, sum);
        uint16_t c = (uint16_t)(~sum & 0xffff);
        put16(d + 6, c ? c : 0xffff); /* 0 means "no checksum" */
    }
    return VNET_LEN + ETH_LEN + l3 + UDP_LEN;
}

/* One frame (count 1) or one GSO frame to the guest; 0 if the TAP refused a GSO frame
 * (a kernel before 6.2 does not know UDP_L4): the caller sends them one by one. */
static int frame_to_guest(struct ns_ctx *ctx, struct ns_udp_flow *f, const uint8_t *src,
                          uint16_t sport, struct iovec *iov, int count, double now)
{
    struct ns_udp *u = ctx->udp;
    uint8_t hdr[SLOT_HEAD];
    uint32_t total = 0;
    for (int i = 1; i <= count; i++)
        total += (uint32_t)iov[i].iov_len;
    iov[0].iov_base = hdr;
    iov[0].iov_len = frame_headers(ctx, f, hdr, src, sport, total, (uint16_t)iov[1].iov_len,
                                   count, iov + 1);
    if (!ctx->vnet) {
        iov[0].iov_base = hdr + VNET_LEN;
        iov[0].iov_len -= VNET_LEN;
    }
    ssize_t w = writev(ctx->tap_fd, iov, count + 1);
    if (w < 0 && count > 1 && errno == EINVAL) {
        u->uso = 0;
        return 0;
    }
    if (w < 0 && errno != EAGAIN && errno != EINTR && errno != ENOBUFS)
        ctx->link_errno = errno;
    ctx->frames_out++;
    f->datagrams_to_guest += (uint64_t)count;
    u->datagrams_to_guest += (uint64_t)count;
    if (count > 1)
        u->gso_frames_to_guest++;
    f->last_activity = now;
    if (count > 1)
        ns_yield(ctx); /* see YIELDING in udp.h */
    return 1;
}

static int same_peer(const struct sockaddr_in6 *a, const struct sockaddr_in6 *b)
{
    if (a->sin6_family != b->sin6_family || a->sin6_port != b->sin6_port)
        return 0;
    if (a->sin6_family == AF_INET)
        return !memcmp(&((const struct sockaddr_in *)a)->sin_addr,
                       &((const struct sockaddr_in *)b)->sin_addr, 4);
    return !memcmp(&a->sin6_addr, &b->sin6_addr, 16);
}

/* Datagram i of a read and those behind it from the same source and of its size (the
 * last may be shorter) to the guest from src as f's: one GSO frame where the TAP takes
 * it, else one frame each. Returns how many were sent. */
static int send_run(struct ns_ctx *ctx, struct ns_udp_flow *f, const struct dgram *d, int i,
                    int r, const uint8_t *src, double now)
{
    struct ns_udp *u = ctx->udp;
    uint32_t n = d[i].len;
    struct iovec out[GSO_MAX_SEGS + 1];
    out[1].iov_base = d[i].p;
    out[1].iov_len = n;
    int count = 1;
    uint32_t total = n;
    if (ctx->vnet && u->uso && n > 0) {
        while (i + count < r && count < GSO_MAX_SEGS) {
            uint32_t next = d[i + count].len;
            if (next == 0 || next > n || total + next > GSO_MAX_BYTES ||
                !same_peer(d[i].from, d[i + count].from))
                break;
            out[count + 1].iov_base = d[i + count].p;
            out[count + 1].iov_len = next;
            total += next;
            count++;
            if (next < n)
                break; /* a shorter one ends the run */
        }
    }
    uint16_t sport = ntohs(d[i].from->sin6_port); /* sin_port shares its place */
    if (!frame_to_guest(ctx, f, src, sport, out, count, now)) {
        for (int k = 0; k < count; k++) {
            struct iovec one[2] = {{0}, out[k + 1]};
            frame_to_guest(ctx, f, src, sport, one, 1, now);
        }
    }
    return count;
}

/* Datagrams i.. of a read to the guest: runs of one source and one size (the last may
 * be shorter) as one GSO frame where the TAP takes them, else one frame each; what C
 * cannot send, and all after it, to Python. Returns how many were consumed. */
static int datagrams_to_guest(struct ns_ctx *ctx, struct ns_udp_flow *f, const struct dgram *d,
                              int i, int r, double now)
{
    struct ns_udp *u = ctx->udp;
    uint8_t src[16];
    size_t l3 = f->v6 ? IP6_LEN : IP4_LEN;
    uint32_t n = d[i].len;
    if (f->to_python || l3 + UDP_LEN + n > u->mtu || !virtual_source(u, f, d[i].from, src)) {
        for_python(ctx, f, d[i].p, n, d[i].from);
        return 1;
    }
    return send_run(ctx, f, d, i, r, src, now);
}

/* Twin of listeners.client_as_seen_by_guest: the address a forward's client (from) has
 * for the guest of listener l, in remote (IPv4 as ::ffff:a.b.c.d); 0 when C does not
 * know it (an IPv6 client outside loopback and the guest's /64 that is no martian):
 * Python's. */
static int client_as_seen(const struct ns_udp *u, const struct ns_udp_flow *l,
                          const struct sockaddr_in6 *from, uint8_t *remote)
{
    const uint8_t *a = (const uint8_t *)&from->sin6_addr;
    const uint8_t *v4 = NULL;
    if (from->sin6_family == AF_INET)
        v4 = (const uint8_t *)&((const struct sockaddr_in *)from)->sin_addr;
    else if (from->sin6_family == AF_INET6 && !memcmp(a, V4_MAPPED, 12))
        v4 = a + 12;
    else if (from->sin6_family != AF_INET6)
        return 0;
    if (l->v6) {
        if (v4 || is_martian6(a) || !memcmp(a, u->prefix6, 8)) {
            memcpy(remote, u->host6_ip, 16); /* the stand-in, fd00::2 */
            return 1;
        }
        return 0; /* (the martian list is Python's in full: stack/policy.py) */
    }
    memcpy(remote, V4_MAPPED, 12);
    int stand_in = !v4 || v4[0] == 0 || v4[0] == 127;
    for (int i = 0; v4 && !stand_in && i < 4; i++)
        if ((v4[i] & u->mask4[i]) != u->net4[i])
            break;
        else if (i == 3)
            stand_in = 1; /* in the guest's own network */
    memcpy(remote + 12, stand_in ? u->gateway_ip : v4, 4);
    return 1;
}

/* Datagrams i.. of a read on a forward's listener l to the guest, each client's by its
 * route (runs of one client and one size as one GSO frame, as datagrams_to_guest);
 * a client with no route here, or one C cannot send, and all after it: Python's.
 * Returns how many were consumed. */
static int listener_datagrams_to_guest(struct ns_ctx *ctx, struct ns_udp_flow *l,
                                       const struct dgram *d, int i, int r, double now)
{
    struct ns_udp *u = ctx->udp;
    uint8_t remote[16];
    uint32_t n = d[i].len;
    uint16_t sport = ntohs(d[i].from->sin6_port); /* sin_port shares its place */
    struct ns_udp_flow *route = NULL;
    if (!l->to_python && client_as_seen(u, l, d[i].from, remote))
        route = udp_route_lookup(ctx, l->guest_ip, l->guest_port, remote, sport);
    size_t l3 = l->v6 ? IP6_LEN : IP4_LEN;
    if (!route || l3 + UDP_LEN + n > u->mtu) {
        for_python(ctx, l, d[i].p, n, d[i].from);
        return 1;
    }
    int count = send_run(ctx, route, d, i, r, l->v6 ? remote : remote + 12, now);
    l->datagrams_to_guest += (uint64_t)count;
    return count;
}

/* The views of a read so far to the guest (flow f's, or a listener's clients'). */
static void views_to_guest(struct ns_ctx *ctx, struct ns_udp_flow *f, const struct dgram *d,
                           int nd, double now)
{
    for (int i = 0; i < nd;)
        i += f->listener ? listener_datagrams_to_guest(ctx, f, d, i, nd, now)
                         : datagrams_to_guest(ctx, f, d, i, nd, now);
}

/* The segment size of a coalesced read (the UDP_GRO control message), or 0. */
static uint32_t gro_size(const struct msghdr *h)
{
    if (h->msg_flags & MSG_CTRUNC)
        return 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR((struct msghdr *)h); c;
         c = CMSG_NXTHDR((struct msghdr *)h, c)) {
        if (c->cmsg_level == SOL_UDP_ && c->cmsg_type == UDP_GRO_ &&
            c->cmsg_len >= CMSG_LEN(sizeof(int))) {
            int size;
            memcpy(&size, CMSG_DATA(c), sizeof(size));
            return size > 0 ? (uint32_t)size : 0;
        }
    }
    return 0;
}

/* An event on a host socket: 1 when it is a held UDP flow's or a forward's listener's
 * (served here), else 0. A coalesced read (UDP_GRO: a host peer's GSO send, or what a
 * NIC's GRO merged) is split back into its datagrams, which then go as any others. */
int udp_host_event(struct ns_ctx *ctx, int fd, uint32_t events, double now)
{
    struct ns_udp *u = ctx->udp;
    (void)events; /* readable, or an error to clear: recvmmsg does both */
    if (!u || fd < 0 || fd >= u->by_fd_cap || !u->by_fd[fd])
        return 0;
    struct ns_udp_flow *f = &u->flows[u->by_fd[fd] - 1];
    struct mmsghdr m[RECV_SLOTS];
    struct iovec iov[RECV_SLOTS];
    struct sockaddr_in6 from[RECV_SLOTS];
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctrl[RECV_SLOTS];
    struct dgram d[VIEWS_MAX];
    f->to_python = 0;
    for (int round = 0; round < READ_ROUNDS; round++) {
        for (int i = 0; i < RECV_SLOTS; i++) {
            iov[i].iov_base = u->in + (size_t)i * SLOT_SIZE;
            iov[i].iov_len = SLOT_SIZE;
            memset(&m[i].msg_hdr, 0, sizeof(m[i].msg_hdr));
            m[i].msg_hdr.msg_name = &from[i];
            m[i].msg_hdr.msg_namelen = sizeof(from[i]);
            m[i].msg_hdr.msg_iov = &iov[i];
            m[i].msg_hdr.msg_iovlen = 1;
            m[i].msg_hdr.msg_control = ctrl[i].buf;
            m[i].msg_hdr.msg_controllen = sizeof(ctrl[i].buf);
        }
        int r = recvmmsg(fd, m, RECV_SLOTS, MSG_DONTWAIT, NULL);
        if (r < 0) {
            if (errno == EAGAIN)
                break;
            continue; /* EINTR, or an ICMP error queued on the socket: read on */
        }
        int nd = 0;
        for (int k = 0; k < r; k++) {
            uint32_t len = m[k].msg_len, seg = gro_size(&m[k].msg_hdr);
            if (seg == 0 || seg >= len)
                seg = len; /* one datagram (an empty one too) */
            else
                u->gro_reads++;
            uint32_t off = 0;
            do {
                if (nd == VIEWS_MAX) {
                    views_to_guest(ctx, f, d, nd, now);
                    nd = 0;
                }
                d[nd].p = (uint8_t *)iov[k].iov_base + off;
                d[nd].len = len - off < seg ? len - off : seg;
                d[nd].from = &from[k];
                off += d[nd].len;
                nd++;
            } while (off < len);
        }
        views_to_guest(ctx, f, d, nd, now);
        if (!f->gro && r >= GRO_AFTER) {
            int one = 1;
            f->gro = 1; /* asked once; a kernel without it reads as before */
            (void)setsockopt(fd, SOL_UDP_, UDP_GRO_, &one, sizeof(one));
        }
        if (r < RECV_SLOTS)
            break;
    }
    f->to_python = 0;
    return 1;
}
