/* The floor: what one write() of a websocket-sized frame to a loopback TCP socket costs.
 *
 * floor --conns N --bytes B [--writes W] [--seconds S] [--hz H] [--writer-cpu C] [--sink-cpu C]
 *
 * Opens N TCP connections over 127.0.0.1 to a listening socket it creates itself; a
 * forked sink process (pinned to --sink-cpu) holds the accepted ends and drains them with
 * epoll, so the reading is another process's CPU. The writer (this process, pinned to
 * --writer-cpu) then writes B-byte frames (a websocket text frame header and a payload of
 * B minus the header) to the N sockets round-robin, W writes in all or until S seconds
 * passed (with --hz H: one frame to every socket every 1/H s, sleeping in between, as a
 * fan-out tick does; without it, back to back), and prints one JSON line: CPU µs per write from getrusage(RUSAGE_SELF) of the
 * writer around the write loop only (user, sys, total), and the wall time.
 *
 * The sockets are nonblocking: a write that meets a full send buffer (EAGAIN) waits in
 * poll() on that socket (no CPU) and is retried; such waits are counted. Note that the
 * kernel's loopback path runs the receiving side's TCP work (the softirq that queues the
 * data on the sink's socket) in the writer's context, so it is charged to the writer's
 * sys time: that is part of what a server pays per frame on loopback too.
 *
 * Bounded: the write loop stops at --seconds (default 30) and alarm() ends both
 * processes after that plus 60 s whatever happens. 127.0.0.1 only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <fcntl.h>

static void die(const char *what) {
    fprintf(stderr, "floor: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double tv_s(struct timeval tv) { return tv.tv_sec + tv.tv_usec / 1e6; }

static void pin(int cpu) {
    if (cpu < 0) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) die("sched_setaffinity");
}

static void set_nonblock(int fd) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) die("fcntl");
}

static void usage(void) {
    fprintf(stderr,
            "usage: floor --conns N --bytes B [--writes W] [--seconds S] "
            "[--hz H] [--writer-cpu C] [--sink-cpu C]\n");
    exit(2);
}

/* The sink: accept `n` connections on `lfd` and drain every one until each has reached
 * EOF (the writer closed it). */
static void sink(int lfd, long n) {
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    set_nonblock(lfd);
    struct epoll_event lev = {.events = EPOLLIN, .data.fd = lfd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) != 0) die("epoll_ctl");
    static char buf[1 << 18];
    struct epoll_event evs[512];
    long accepted = 0, open = 0;
    while (accepted < n || open > 0) {
        int k = epoll_wait(ep, evs, 512, 1000);
        if (k < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < k; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                for (;;) {
                    int s = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                    if (s < 0) break;
                    struct epoll_event ev = {.events = EPOLLIN, .data.fd = s};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev) != 0) die("epoll_ctl");
                    accepted++;
                    open++;
                }
                if (accepted >= n) {
                    epoll_ctl(ep, EPOLL_CTL_DEL, lfd, NULL);
                    close(lfd);
                }
                continue;
            }
            for (;;) {
                ssize_t r = read(fd, buf, sizeof buf);
                if (r > 0) continue;
                if (r < 0 && errno == EINTR) continue;
                if (r < 0 && errno == EAGAIN) break;
                close(fd); /* EOF or error: leaves the epoll set */
                open--;
                break;
            }
        }
    }
    _exit(0);
}

int main(int argc, char **argv) {
    long conns = 0, bytes = 0, writes = 0;
    double seconds = 30.0, hz = 0.0;
    int writer_cpu = -1, sink_cpu = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--conns")) conns = atol(v);
        else if (!strcmp(a, "--bytes")) bytes = atol(v);
        else if (!strcmp(a, "--writes")) writes = atol(v);
        else if (!strcmp(a, "--seconds")) seconds = atof(v);
        else if (!strcmp(a, "--hz")) hz = atof(v);
        else if (!strcmp(a, "--writer-cpu")) writer_cpu = atoi(v);
        else if (!strcmp(a, "--sink-cpu")) sink_cpu = atoi(v);
        else usage();
    }
    if (conns <= 0 || bytes < 8 || bytes > (1 << 24) || seconds <= 0) usage();
    if (writes <= 0) writes = (long)1e12; /* bounded by --seconds only */
    alarm((unsigned)seconds + 60);

    /* One fd per connection in each process (the sink holds the other ends), a margin. */
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rlim_t want = (rlim_t)(conns + 64);
    if (rl.rlim_cur < want) {
        rl.rlim_cur = want;
        if (rl.rlim_max < want) rl.rlim_max = want; /* works as root only */
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            getrlimit(RLIMIT_NOFILE, &rl);
            fprintf(stderr, "floor: %ld connections need %lu open files, the limit is %lu\n",
                    conns, (unsigned long)want, (unsigned long)rl.rlim_max);
            return 1;
        }
    }

    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (lfd < 0) die("socket");
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0) die("bind");
    if (listen(lfd, 4096) != 0) die("listen");
    socklen_t alen = sizeof addr;
    if (getsockname(lfd, (struct sockaddr *)&addr, &alen) != 0) die("getsockname");

    /* The sink holds the accepted ends in its own process: each process needs N fds. */
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        pin(sink_cpu);
        sink(lfd, conns);
    }
    close(lfd);
    pin(writer_cpu);

    int *cfd = calloc(conns, sizeof(int)); /* the writer's ends */
    if (!cfd) die("calloc");
    int one = 1;
    for (long i = 0; i < conns; i++) {
        cfd[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (cfd[i] < 0) die("socket");
        if (connect(cfd[i], (struct sockaddr *)&addr, sizeof addr) != 0) die("connect");
        /* As a websocket server does: one frame, one segment, sent now. */
        setsockopt(cfd[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        set_nonblock(cfd[i]);
    }

    /* A websocket text frame, server to client (unmasked): header then payload. */
    char *frame = malloc(bytes);
    if (!frame) die("malloc");
    size_t hdr;
    size_t payload;
    frame[0] = (char)0x81;
    if (bytes - 2 < 126) {
        hdr = 2;
        payload = bytes - 2;
        frame[1] = (char)payload;
    } else if (bytes - 4 < 65536) {
        hdr = 4;
        payload = bytes - 4;
        frame[1] = 126;
        frame[2] = (char)(payload >> 8);
        frame[3] = (char)(payload & 0xff);
    } else {
        hdr = 10;
        payload = bytes - 10;
        frame[1] = 127;
        for (int k = 0; k < 8; k++) frame[2 + k] = (char)((uint64_t)payload >> (56 - 8 * k));
    }
    memset(frame + hdr, 'x', payload);
    const char *head = "{\"type\":\"quotes\",\"quotes\":[";
    memcpy(frame + hdr, head, payload < strlen(head) ? payload : strlen(head));

    /* Warm-up: one frame to every socket (first-write costs out of the measurement). */
    for (long i = 0; i < conns; i++)
        if (write(cfd[i], frame, bytes) != bytes) die("warm-up write");
    usleep(200000);

    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    double t0 = now_s();
    double deadline = t0 + seconds;
    long done = 0, waits = 0, partial = 0, rounds = 0;
    long i = 0;
    while (done < writes) {
        int fd = cfd[i];
        size_t off = 0;
        while (off < (size_t)bytes) {
            ssize_t w = write(fd, frame + off, bytes - off);
            if (w > 0) {
                if (off == 0 && (size_t)w < (size_t)bytes) partial++;
                off += (size_t)w;
                continue;
            }
            if (w < 0 && errno == EINTR) continue;
            if (w < 0 && errno == EAGAIN) {
                struct pollfd p = {.fd = fd, .events = POLLOUT};
                waits++;
                if (poll(&p, 1, 1000) < 0 && errno != EINTR) die("poll");
                continue;
            }
            die("write");
        }
        done++;
        if (++i == conns) {
            i = 0;
            rounds++;
            if (hz > 0) { /* paced: one frame to every socket per 1/hz, then sleep */
                double next = t0 + rounds / hz, t = now_s();
                if (next >= deadline) break;
                if (next > t) {
                    struct timespec ts = {(time_t)(next - t), (long)((next - t - (time_t)(next - t)) * 1e9)};
                    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
                }
            }
        }
        if ((done & 1023) == 0 && now_s() >= deadline) break;
    }
    double wall = now_s() - t0;
    getrusage(RUSAGE_SELF, &r1);

    for (long k = 0; k < conns; k++) close(cfd[k]);
    int status = 0;
    waitpid(child, &status, 0);

    double user = tv_s(r1.ru_utime) - tv_s(r0.ru_utime);
    double sys = tv_s(r1.ru_stime) - tv_s(r0.ru_stime);
    double n = done ? (double)done : 1.0;
    printf("{\"conns\":%ld,\"bytes\":%ld,\"payload_bytes\":%zu,\"writes\":%ld,"
           "\"cpu_us_per_write\":{\"user\":%.3f,\"sys\":%.3f,\"total\":%.3f},"
           "\"cpu_s\":%.4f,\"wall_s\":%.4f,\"writes_per_s\":%.0f,\"eagain_waits\":%ld,"
           "\"partial_writes\":%ld,\"hz\":%g,\"writer_cpu\":%d,\"sink_cpu\":%d,\"sink_exit\":%d}\n",
           conns, bytes, payload, done, 1e6 * user / n, 1e6 * sys / n, 1e6 * (user + sys) / n,
           user + sys, wall, done / (wall > 0 ? wall : 1e-9), waits, partial, hz, writer_cpu,
           sink_cpu, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return 0;
}
