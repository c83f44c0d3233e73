/* netstack C fast path: the declarations below are also the cffi cdef.
 * Keep this file free of preprocessor directives and includes: cffi parses it. */
uint32_t ns_sum16(const uint8_t *buf, size_t len, uint32_t seed);
uint16_t ns_checksum(const uint8_t *buf, size_t len, uint32_t seed);
long ns_discard(int fd, size_t len);
long ns_sock_send_space(int fd);
