/* The cheapest possible extra hop, for bench/gateway_latency.py: a single-threaded epoll TCP relay.
 *
 *   tcp_relay LISTEN_PORT UPSTREAM_PORT      (both on 127.0.0.1; prints "ready" once listening)
 *
 * Each accepted connection gets its own upstream connection (TCP_NODELAY on both) and bytes are
 * copied both ways as they arrive: no parsing, no buffering beyond one read. What a call through it
 * costs over a direct call is what any proxy hop costs on the machine (two more loopback writes and
 * two more wake-ups) before the proxy does any HTTP/2 work. The bench compiles it with `cc -O2`.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FD 65536

static int peer[MAX_FD];

static void no_delay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static int watch(int epoll_fd, int fd) {
    struct epoll_event event = {.events = EPOLLIN, .data.fd = fd};
    return epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &event);
}

static void close_pair(int fd) {
    int other = peer[fd];
    close(fd);
    close(other);
}

/* Copies what is readable on fd to its peer; 0 when the pair is done. */
static int forward(int fd) {
    static char buffer[65536];
    ssize_t n = read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) return 1;
    if (n <= 0) return 0;
    for (ssize_t off = 0; off < n;) {
        ssize_t w = write(peer[fd], buffer + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return 0;
        off += w;
    }
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s LISTEN_PORT UPSTREAM_PORT\n", argv[0]);
        return 2;
    }
    struct sockaddr_in listen_addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_in upstream_addr = listen_addr;
    listen_addr.sin_port = htons((unsigned short)atoi(argv[1]));
    upstream_addr.sin_port = htons((unsigned short)atoi(argv[2]));

    int listener = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&listen_addr, sizeof listen_addr) || listen(listener, 64)) {
        perror("tcp_relay: listen");
        return 1;
    }
    int epoll_fd = epoll_create1(0);
    watch(epoll_fd, listener);
    printf("ready\n");
    fflush(stdout);

    struct epoll_event events[16];
    for (;;) {
        int n = epoll_wait(epoll_fd, events, 16, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return 1;
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd != listener) {
                if (forward(fd)) continue;
                /* The rest of this batch may name the closed pair's numbers, which the next accept
                 * can reuse: wait again (level-triggered, so nothing pending is lost). */
                close_pair(fd);
                break;
            }
            int client = accept(listener, NULL, NULL);
            if (client < 0) continue;
            int upstream = socket(AF_INET, SOCK_STREAM, 0);
            if (client >= MAX_FD || upstream >= MAX_FD ||
                connect(upstream, (struct sockaddr *)&upstream_addr, sizeof upstream_addr)) {
                close(client);
                close(upstream);
                continue;
            }
            no_delay(client);
            no_delay(upstream);
            peer[client] = upstream;
            peer[upstream] = client;
            watch(epoll_fd, client);
            watch(epoll_fd, upstream);
        }
    }
}
