/* netstack C fast path: the declarations below are also the cffi cdef.
 * Keep this file free of preprocessor directives and includes: cffi parses it. */
uint32_t ns_sum16(const uint8_t *buf, size_t len, uint32_t seed);
uint16_t ns_checksum(const uint8_t *buf, size_t len, uint32_t seed);
long ns_discard(int fd, size_t len);
long ns_sock_send_space(int fd);
long ns_tcp4_frame(uint8_t *buf, size_t buflen, size_t start, const uint8_t *eth_dst,
                   const uint8_t *eth_src, const uint8_t *ip_src, const uint8_t *ip_dst,
                   uint16_t sport, uint16_t dport, uint32_t seq, uint32_t ack, uint8_t flags,
                   uint16_t window, int has_ts, uint32_t ts_val, uint32_t ts_ecr,
                   uint32_t payload_len, uint16_t ip_id, int vnet, uint16_t gso_size);
long ns_tcp6_frame(uint8_t *buf, size_t buflen, size_t start, const uint8_t *eth_dst,
                   const uint8_t *eth_src, const uint8_t *ip_src, const uint8_t *ip_dst,
                   uint16_t sport, uint16_t dport, uint32_t seq, uint32_t ack, uint8_t flags,
                   uint16_t window, int has_ts, uint32_t ts_val, uint32_t ts_ecr,
                   uint32_t payload_len, int vnet, uint16_t gso_size);
long ns_udp_frame(uint8_t *buf, size_t buflen, const uint8_t *eth_dst, const uint8_t *eth_src,
                  const uint8_t *ip_src, const uint8_t *ip_dst, int v6, uint16_t sport,
                  uint16_t dport, const uint8_t *payload, size_t payload_len, uint16_t ip_id);

/* ---- the established-flow path (csrc/flow.c) ---- */
struct ns_flow {
    int fd;
    int slot;
    int next;                   /* hash chain: slot + 1 of the next flow, 0 ends it */
    int dirty;
    uint8_t guest_mac[6];
    uint8_t guest_ip[16];   /* IPv4 as ::ffff:a.b.c.d */
    uint8_t remote_ip[16];
    int v6;
    uint16_t guest_port;
    uint16_t remote_port;
    uint32_t snd_una;
    uint32_t snd_nxt;
    uint32_t rcv_nxt;
    uint32_t guest_window;
    uint32_t ts_recent;
    uint32_t seg_size;
    uint32_t our_mss;
    uint32_t window_advertised;
    uint32_t rcv_adv;           /* right edge of the window advertised: nothing past it */
    int guest_wscale;
    int our_wscale;
    int ts_enabled;
    int host_readable;
    int peer_closed;
    int ack_needed;
    int blocked;
    int retries;
    int eject;
    int err;
    int timer_listed;
    int delack_listed;
    int handshake;              /* our SYN-ACK waits for its ACK (Python: SYN_RECEIVED) */
    /* closing, as TcpConnection's flags of the same names */
    int fin_from_guest;         /* the guest's FIN is taken (rcv_nxt counts it) */
    int host_write_shut;        /* ... and passed on: shutdown(SHUT_WR) of the host socket */
    int eof_from_host;          /* the host socket's EOF was read */
    int fin_to_guest;           /* ... and our FIN sent (snd_nxt counts it) */
    int fin_acked;              /* ... and acknowledged by the guest */
    int fin_to_guest_first;     /* our FIN went before the guest's (TIME_WAIT follows) */
    uint32_t rcv_acked;
    double delack_at;
    int64_t acked_in_queue;
    int64_t peek_off;
    int64_t space_known;
    int64_t written_since;
    uint64_t bytes_from_guest;
    uint64_t bytes_to_guest;
    double last_activity;
    double rto;
    double rto_deadline;
    double py_timer_at;
    uint8_t *unsent;
    uint32_t unsent_len;
    uint32_t unsent_cap;
    /* a flow C opened from the guest's SYN (csrc/flow_syn.c) */
    uint32_t iss;               /* our initial sequence number */
    int unadopted;              /* Python has no connection for it yet */
    int adopt_listed;           /* ... and it is in ctx->adopts */
    double created;
    /* a port forward's connection C accepted: our SYN waits for the guest's SYN-ACK
     * (Python: SYN_SENT; csrc/flow_forward.c) */
    int syn_sent;
    int forwarded;              /* opened so (TcpConnection.opened_by_host) */
    /* ... closed both ways, our FIN first, lingering in TIME_WAIT (csrc/flow_time_wait.c) */
    int time_wait;
    int tw_prev;                /* the TIME_WAIT list, oldest first: slot + 1, 0 ends it */
    int tw_next;
    double tw_until;
};

/* A port forward's TCP listener whose connections C accepts (csrc/flow_forward.c). */
struct ns_listener {
    int fd;
    int v6;                     /* the guest's address (the listener's own is IPv4) */
    uint8_t guest_ip[16];       /* IPv4 as ::ffff:a.b.c.d */
    uint16_t guest_port;
    uint8_t guest_mac[6];
    int mac_known;              /* 0: Python accepts (and resolves the MAC) */
};

struct ns_ctx {
    int tap_fd;
    int vnet;
    uint8_t gateway_mac[6];
    uint8_t dns_mac[6];
    uint8_t router_mac[6];
    uint8_t dns6_mac[6];
    uint8_t *rx;
    size_t rx_cap;
    uint8_t *tx;
    size_t tx_cap;
    uint16_t ip_id;
    int link_errno;
    int max_flows;
    struct ns_flow *flows;
    int *free_slots;
    int nfree;
    int *buckets;
    unsigned int bucket_mask;
    uint64_t hash_key[2];   /* SipHash key, random per context (so per process) */
    int *by_fd;
    int by_fd_cap;
    int *dirty;
    int ndirty;
    int *ejects;
    int nejects;
    int *timers;
    int ntimers;
    int *delacks;
    int ndelacks;
    double delack_delay;
    double delack_next;
    int delack_fd;
    double delack_armed_at;
    int *ev_fd;
    uint32_t *ev_mask;
    int nev;
    double rto_initial;
    int64_t window_max;
    int64_t pending_slack;
    uint32_t gather_max_segment;
    uint64_t frames_in;
    uint64_t frames_in_c;
    uint64_t frames_out;
    struct ns_udp *udp;     /* established UDP flows (csrc/udp.c); NULL until ns_udp_new */
    struct ns_dns *dns;     /* DNS queries to the DNS address (csrc/dns.c); NULL: off */
    /* ns_loop (csrc/loop.c) */
    int loop_delack;            /* delayed ACKs wait in the loop, not on delack_fd */
    int rx_lone;                /* one frame per TAP wakeup: no read that finds it empty */
    int lone_pending;           /* the last TAP wakeup read one frame in lone mode */
    uint64_t loop_waits;        /* epoll_waits in ns_loop */
    uint64_t loop_returns;      /* returns from ns_loop to Python */
    double spin;                /* seconds to poll without sleeping after an event (0: off) */
    double last_event;          /* when ns_loop last had an event */
    double yield_off_until;     /* no yielding nor spinning before this (csrc/loop.c ns_yield) */
    double yield_window;        /* when the current window of yields began */
    double yield_slow_time;     /* time in slow yields in that window */
    uint64_t yield_backoffs;    /* windows mostly in slow yields: a CPU-bound task here */
    /* guest SYNs to the gateway, connected to host loopback here (csrc/flow_syn.c) */
    int syn_on;                 /* IPv4 SYNs to the gateway are C's (0: Python's) */
    int syn_epfd;               /* the loop's epoll: a new host socket joins it */
    uint8_t syn_net[4];         /* the guest's IPv4 network and mask: its sources */
    uint8_t syn_mask[4];
    uint8_t syn_gateway[4];     /* the destination taken (host loopback behind it) */
    uint8_t syn_dns[4];         /* not a guest's source */
    int syn_on6;                /* IPv6 too (-6): the router's address, ::1 behind it */
    uint8_t syn_prefix6[8];     /* the guest's /64: its sources */
    uint8_t syn_host6[16];      /* the destination taken */
    uint8_t syn_dns6[16];       /* not a guest's source */
    uint32_t syn_mtu;
    int syn_our_wscale;
    uint32_t syn_default_mss;
    int syn_flow_limit;         /* Python's limits on flows and half-open ones ... */
    int syn_half_open_limit;
    int py_flows;               /* ... and its counts now (it sets them) */
    int py_half_open;
    int nunadopted;             /* flows C opened that Python has no connection for */
    int *adopts;                /* of those, the ones Python is to take on now */
    int nadopts;
    double adopt_after;         /* an open flow is Python's after this long */
    double adopt_at;            /* when ns_loop lists every flow Python lacks (0: none) */
    uint64_t iss_key[2];        /* SipHash key of initial sequence numbers (RFC 6528) */
    uint64_t syns_in_c;         /* flows opened here */
    uint64_t closed_in_c;       /* ... of which closed here, Python never told */
    double time_wait_s;         /* how long a flow closed here lingers (tcp/params.py) */
    int ntime_wait;             /* flows lingering here in TIME_WAIT (no socket) */
    int tw_head;                /* their list, oldest first: slot + 1, 0 when empty */
    int tw_tail;
    /* port forwards' connections accepted here (csrc/flow_forward.c) */
    struct ns_listener listeners[64]; /* NS_LISTENERS_MAX (csrc/flow.h) */
    int nlisteners;
    uint8_t fwd_net[4];         /* clients from here, 0/8 or 127/8 appear as ... */
    uint8_t fwd_mask[4];
    uint8_t fwd_gateway[4];     /* ... the gateway (to an IPv4 guest) */
    uint8_t fwd_host6[16];      /* every client to an IPv6 guest: the router's address */
    int fwd_py_fd[64];          /* NS_FWD_PY_MAX accepted for Python (fd beyond the table) */
    int fwd_py_listener[64];    /* ... and their listeners' fds */
    int nfwd_py;
    uint64_t forwards_in_c;     /* connections accepted and opened to the guest here */
    uint64_t forwards_busy;     /* ... refused: the 4-tuple was a live flow's */
};

struct ns_ctx *ns_ctx_new(int tap_fd, int vnet, uint8_t *rx, size_t rx_cap, int max_flows,
                          int by_fd_cap);
void ns_ctx_free(struct ns_ctx *ctx);
struct ns_flow *ns_flow_open(struct ns_ctx *ctx, int fd, const uint8_t *guest_ip,
                             uint16_t guest_port, const uint8_t *remote_ip, uint16_t remote_port,
                             int v6);
void ns_flow_close(struct ns_ctx *ctx, struct ns_flow *flow);
unsigned int ns_flow_hash(struct ns_ctx *ctx, const uint8_t *guest_ip, uint16_t guest_port,
                          const uint8_t *remote_ip, uint16_t remote_port);
void ns_flow_flush(struct ns_ctx *ctx, struct ns_flow *flow, double now);
long ns_rx(struct ns_ctx *ctx, double now, int max_frames);
long ns_rx_flush(struct ns_ctx *ctx, double now);
long ns_host_poll(struct ns_ctx *ctx, int epfd, double now);
void ns_adopt_all(struct ns_ctx *ctx);
void ns_adopted(struct ns_ctx *ctx, struct ns_flow *flow);
void ns_tw_expire(struct ns_ctx *ctx, double now);
int ns_listen_add(struct ns_ctx *ctx, int fd, const uint8_t *guest_ip, uint16_t guest_port,
                  int v6);
void ns_listen_remove(struct ns_ctx *ctx, int fd);
void ns_listen_set_mac(struct ns_ctx *ctx, int fd, const uint8_t *mac);
struct ns_flow *ns_tuple_claim(struct ns_ctx *ctx, const uint8_t *guest_ip, uint16_t guest_port,
                               const uint8_t *remote_ip, uint16_t remote_port);
int ns_tw_evict_oldest(struct ns_ctx *ctx);

/* ---- established UDP flows (csrc/udp.c) ---- */
struct ns_udp_flow {
    int fd;
    int slot;
    int next;                   /* hash chain: slot + 1 of the next flow, 0 ends it */
    int v6;
    uint8_t guest_mac[6];
    uint8_t guest_ip[16];       /* IPv4 as ::ffff:a.b.c.d */
    uint16_t guest_port;
    uint16_t dst_port;
    uint8_t dst_ip[16];         /* the destination as the guest addressed it ... */
    uint8_t host_addr[28];      /* ... and the host sockaddr the policy maps it to */
    uint32_t host_addr_len;
    int no_gso;                 /* UDP_SEGMENT failed on this socket: one datagram a send */
    int gro;                    /* coalesced reads asked for (UDP_GRO, csrc/udp_to_guest.c) */
    int to_python;              /* a datagram of the current read went to Python: the rest too */
    int route;                  /* a port forward's route back to one client (fd: the
                                 * forward's listener, not this flow's; keyed by the
                                 * 4-tuple, dst_* the client as the guest sees it) */
    int listener;               /* a UDP port forward's listener, read here: its clients'
                                 * datagrams go to the guest by their routes */
    uint64_t datagrams_to_host;
    uint64_t datagrams_to_guest;
    double last_activity;
};

struct ns_udp_for_python {      /* a datagram C read from a host socket and leaves to Python */
    int slot;
    int family;
    uint8_t addr[16];
    uint16_t port;
    uint32_t off;               /* in ns_udp.py_buf */
    uint32_t len;
};

struct ns_udp {
    int max_flows;
    struct ns_udp_flow *flows;
    int *free_slots;
    int nfree;
    int *buckets;
    unsigned int bucket_mask;
    int *by_fd;
    int by_fd_cap;
    int *route_buckets;         /* forwards' routes, by 4-tuple (csrc/udp.c) */
    int nroutes;
    uint8_t gateway_ip[4];      /* how host sources look to the guest: Policy.virtual_source */
    uint8_t net4[4];            /* the guest's network and mask, and its IPv6 /64: how a */
    uint8_t mask4[4];           /* forward's client looks to the guest (listeners.py */
    uint8_t prefix6[8];         /* client_as_seen_by_guest) */
    uint8_t host6_ip[16];
    int host_loopback;
    uint32_t mtu;
    int uso;                    /* the TAP takes and gives UDP GSO frames (TUN_F_USO4/6) */
    uint8_t *out;               /* guest datagrams gathered during an ns_rx batch */
    uint32_t out_cap;
    uint32_t out_used;
    int *out_slot;
    uint32_t *out_off;
    uint32_t *out_len;
    int nout;
    int out_max;
    uint8_t *in;                /* receive slots for host datagrams */
    struct ns_udp_for_python *py;
    int npy;
    int py_max;
    uint8_t *py_buf;
    uint32_t py_cap;
    uint32_t py_used;
    uint64_t datagrams_to_host;
    uint64_t datagrams_to_guest;
    uint64_t gso_sends;
    uint64_t gso_frames_to_guest;
    uint64_t gso_frames_from_guest;
    uint64_t gro_reads;         /* host reads that held many datagrams (UDP_GRO) */
    uint64_t send_errors;
};

int ns_udp_new(struct ns_ctx *ctx, int max_flows, int by_fd_cap);
struct ns_udp_flow *ns_udp_open(struct ns_ctx *ctx, int fd, const uint8_t *guest_ip,
                                uint16_t guest_port, int v6);
struct ns_udp_flow *ns_udp_lookup(struct ns_ctx *ctx, const uint8_t *guest_ip,
                                  uint16_t guest_port);
struct ns_udp_flow *ns_udp_route_open(struct ns_ctx *ctx, int listener_fd,
                                      const uint8_t *guest_ip, uint16_t guest_port,
                                      const uint8_t *remote_ip, uint16_t remote_port, int v6);
struct ns_udp_flow *ns_udp_listener_open(struct ns_ctx *ctx, int fd, const uint8_t *guest_ip,
                                         uint16_t guest_port, int v6);
void ns_udp_close(struct ns_ctx *ctx, struct ns_udp_flow *flow);
void ns_udp_python_done(struct ns_ctx *ctx);

/* ---- DNS queries to the DNS address (csrc/dns.c) ---- */
struct ns_dns_query {           /* a query C forwarded and waits on */
    int used;
    int v6;
    uint8_t guest_mac[6];
    uint8_t guest_ip[16];       /* IPv4 as ::ffff:a.b.c.d */
    uint8_t dns_ip[16];         /* the address the guest asked (IPv4: its first 4 bytes) */
    uint16_t guest_port;
    uint16_t ident;
    uint16_t len;               /* of query */
    uint16_t qlen;              /* of the question, after the header */
    double sent;
    uint32_t gen;               /* the upstream socket it went out on (ns_dns.gen) */
    uint8_t query[512];
};

struct ns_dns_for_python {      /* a query C leaves to Python: timed out, or its reply */
    struct ns_dns_query query;
    int tried;                  /* 1: timed out at the upstream; 0: Python's forwarder sends it */
    uint32_t reply_off;         /* in ns_dns.py_buf */
    uint32_t reply_len;         /* 0: no reply (expired) */
};

struct ns_dns {
    int fd;                     /* the upstream socket (Python's), -1: off */
    int old_fd;                 /* the one before it, read until it drains; -1: none */
    uint32_t gen;               /* fd's generation (old_fd's: gen - 1) */
    int cur_inflight;           /* queries in flight on fd ... */
    int old_inflight;           /* ... and on old_fd */
    int cur_sent;               /* queries sent on fd (a new one after DNS_SOCKET_QUERIES) */
    uint8_t server[28];         /* the nameserver's sockaddr */
    uint32_t server_len;
    uint8_t dns_ip[4];
    uint8_t dns6_ip[16];
    int v6;                     /* IPv6 queries too */
    uint32_t mtu;
    int nguests;
    uint8_t guest_mac[8][6];    /* the guests whose queries C takes */
    uint8_t guest_ip[8][16];
    struct ns_dns_query q[256];
    int free_slots[256];
    int nfree;
    int inflight;
    int out[256];               /* slots taken in this batch, sent at its end */
    int nout;
    int16_t *by_id;             /* slot + 1 of the query in flight with this ID, 0: none */
    int timer_armed;            /* Python's timeout timer runs (Python clears it) */
    int arm;                    /* a query was taken with no timer: Python arms it */
    struct ns_dns_for_python *py;
    int npy;
    uint8_t *py_buf;
    uint32_t py_cap;
    uint32_t py_used;
    uint8_t *in;
    uint8_t *frame;
    uint64_t queries;
    uint64_t answers;
    uint64_t reply_foreign;
    uint64_t reply_mismatch;
    uint64_t send_errors;
    uint64_t py_full;
};

int ns_dns_new(struct ns_ctx *ctx, const uint8_t *dns_ip, const uint8_t *dns6_ip, uint32_t mtu);
int ns_dns_guest(struct ns_ctx *ctx, const uint8_t *mac, const uint8_t *ip);
int ns_dns_set_upstream(struct ns_ctx *ctx, int fd, const uint8_t *addr, uint32_t addr_len);
int ns_dns_rotate(struct ns_ctx *ctx, int fd);
int ns_dns_expire(struct ns_ctx *ctx, double older_than);
void ns_dns_python_done(struct ns_ctx *ctx);

double ns_monotonic(void);
long ns_loop(struct ns_ctx *ctx, int epfd, double deadline, int max_frames);
