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
