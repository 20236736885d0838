/* UDP request/response for the RTT overhead bench, in C so that the client's own jitter stays
 * far below the microseconds being measured (the lab's Python client adds about 40 us).
 *
 *   udp_rr server PORT              echo every datagram back (recvfrom, sendto)
 *   udp_rr client DEST PORT RATE    one request per 1/RATE s: sendto, then recvmsg of the reply
 *
 * IPv4 only. Requests carry a big-endian sequence number in their first 8 payload bytes (the
 * filter's udp_payload), 64 bytes in all. The server prints {"ready": true} once bound; the
 * client prints one line per request, {"seq": N, "send_start_ns": T, "rtt_ns": R}, with "lost"
 * instead of rtt_ns after 1 s without the reply. Times are CLOCK_MONOTONIC, as in Python. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PAYLOAD 64

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void put_be64(unsigned char *b, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        b[i] = (unsigned char)v;
}

static int fail(const char *what)
{
    fprintf(stderr, "udp_rr: %s: %s\n", what, strerror(errno));
    return 1;
}

static int server(int port)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
        return fail("bind");
    printf("{\"ready\": true, \"port\": %d}\n", port);
    fflush(stdout);
    unsigned char buf[65536];
    for (;;) {
        struct sockaddr_in peer;
        socklen_t len = sizeof(peer);
        ssize_t n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&peer, &len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return fail("recvfrom");
        }
        if (sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&peer, len) < 0 && errno != EINTR)
            return fail("sendto");
    }
}

static int client(const char *dest, int port, double rate)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    struct timeval timeout = {.tv_sec = 1};
    if (fd < 0 || inet_pton(AF_INET, dest, &addr.sin_addr) != 1)
        return fail("destination");
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout)) < 0)
        return fail("SO_RCVTIMEO");
    /* One line per request; flushed every 50 ms so the writes stay out of most round trips. */
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    uint64_t interval = (uint64_t)(1e9 / rate), next = now_ns(), flushed = next;
    unsigned char request[PAYLOAD], reply[65536];
    memset(request, 'm', sizeof(request));
    for (uint64_t seq = 1;; seq++) {
        struct timespec at = {.tv_sec = (time_t)(next / 1000000000ULL), .tv_nsec = (long)(next % 1000000000ULL)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL) == EINTR)
            ;
        next += interval;
        put_be64(request, seq);
        struct iovec iov = {.iov_base = reply, .iov_len = sizeof(reply)};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
        uint64_t start = now_ns();
        if (sendto(fd, request, sizeof(request), 0, (struct sockaddr *)&addr, sizeof(addr)) < 0)
            return fail("sendto");
        ssize_t n;
        do {
            n = recvmsg(fd, &msg, 0);
        } while (n >= 8 && memcmp(reply, request, 8) != 0);  /* a late reply to an earlier request */
        uint64_t end = now_ns();
        if (n < 0 && errno != EAGAIN && errno != EINTR)
            return fail("recvmsg");
        if (n < 0)
            printf("{\"seq\": %llu, \"send_start_ns\": %llu, \"lost\": true}\n",
                   (unsigned long long)seq, (unsigned long long)start);
        else
            printf("{\"seq\": %llu, \"send_start_ns\": %llu, \"rtt_ns\": %llu}\n", (unsigned long long)seq,
                   (unsigned long long)start, (unsigned long long)(end - start));
        if (end - flushed > 50000000ULL) {
            fflush(stdout);
            flushed = end;
        }
        if (next < end)  /* fell behind (a lost reply): do not send a burst to catch up */
            next = end;
    }
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "server") == 0)
        return server(atoi(argv[2]));
    if (argc == 5 && strcmp(argv[1], "client") == 0 && atof(argv[4]) > 0)
        return client(argv[2], atoi(argv[3]), atof(argv[4]));
    fprintf(stderr, "usage: udp_rr server PORT | udp_rr client DEST PORT RATE\n");
    return 2;
}
