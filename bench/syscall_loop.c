/* A tight loop of one system call, for the syscall-cost bench (bench/syscall_cost.py).
 *
 *   syscall_loop getppid N     N calls of getppid (a call no hook of the engine names)
 *   syscall_loop recvfrom N    N non-blocking recvfrom calls on an empty UDP socket bound to
 *                              127.0.0.1 (a call the engine hooks, made by another process)
 *
 * Prints {"call": NAME, "calls": N, "ns_per_call": X} (CLOCK_MONOTONIC around the loop). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int empty_udp_socket(void)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        fprintf(stderr, "syscall_loop: socket: %s\n", strerror(errno));
        exit(1);
    }
    return fd;
}

int main(int argc, char **argv)
{
    long calls = argc == 3 ? atol(argv[2]) : 0;
    int recv = argc == 3 && strcmp(argv[1], "recvfrom") == 0;
    if (calls <= 0 || (!recv && strcmp(argv[1], "getppid") != 0)) {
        fprintf(stderr, "usage: syscall_loop getppid|recvfrom N\n");
        return 2;
    }
    int fd = recv ? empty_udp_socket() : -1;
    char byte;
    double began = now_ns();
    for (long i = 0; i < calls; i++) {
        if (recv)
            recvfrom(fd, &byte, 1, MSG_DONTWAIT, NULL, NULL);
        else
            syscall(SYS_getppid);
    }
    double took = now_ns() - began;
    printf("{\"call\": \"%s\", \"calls\": %ld, \"ns_per_call\": %.2f}\n", argv[1], calls, took / calls);
    return 0;
}
