/* bench/crr.c: new connections per second with endpoints that cost next to no CPU.
 *
 *   crr serve PORT                   echo server on 0.0.0.0:PORT, one connection at a
 *                                    time; prints "ready" once listening
 *   crr serve-closing PORT           the same, but it closes first, after one answer
 *                                    (as an HTTP/1.0 server does)
 *   crr client HOST PORT SECONDS     connect, send 1 byte, read it back, close, for
 *                                    SECONDS (at most 1,000,000 connections); prints
 *                                    {"conn_per_s": N}
 *
 * The same exchange as probe.py's crr. Its Python client and asyncio server take
 * about 80 and 115 us of CPU per connection; on a 2-core machine they then share one
 * core while the stack has the other, and the row measures them more than the stack.
 * bench/run builds this with cc. IPv4 only. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int serve(int port, int close_first)
{
    int one = 1;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(lfd, 4096) < 0) {
        perror("crr serve");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            continue;
        char buf[64];
        ssize_t n;
        while ((n = read(fd, buf, sizeof(buf))) > 0)
            if (write(fd, buf, (size_t)n) != n || close_first)
                break;
        close(fd);
    }
}

static int client(const char *host, int port, double seconds)
{
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "crr client: not an IPv4 address: %s\n", host);
        return 2;
    }
    long count = 0;
    double start = monotonic();
    while (monotonic() - start < seconds && count < 1000000) {
        char byte = 'c';
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
            write(fd, &byte, 1) != 1 || read(fd, &byte, 1) != 1) {
            perror("crr client");
            return 1;
        }
        close(fd);
        count++;
    }
    printf("{\"conn_per_s\": %.1f}\n", (double)count / (monotonic() - start));
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "serve") == 0)
        return serve(atoi(argv[2]), 0);
    if (argc == 3 && strcmp(argv[1], "serve-closing") == 0)
        return serve(atoi(argv[2]), 1);
    if (argc == 5 && strcmp(argv[1], "client") == 0)
        return client(argv[2], atoi(argv[3]), atof(argv[4]));
    fprintf(stderr, "usage: crr serve PORT | crr serve-closing PORT | "
                    "crr client HOST PORT SECONDS\n");
    return 2;
}
