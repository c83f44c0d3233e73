/* netstack C fast path: UDP DNS queries to the virtual DNS address, forwarded to one
 * nameserver and answered without Python.
 *
 * Python's forwarder (netstack/dns/forwarder.py) is the policy and the twin of this
 * file; netstack/dns/fastpath.py gives C one upstream (a UDP socket it opened and the
 * sockaddr of the forwarder's preferred nameserver) and the guests whose queries it
 * has seen (MAC and address: the first query of a guest goes through Python).
 *   - ns_rx passes each frame neither TCP nor UDP flows took to dns_rx_frame: a
 *     well-formed UDP datagram (IPv4 without options or fragments, or IPv6 without
 *     extension headers; lengths and checksum right, or checksum-partial) from a known
 *     guest to the DNS address port 53, carrying a standard query (QR 0, opcode 0, one
 *     question of plain labels, no answer or authority records, at most one additional,
 *     512 bytes at most) whose ID has no query of C's in flight, is stored in a slot;
 *     the batch's queries go to the nameserver at its end, in one sendmmsg (one the
 *     socket refuses is listed for Python's forwarder). Anything else stays for
 *     Python, unchanged.
 *   - ns_host_poll / ns_loop pass the upstream socket's events to dns_host_event: a
 *     reply from the nameserver's address and port, a response with one question that
 *     repeats the query's (the name's ASCII letters in any case), goes to the guest
 *     from the DNS address port 53 and frees the slot. Others are dropped and counted
 *     (as Upstream.on_datagram names them); the query waits on. A reply larger than
 *     the guest's MTU is listed for Python (which fragments) with its query.
 * Timeouts are Python's: ns_dns_expire lists the queries sent before a time, with
 * their bytes, and frees their slots; the forwarder sends them to the next nameserver.
 */
#define _GNU_SOURCE /* sendmmsg, recvmmsg */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "flow.h"

#define DNS_HEADER 12
#define DNS_IN_CAP 65536
#define DNS_FRAME_CAP (VNET_LEN + ETH_LEN + IP6_LEN + 8 + DNS_IN_CAP)
#define DNS_READS 64      /* datagrams read per event at most */
#define DNS_RECV_SLOTS 16 /* ... in recvmmsg calls of this many */
#define UDP_HDR 8

int ns_dns_new(struct ns_ctx *ctx, const uint8_t *dns_ip, const uint8_t *dns6_ip, uint32_t mtu)
{
    if (ctx->dns)
        return 0;
    struct ns_dns *d = calloc(1, sizeof(*d));
    if (!d)
        return -ENOMEM;
    ctx->dns = d;
    d->by_id = calloc(65536, sizeof(*d->by_id));
    d->py = malloc(sizeof(*d->py) * DNS_PY_MAX);
    d->in = malloc((size_t)DNS_RECV_SLOTS * DNS_IN_CAP); /* pages touched as replies fill them */
    d->frame = malloc(DNS_FRAME_CAP);
    if (!d->by_id || !d->py || !d->in || !d->frame) {
        dns_free(ctx);
        return -ENOMEM;
    }
    for (int i = 0; i < DNS_SLOTS; i++)
        d->free_slots[i] = DNS_SLOTS - 1 - i;
    d->nfree = DNS_SLOTS;
    d->fd = -1;
    d->old_fd = -1;
    memcpy(d->dns_ip, dns_ip, 4);
    if (dns6_ip) {
        memcpy(d->dns6_ip, dns6_ip, 16);
        d->v6 = 1;
    }
    d->mtu = mtu;
    return 0;
}

void dns_free(struct ns_ctx *ctx)
{
    struct ns_dns *d = ctx->dns;
    if (!d)
        return;
    free(d->by_id);
    free(d->py);
    free(d->py_buf);
    free(d->in);
    free(d->frame);
    free(d);
    ctx->dns = NULL;
}

int dns_wants_socket(const struct ns_dns *d)
{
    return d->fd >= 0 && d->cur_sent >= DNS_SOCKET_QUERIES && !d->old_inflight;
}

/* Allow queries from guest (mac, ip: IPv4 as ::ffff:a.b.c.d). 0, or -1 when full. */
int ns_dns_guest(struct ns_ctx *ctx, const uint8_t *mac, const uint8_t *ip)
{
    struct ns_dns *d = ctx->dns;
    if (!d)
        return -1;
    for (int i = 0; i < d->nguests; i++)
        if (!memcmp(d->guest_mac[i], mac, 6) && !memcmp(d->guest_ip[i], ip, 16))
            return 0;
    if (d->nguests == DNS_GUESTS)
        return -1;
    memcpy(d->guest_mac[d->nguests], mac, 6);
    memcpy(d->guest_ip[d->nguests], ip, 16);
    d->nguests++;
    return 0;
}

/* A query leaves flight: answered, given to Python, or dropped. */
static void slot_free(struct ns_dns *d, int s)
{
    struct ns_dns_query *q = &d->q[s];
    if (d->by_id[q->ident] == s + 1)
        d->by_id[q->ident] = 0;
    q->used = 0;
    d->free_slots[d->nfree++] = s;
    d->inflight--;
    if (q->gen == d->gen)
        d->cur_inflight--;
    else
        d->old_inflight--;
}

/* Python's list: a copy of slot s (and a reply, if any), then the slot is freed. */

static int for_python(struct ns_dns *d, int s, const uint8_t *reply, uint32_t len, int tried)
{
    if (d->npy == DNS_PY_MAX)
        return 0;
    if (len) {
        if (d->py_used + len > d->py_cap) {
            uint32_t cap = d->py_cap ? d->py_cap : 65536;
            while (cap < d->py_used + len)
                cap *= 2;
            uint8_t *buf = realloc(d->py_buf, cap);
            if (!buf)
                return 0;
            d->py_buf = buf;
            d->py_cap = cap;
        }
        memcpy(d->py_buf + d->py_used, reply, len);
    }
    struct ns_dns_for_python *e = &d->py[d->npy++];
    e->query = d->q[s];
    e->tried = tried;
    e->reply_off = d->py_used;
    e->reply_len = len;
    d->py_used += len;
    slot_free(d, s);
    return 1;
}

/* Queries sent before older_than to Python's list (as many as it takes); tried: 1
 * when they timed out at the upstream, 0 when they must go to Python's first choice. */
static void expire(struct ns_ctx *ctx, double older_than, int tried)
{
    struct ns_dns *d = ctx->dns;
    dns_flush_to_host(ctx);
    for (int s = 0; s < DNS_SLOTS && d->inflight; s++)
        if (d->q[s].used && d->q[s].sent < older_than) {
            if (!for_python(d, s, NULL, 0, tried))
                break;
        }
}

/* Point C at a new upstream (fd -1: off). Queries in flight go to Python's list
 * first (they were sent to the old one). */
int ns_dns_set_upstream(struct ns_ctx *ctx, int fd, const uint8_t *addr, uint32_t addr_len)
{
    struct ns_dns *d = ctx->dns;
    if (!d || addr_len > sizeof(d->server))
        return -1;
    expire(ctx, 1e300, 0);
    d->old_fd = -1;
    d->cur_sent = 0;
    d->gen++;
    d->old_inflight = d->inflight; /* none, unless Python's list was full: they expire */
    d->cur_inflight = 0;
    d->fd = fd;
    memset(d->server, 0, sizeof(d->server));
    if (fd >= 0)
        memcpy(d->server, addr, addr_len);
    d->server_len = fd >= 0 ? addr_len : 0;
    return 0;
}

/* A fresh socket to the same nameserver (the forwarder's Upstream retires its socket
 * after UPSTREAM_QUERIES too: a new source port). The current one becomes the old
 * one, read until its queries are answered or expire; queries still on the one
 * before (they should be none: C asks only when it drained) go to Python's list.
 * fd -1: keep the current socket (Python could not open one). Returns the fd Python
 * may close now, or -1. */
int ns_dns_rotate(struct ns_ctx *ctx, int fd)
{
    struct ns_dns *d = ctx->dns;
    if (!d || d->fd < 0)
        return -1;
    d->cur_sent = 0;
    if (fd < 0)
        return -1;
    dns_flush_to_host(ctx);
    int closable = d->old_fd;
    for (int s = 0; s < DNS_SLOTS && d->old_inflight; s++)
        if (d->q[s].used && d->q[s].gen != d->gen && !for_python(d, s, NULL, 0, 0))
            slot_free(d, s); /* Python's list is full: dropped (the guest asks again) */
    d->old_fd = d->fd;
    d->fd = fd;
    d->gen++;
    d->old_inflight = d->cur_inflight;
    d->cur_inflight = 0;
    return closable;
}

/* Queries sent before older_than to Python's list, as timed out; returns how many
 * the list holds. */
int ns_dns_expire(struct ns_ctx *ctx, double older_than)
{
    if (!ctx->dns)
        return 0;
    expire(ctx, older_than, 1);
    return ctx->dns->npy;
}

void ns_dns_python_done(struct ns_ctx *ctx)
{
    struct ns_dns *d = ctx->dns;
    if (!d)
        return;
    d->npy = 0;
    d->py_used = 0;
    d->arm = 0;
    if (d->py_cap > (1u << 20)) {
        free(d->py_buf);
        d->py_buf = NULL;
        d->py_cap = 0;
    }
}

/* Python has work: a list, a timer to arm, or a socket to give (the current one sent
 * DNS_SOCKET_QUERIES and the old one has none in flight). */
int dns_python_work(const struct ns_ctx *ctx)
{
    const struct ns_dns *d = ctx->dns;
    return d && (d->npy || d->arm || dns_wants_socket(d));
}

/* ----------------------------------------------------------- queries from the guest */

/* Length of the question at p (name of plain labels, type, class) within len bytes,
 * or 0 if it does not parse so. */
static uint32_t question_len(const uint8_t *p, uint32_t len)
{
    uint32_t i = 0;
    for (;;) {
        if (i >= len || i > 255)
            return 0;
        uint8_t l = p[i];
        if (l == 0)
            break;
        if (l > 63)
            return 0; /* a compression pointer, or a label type no one uses */
        i += 1 + l;
    }
    i += 1; /* the root */
    if (i > 255 || i + 4 > len)
        return 0;
    return i + 4;
}

static int known_guest(const struct ns_dns *d, const uint8_t *mac, const uint8_t *ip)
{
    for (int i = 0; i < d->nguests; i++)
        if (!memcmp(d->guest_mac[i], mac, 6) && !memcmp(d->guest_ip[i], ip, 16))
            return 1;
    return 0;
}

/* One frame at ctx->rx (virtio-net header first): 1 when taken here, 0 for Python. */
int dns_rx_frame(struct ns_ctx *ctx, size_t len, double now)
{
    struct ns_dns *d = ctx->dns;
    if (!d || d->fd < 0 || !d->nfree || !d->nguests ||
        len < VNET_LEN + ETH_LEN + IP4_LEN + UDP_HDR + DNS_HEADER)
        return 0;
    const uint8_t *v = ctx->rx, *eth = v + VNET_LEN, *ip = eth + ETH_LEN;
    /* every UDP frame comes here first: the destination address is read before
     * anything is checked (the length check above covers it) */
    if (get16(eth + 12) == 0x0800 ? memcmp(ip + 16, d->dns_ip, 4)
                                   : !d->v6 || memcmp(ip + 24, d->dns6_ip, 16))
        return 0;
    struct guest_ip g;
    if (!guest_ip_parse(ctx, len, 17, UDP_HDR, &g))
        return 0;
    const uint8_t *u = g.l4;
    size_t l4_len = g.l4_len;
    int v6 = g.v6;
    const uint8_t *gip = g.src;
    uint8_t dip[16] = {0}; /* the address the guest asked (IPv4: its first 4 bytes) */
    memcpy(dip, v6 ? g.dst : g.dst + 12, v6 ? 16 : 4);
    if (get16(u + 2) != 53 || get16(u + 4) != l4_len)
        return 0; /* another port; or a UDP length short of the IP one (Python's rule) */
    if (v[1] != 0)
        return 0; /* a GSO frame */
    if (!(v[0] & 1)) { /* VIRTIO_NET_HDR_F_NEEDS_CSUM: the guest's kernel left it partial */
        if (get16(u + 6) == 0) {
            if (v6)
                return 0; /* no checksum is not allowed in IPv6 */
        } else if (ns_sum16(u, l4_len, guest_ip_pseudo(&g, 17)) != 0xffff) {
            return 0;
        }
    }
    if (!known_guest(d, eth + 6, gip))
        return 0;
    const uint8_t *m = u + UDP_HDR;
    uint32_t mlen = (uint32_t)l4_len - UDP_HDR;
    if (mlen < DNS_HEADER || mlen > DNS_QUERY_MAX)
        return 0;
    /* a standard query: QR 0, opcode 0; one question; no answers or authority */
    if ((m[2] & 0xf8) || get16(m + 4) != 1 || get16(m + 6) || get16(m + 8) || get16(m + 10) > 1)
        return 0;
    uint32_t qlen = question_len(m + DNS_HEADER, mlen - DNS_HEADER);
    if (!qlen)
        return 0;
    uint16_t ident = get16(m);
    if (d->by_id[ident])
        return 0; /* one of C's in flight has this ID: Python's forwarder takes it */
    int s = d->free_slots[--d->nfree];
    struct ns_dns_query *q = &d->q[s];
    memset(q, 0, sizeof(*q));
    q->used = 1;
    q->v6 = v6;
    memcpy(q->guest_mac, eth + 6, 6);
    memcpy(q->guest_ip, gip, 16);
    memcpy(q->dns_ip, dip, 16);
    q->guest_port = get16(u);
    q->ident = ident;
    q->len = (uint16_t)mlen;
    q->qlen = (uint16_t)qlen;
    q->sent = now;
    q->gen = d->gen;
    memcpy(q->query, m, mlen);
    d->by_id[ident] = (int16_t)(s + 1);
    d->out[d->nout++] = s; /* sent at the end of the batch (dns_flush_to_host) */
    d->inflight++;
    d->cur_inflight++;
    d->cur_sent++;
    d->queries++;
    if (!d->timer_armed) {
        d->timer_armed = 1;
        d->arm = 1; /* Python arms its timeout timer */
    }
    return 1;
}

/* Send the queries dns_rx_frame took in this batch: one sendmmsg (the bench's 32 in
 * flight come in runs). One the socket refuses goes to Python's list with nothing
 * tried: the forwarder sends it (and tries the next nameserver if that fails too). */
void dns_flush_to_host(struct ns_ctx *ctx)
{
    struct ns_dns *d = ctx->dns;
    if (!d || !d->nout)
        return;
    static struct mmsghdr m[DNS_SLOTS]; /* one thread */
    static struct iovec iov[DNS_SLOTS];
    for (int i = 0; i < d->nout; i++) {
        struct ns_dns_query *q = &d->q[d->out[i]];
        iov[i].iov_base = q->query;
        iov[i].iov_len = q->len;
        memset(&m[i].msg_hdr, 0, sizeof(m[i].msg_hdr));
        m[i].msg_hdr.msg_name = d->server;
        m[i].msg_hdr.msg_namelen = d->server_len;
        m[i].msg_hdr.msg_iov = &iov[i];
        m[i].msg_hdr.msg_iovlen = 1;
    }
    int k = 0;
    while (k < d->nout) {
        int r = sendmmsg(d->fd, m + k, (unsigned int)(d->nout - k), MSG_DONTWAIT);
        if (r > 0) {
            k += r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        d->send_errors++;
        for_python(d, d->out[k], NULL, 0, 0);
        k++;
    }
    d->nout = 0;
}

/* ------------------------------------------------------------- replies to the guest */

static int from_server(const struct ns_dns *d, const struct sockaddr_in6 *from)
{
    const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)d->server;
    if (from->sin6_family != s->sin6_family || from->sin6_port != s->sin6_port)
        return 0;
    if (s->sin6_family == AF_INET)
        return !memcmp(&((const struct sockaddr_in *)from)->sin_addr,
                       &((const struct sockaddr_in *)d->server)->sin_addr, 4);
    return !memcmp(&from->sin6_addr, &s->sin6_addr, 16);
}

static uint8_t lower(uint8_t c) { return c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c; }

/* The reply repeats q's question: the name's ASCII letters in any case, the rest (label
 * lengths, type, class) exactly. As DnsQuery.answered_by accepts. */
static int same_question(const struct ns_dns_query *q, const uint8_t *r, uint32_t len)
{
    uint32_t end = DNS_HEADER + q->qlen;
    if (len < end || !(r[2] & 0x80) || get16(r + 4) != 1)
        return 0;
    const uint8_t *a = q->query + DNS_HEADER, *b = r + DNS_HEADER;
    uint32_t name = q->qlen - 4;
    for (uint32_t i = 0; i < name; i++)
        if (a[i] != b[i] && lower(a[i]) != lower(b[i]))
            return 0;
    return !memcmp(a + name, b + name, 4);
}

static void answer(struct ns_ctx *ctx, int s, const uint8_t *r, uint32_t len)
{
    struct ns_dns *d = ctx->dns;
    struct ns_dns_query *q = &d->q[s];
    size_t l3 = q->v6 ? IP6_LEN : IP4_LEN;
    d->answers++;
    if (l3 + UDP_HDR + len > d->mtu) {
        if (!for_python(d, s, r, len, 1)) { /* Python fragments it */
            d->answers--;
            d->py_full++;
            slot_free(d, s);
        }
        return;
    }
    const uint8_t *dst = q->v6 ? q->guest_ip : q->guest_ip + 12;
    long end = ns_udp_frame(d->frame, DNS_FRAME_CAP, q->guest_mac,
                            q->v6 ? ctx->router_mac : ctx->gateway_mac, q->dns_ip, dst, q->v6, 53,
                            q->guest_port, r, len, ctx->ip_id++);
    slot_free(d, s);
    if (end < 0)
        return;
    size_t skip = ctx->vnet ? 0 : VNET_LEN;
    ssize_t n = write(ctx->tap_fd, d->frame + skip, (size_t)end - skip);
    if (n < 0 && errno != EAGAIN && errno != EINTR && errno != ENOBUFS)
        ctx->link_errno = errno;
    ctx->frames_out++;
}

/* One datagram read from the upstream socket of generation gen: to the guest, or
 * dropped and counted. */
static void reply(struct ns_ctx *ctx, const uint8_t *r, uint32_t n,
                  const struct sockaddr_in6 *from, uint32_t gen)
{
    struct ns_dns *d = ctx->dns;
    if (!from_server(d, from)) {
        d->reply_foreign++;
        return;
    }
    int s = n >= 2 ? d->by_id[get16(r)] - 1 : -1;
    if (s < 0 || d->q[s].gen != gen || !same_question(&d->q[s], r, n)) {
        d->reply_mismatch++;
        return;
    }
    answer(ctx, s, r, n);
}

/* An event on a host socket: 1 when it is the upstream's (served here), else 0.
 * recvmmsg in rounds of DNS_RECV_SLOTS; a read that comes back short ends it (no
 * call to find the socket empty). */
int dns_host_event(struct ns_ctx *ctx, int fd, uint32_t events, double now)
{
    struct ns_dns *d = ctx->dns;
    (void)events; /* readable, or an error to clear: recvmmsg does both */
    (void)now;
    if (!d || fd < 0 || (fd != d->fd && fd != d->old_fd))
        return 0;
    uint32_t gen = fd == d->fd ? d->gen : d->gen - 1;
    struct mmsghdr m[DNS_RECV_SLOTS];
    struct iovec iov[DNS_RECV_SLOTS];
    struct sockaddr_in6 from[DNS_RECV_SLOTS];
    for (int round = 0; round < DNS_READS / DNS_RECV_SLOTS; round++) {
        for (int i = 0; i < DNS_RECV_SLOTS; i++) {
            iov[i].iov_base = d->in + (size_t)i * DNS_IN_CAP;
            iov[i].iov_len = DNS_IN_CAP;
            memset(&m[i].msg_hdr, 0, sizeof(m[i].msg_hdr));
            memset(&from[i], 0, sizeof(from[i]));
            m[i].msg_hdr.msg_name = &from[i];
            m[i].msg_hdr.msg_namelen = sizeof(from[i]);
            m[i].msg_hdr.msg_iov = &iov[i];
            m[i].msg_hdr.msg_iovlen = 1;
        }
        int r = recvmmsg(fd, m, DNS_RECV_SLOTS, MSG_DONTWAIT, NULL);
        if (r < 0) {
            if (errno == EAGAIN)
                break;
            continue; /* EINTR, or an ICMP error queued on the socket: read on */
        }
        for (int i = 0; i < r; i++)
            reply(ctx, iov[i].iov_base, m[i].msg_len, &from[i], gen);
        if (r < DNS_RECV_SLOTS)
            break;
    }
    return 1;
}
