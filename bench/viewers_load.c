/* viewers_load: the native load generator of the viewers-per-core benchmark.
 *
 * viewers_load --url ws://127.0.0.1:PORT/ws --conns N [--max-hz H] [--decode-every K]
 *              [--boards S] [--concurrency C] [--connect-timeout T] [--batch-us U]
 *              [--encoding json|compact|deflate|compact+deflate]
 *              [--reconnect] [--reconnect-cap S] [--bind 127.0.0.X [--bind-count K]]
 *
 * A drop-in for bench/fastclient.py (same flags, same driver protocol, same JSON), written
 * because a generator in Python costs 7-10 µs of CPU per received frame, as much as the
 * server it measures. One process, one epoll loop, no dependency beyond libc:
 *
 * - N connections to URL?symbols=*&max_hz=H (at most C handshakes in flight), each a small
 *   websocket state machine over one shared read buffer: a frame that is not decoded is
 *   only counted (frames, payload bytes), never copied or allocated for.
 * - Age sample: each connection decodes one text message in K (countdown staggered in
 *   1..K); in a `quotes` frame every quote's `ts` (publisher clock, ms) gives an age into a
 *   1 ms histogram. Only `ts` keys of objects inside the top-level `quotes` array count.
 * - Boards: S connections (index i*N/S) decode every quotes/snapshot frame and keep
 *   symbol -> highest seq and the wall time of the last rise, for `final`.
 * - Driver (bench/loadclient.py serve_driver): one JSON line on stdout once every
 *   connection was tried, then per stdin line: start (reset), stop (stats), final
 *   (convergence of the boards, polled every 50 ms up to t_stop + deadline_s), quit.
 *   stdin is in the same epoll, so the loop never blocks on the driver; EOF on it ends
 *   the process. `closes` counts close codes, "eof" (no close frame) and "protocol" (a
 *   frame this client refused, answered with 1002); `silent`, the open connections that
 *   got no text message since `start` (served nothing); connect errors carry the names
 *   fastclient's exceptions would have.
 * - Cost: per frame, what is left is the kernel's (epoll, one recv, its copy): after a
 *   wake-up that found frames the loop sleeps --batch-us (1000) before the next wait,
 *   since waking once per frame costs more than the frame; an age is read at most that
 *   much later than the frame arrived.
 *
 * - Encodings (issue 24), --encoding: `compact` adds &encoding=compact to the URL; a compact
 *   quotes frame is an array [TS0, entry...] (full entries: objects with ts/seq/symbol/i;
 *   deltas: [i, price, dseq, dts, changes?]), whose ages come from the running time and
 *   whose boards follow index -> symbol. `deflate` offers permessage-deflate
 *   (server_no_context_takeover, client_no_context_takeover); a connection whose 101
 *   accepted it takes messages with RSV1 set, counts their compressed payload as their
 *   bytes, and inflates only the messages it decodes (zlib, one stream reset per message).
 *   Without --encoding the request and the JSON output are as they always were; with it,
 *   `connected` adds "deflate" (connections that negotiated it) and `stats` adds
 *   "compressed" (messages that came with RSV1).
 *
 * - Reconnection (issue 25, the reconnect storm), --reconnect [--reconnect-cap S]: a
 *   connection that fails, is refused or closes comes back after the SDKs' back-off:
 *   quote_core.backoff (full jitter, uniform in [0, min(cap, 0.2 * 2**attempt)]) as the
 *   Python client's retry_delay uses it: after a close in SLOW_DOWN_CODES (1008, 1013,
 *   4029; here also an HTTP 429 or 503) the attempt starts at SLOW_DOWN_ATTEMPT (5), the
 *   cap is RECONNECT_CAP_S (15 s, or S), and the attempt goes back to 0 once a connection
 *   got its snapshot or quotes (the Python client's `synced`; the JS client resets after a socket
 *   that lived 10 s and uses other bases, 0.5 s and 5 s after a slow-down close, caps
 *   15 s and 60 s). Retries are not held to --concurrency: real viewers are not either.
 *   Until its snapshot, and for small frames (a status), a connection reads each text
 *   message's type. `stats` then adds "reconnect": per second since `start` the
 *   connections attempted, opened (101), admitted (their welcome came), refused (closed
 *   before the welcome, or an HTTP status; by code in "refused_by", per connection in
 *   "refusals"), failed (neither), lost (admitted, then ended) and synced (their snapshot
 *   came); where they stand now (waiting in back-off, connecting, synced; "last_sync",
 *   the wall clock of the latest snapshot); how many saw a stale then a live status (and
 *   "last_live", the wall clock of the latest such live); and
 *   for the steady connections (open with their snapshot at `start`, never lost since)
 *   their ages apart ("steady_ages") and their longest gaps between two messages
 *   ("steady_gaps", 100 ms buckets). `final` then counts every board, whatever its state.
 *   `connected` and `conns` count first attempts. Without the flag nothing changes.
 * - --bind ADDR [--bind-count K]: connection i's source address is ADDR + i % K (e.g.
 *   127.0.0.2 ...): each address has its own ephemeral ports (for more connections than
 *   one has), and per-address limits see K clients, not one.
 *
 * 127.0.0.1 only. Built with `cc -O2 -Wall ... -lz` (bench/native.py).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <zlib.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define HIST_MAX_MS 120000
#define RBUF_SIZE (256 * 1024)
#define MAX_MSG (64u * 1024 * 1024) /* fastclient's max_frame_size */
#define HS_TIMEOUT_S 30.0 /* per connection, as fastclient's asyncio.timeout(30) */
#define HS_MAX 16384
#define MAX_KINDS 64
#define STDIN_TAG UINT32_MAX
#define MAX_INDEX 4096 /* compact symbol indexes a board follows */

enum { C_PENDING, C_CONNECTING, C_HS, C_OPEN, C_CLOSED, C_FAILED, C_WAIT /* --reconnect: backing off */ };

struct board_entry { int64_t seq; uint8_t len; char sym[23]; };

struct board { /* symbol -> highest seq: a few dozen symbols, so a plain array */
    int n, cap;
    double last_advance; /* wall clock of the last frame that raised a seq */
    struct board_entry *e;
    int32_t *slot; /* compact: symbol index -> entry + 1 (0: not taught yet) */
};

/* What a frame touches comes first: one cache line per frame of 10,000 connections. */
struct conn {
    int fd;
    uint8_t state;
    uint8_t closed;     /* was open, is no longer (fastclient's `closed`) */
    uint8_t hdr_len;    /* bytes of a header split across reads, in hdr */
    uint8_t in_payload;
    uint8_t frame_op, frame_fin, masked;
    uint8_t msg_op;     /* opcode of the data message in progress, 0: none */
    uint8_t msg_decode; /* this message is decoded (age sample or board) */
    uint8_t msg_age;    /* ... and it is this connection's age sample */
    uint8_t deflate;    /* permessage-deflate was negotiated */
    uint8_t msg_deflated; /* the message in progress came with RSV1 */
    uint8_t mask[4];
    uint8_t hdr[14];
    int countdown;
    uint32_t window;    /* the stats window of its last text message (`silent`) */
    uint64_t frame_len, remaining;
    struct board *board;
    /* the rest: connecting, split messages, replies */
    double t_start; /* handshake start, monotonic */
    uint8_t *acc;   /* a decoded message that did not arrive in one read */
    size_t acc_len, acc_cap;
    char *hs;       /* a handshake response split across reads */
    uint32_t hs_len;
    uint32_t out_len, out_cap; /* what the socket did not take yet */
    uint8_t *out;
    uint8_t ctl[128];
    /* --reconnect only */
    uint8_t tried;      /* its first attempt ended (ok_n / failed_n count first attempts) */
    uint8_t greeted;    /* a text message (the welcome) came on this connection: admitted */
    uint8_t synced;     /* ... and its snapshot (or quotes): it holds the board */
    uint8_t msg_peek;   /* the message in progress is read for its type (and feed) */
    uint8_t saw_stale, saw_live; /* status frames since `start`: stale, then live after it */
    uint16_t attempt;   /* the back-off's attempt, as the SDKs count it */
    uint32_t refusals;  /* refused (close before the welcome, or an HTTP status) since `start` */
    uint32_t lost_window; /* the stats window in which it last lost its connection */
    double retry_at;    /* monotonic: when the back-off ends */
    double last_msg, max_gap; /* monotonic: its last text message, the longest gap since `start` */
} __attribute__((aligned(64)));

struct kind { char name[32]; uint64_t n; };
struct counter { int n; struct kind k[MAX_KINDS]; };

/* ---- globals: one process, one loop ------------------------------------------------- */

static struct conn *conns;
static long n_conns;
static int decode_every = 20;
static int ep;
static uint8_t rbuf[RBUF_SIZE];

static struct {
    uint64_t frames, bytes, decoded, aged, compressed;
    int64_t max_age;
    double t0;
    struct rusage ru0;
    struct counter closes;
    uint32_t window; /* bumped by each start: a connection's `window` says if it heard one */
} S;
static uint64_t hist[HIST_MAX_MS + 1];

static struct counter conn_errors;
static long ok_n, failed_n, in_flight, next_conn;
static int connect_done;
static double connect_t0, connect_deadline;

static char *req_fmt; /* the handshake request up to the key */
static int want_compact, want_deflate, encoding_given;
static long deflate_n; /* connections that negotiated permessage-deflate */

static uint64_t rng_state;

/* --reconnect: the SDKs' back-off (see the header) and what the storm bench counts. */
#define BACKOFF_BASE_S 0.2 /* quote_core.backoff's base */
#define SLOW_DOWN_ATTEMPT 5 /* quote_client.client.SLOW_DOWN_ATTEMPT */
#define PER_S_MAX 86400
static int reconnect_on;
static double reconnect_cap = 15.0; /* quote_core.protocol.RECONNECT_CAP_S */
enum { R_ATTEMPTED, R_OPENED, R_ADMITTED, R_REFUSED, R_FAILED, R_LOST, R_SYNCED, R_KINDS };
static const char *const r_names[R_KINDS] = {"attempted", "opened", "admitted", "refused", "failed",
                                             "lost", "synced"};
static uint32_t (*per_s)[R_KINDS]; /* per second since `start` */
static long per_s_n, per_s_cap;
static struct counter refused_by; /* close codes and HTTP statuses of refusals, since `start` */
static uint64_t hist_steady[HIST_MAX_MS + 1]; /* ages seen by connections never lost since `start` */
static uint64_t steady_aged;
static int64_t steady_max_age;
static int cur_steady; /* the message being decoded is a steady connection's */
static double last_sync_wall; /* wall clock of the latest snapshot of a (re)connection */
static double last_live_wall; /* ... of the latest live status after a stale one */
static int32_t *heap; /* connections in C_WAIT, a min-heap on retry_at */
static long heap_n;
static double loop_now; /* monotonic, read once per wake-up */
static struct in_addr bind_addr; /* --bind: the source address of every connection */
static int bind_given;
static long bind_count = 1; /* --bind-count K: connection i from --bind's address + i % K */

/* ---- small helpers ------------------------------------------------------------------ */

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double wall_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t rnd(void) { /* xorshift64*: keys and masks need no more */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static void count(struct counter *c, const char *name) {
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < c->n; i++)
            if (!strcmp(c->k[i].name, name)) { c->k[i].n++; return; }
        if (c->n < MAX_KINDS) {
            snprintf(c->k[c->n].name, sizeof c->k[0].name, "%s", name);
            c->k[c->n++].n = 1;
            return;
        }
        name = "other"; /* a full table: the rest in one bucket */
    }
}

/* A growing string for the JSON lines (one allocation per driver command, not per frame). */
struct sb { char *p; size_t n, cap; };

static void sb_printf(struct sb *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) return;
        if (b->p && b->n + k < b->cap) { b->n += k; return; }
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->n + k + 1) cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p) { perror("viewers_load: realloc"); _exit(1); }
        b->cap = cap;
    }
}

static void sb_counter(struct sb *b, const struct counter *c) {
    sb_printf(b, "{");
    for (int i = 0; i < c->n; i++)
        sb_printf(b, "%s\"%s\":%llu", i ? "," : "", c->k[i].name, (unsigned long long)c->k[i].n);
    sb_printf(b, "}");
}

static void emit(struct sb *b) {
    sb_printf(b, "\n");
    fwrite(b->p, 1, b->n, stdout);
    fflush(stdout);
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

/* Python's round(x, nd) prints the shortest repr; %.Nf is the same number in JSON. */
static void sb_num(struct sb *b, double x, int nd) {
    if (!isfinite(x)) { sb_printf(b, "null"); return; }
    sb_printf(b, "%.*f", nd, x);
}

/* ---- the JSON walker: just enough to find keys, bounds-checked -------------------- */

struct jw { const char *p, *e; };

static inline void jws(struct jw *j) {
    while (j->p < j->e && (uint8_t)*j->p <= ' ' && (*j->p == ' ' || *j->p == '\n' || *j->p == '\r' || *j->p == '\t'))
        j->p++;
}

/* Eight bytes at a time: the tokens of a frame are a few bytes long, and a byte loop pays a
 * mispredicted branch at the end of each, most of a decode's cost. The lowest flagged byte
 * of these masks is exact (a borrow only flags bytes above a true match). */
#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

static inline uint64_t load8(const char *p) {
    uint64_t x;
    memcpy(&x, p, 8);
    return x;
}

static inline uint64_t bytes_eq(uint64_t x, uint8_t b) {
    uint64_t y = x ^ (ONES * b);
    return (y - ONES) & ~y & HIGHS;
}

static inline uint64_t bytes_ws(uint64_t x) { /* bytes <= ' ' */
    return (x - ONES * 0x21) & ~x & HIGHS;
}

/* At '"': the raw contents (escapes left as they are), j->p after the closing quote. */
static inline int jstr(struct jw *j, const char **s, size_t *n) {
    const char *p = j->p, *e = j->e;
    if (p >= e || *p != '"') return -1;
    const char *start = ++p;
    for (;;) {
        if (e - p >= 8) {
            uint64_t x = load8(p), m = bytes_eq(x, '"') | bytes_eq(x, '\\');
            if (!m) { p += 8; continue; }
            p += __builtin_ctzll(m) >> 3;
        } else {
            while (p < e && *p != '"' && *p != '\\') p++;
            if (p >= e) return -1;
        }
        if (*p == '\\') { /* an escape: the next byte is never the end */
            p += 2;
            if (p > e) return -1;
            continue;
        }
        *s = start;
        *n = (size_t)(p - start);
        j->p = p + 1;
        return 0;
    }
}

/* The bytes of a number or a literal (true, false, null). */
static const uint8_t scalar_byte[256] = {
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1, ['-'] = 1, ['+'] = 1, ['.'] = 1, ['e'] = 1, ['E'] = 1,
    ['a'] = 1, ['f'] = 1, ['l'] = 1, ['n'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1,
};

/* Past a number or literal: to the first byte that can follow one (, } ] or blank). */
static inline const char *scalar_end(const char *p, const char *e) {
    while (e - p >= 8) {
        uint64_t x = load8(p);
        uint64_t m = bytes_eq(x, ',') | bytes_eq(x, '}') | bytes_eq(x, ']') | bytes_ws(x);
        if (m) return p + (__builtin_ctzll(m) >> 3);
        p += 8;
    }
    while (p < e && scalar_byte[(uint8_t)*p]) p++;
    return p;
}

static const char *scan_nested(const char *p, const char *e, int age, int64_t now,
                               uint64_t *aged, int64_t *worst);

static int jskip(struct jw *j) {
    jws(j);
    const char *p = j->p, *e = j->e;
    if (p >= e) return -1;
    const char *s;
    size_t n;
    if (*p == '"') return jstr(j, &s, &n);
    if (*p == '{' || *p == '[') {
        const char *end = scan_nested(p, e, 0, 0, NULL, NULL);
        if (!end) return -1;
        j->p = end;
        return 0;
    }
    const char *end = scalar_end(p, e);
    if (end == p) return -1;
    j->p = end;
    return 0;
}

/* ---- the age sample's scan: 64 bytes at a time ------------------------------------
 *
 * A sampled frame's quotes array is most of its bytes, and all the age sample needs from it
 * is each quote's "ts". Walking it token by token costs ~1 ns a byte; this finds the
 * structure with byte masks instead (simdjson's first stage, cut down): real quotes (not
 * escaped) open and close strings, brackets outside strings give the depth, and a "ts"
 * string outside any string, one object deep in the array and followed by ':', is a
 * quote's key. Nothing inside a string or deeper in a quote is ever taken. */

static int jint(struct jw *j, int64_t *v);

struct masks { uint64_t quote, bslash, open, close; };

#if defined(__SSE2__)
static inline uint64_t mask16(__m128i v, __m128i c) {
    return (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(v, c));
}
#endif

static inline void block_masks(const char *p, struct masks *k) {
#if defined(__SSE2__)
    const __m128i q = _mm_set1_epi8('"'), bs = _mm_set1_epi8('\\'), ob = _mm_set1_epi8('{'),
                  cb = _mm_set1_epi8('}'), up = _mm_set1_epi8(0x20);
    __m128i v0 = _mm_loadu_si128((const __m128i *)p), v1 = _mm_loadu_si128((const __m128i *)(p + 16)),
            v2 = _mm_loadu_si128((const __m128i *)(p + 32)), v3 = _mm_loadu_si128((const __m128i *)(p + 48));
    /* '[' | 0x20 is '{' and ']' | 0x20 is '}'; no other byte lands on either */
    __m128i f0 = _mm_or_si128(v0, up), f1 = _mm_or_si128(v1, up), f2 = _mm_or_si128(v2, up),
            f3 = _mm_or_si128(v3, up);
    k->quote = mask16(v0, q) | mask16(v1, q) << 16 | mask16(v2, q) << 32 | mask16(v3, q) << 48;
    k->bslash = mask16(v0, bs) | mask16(v1, bs) << 16 | mask16(v2, bs) << 32 | mask16(v3, bs) << 48;
    k->open = mask16(f0, ob) | mask16(f1, ob) << 16 | mask16(f2, ob) << 32 | mask16(f3, ob) << 48;
    k->close = mask16(f0, cb) | mask16(f1, cb) << 16 | mask16(f2, cb) << 32 | mask16(f3, cb) << 48;
#else
    memset(k, 0, sizeof *k);
    for (int i = 0; i < 64; i++) {
        uint64_t b = 1ull << i;
        char ch = p[i];
        if (ch == '"') k->quote |= b;
        else if (ch == '\\') k->bslash |= b;
        else if (ch == '{' || ch == '[') k->open |= b;
        else if (ch == '}' || ch == ']') k->close |= b;
    }
#endif
}

static inline uint64_t prefix_xor(uint64_t x) {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    return x;
}

static inline void record_age(int64_t a, uint64_t *aged, int64_t *worst) {
    if (a < 0) a = 0;
    else if (a > HIST_MAX_MS) a = HIST_MAX_MS;
    hist[a]++;
    if (a > *worst) *worst = a;
    (*aged)++;
    if (cur_steady) {
        hist_steady[a]++;
        steady_aged++;
        if (a > steady_max_age) steady_max_age = a;
    }
}

/* At '{' or '[': the position after its matching close (NULL if it has none before e). With
 * `age`, also every "ts" key of the objects directly inside it into the histogram. */
static const char *scan_nested(const char *p, const char *e, int age, int64_t now,
                               uint64_t *aged, int64_t *worst) {
    int depth = 0;
    uint64_t in_str = 0, esc_carry = 0, prev_q = 0;
    char tail[64];
    for (const char *base = p; base < e; base += 64) {
        const char *blk = base;
        if (e - base < 64) { /* the last bytes, padded with blanks, which are nothing */
            memset(tail, ' ', sizeof tail);
            memcpy(tail, base, e - base);
            blk = tail;
        }
        struct masks k;
        block_masks(blk, &k);
        uint64_t escaped = 0;
        if (k.bslash || esc_carry) { /* rare: which bytes a run of backslashes escapes */
            for (int i = 0; i < 64; i++) {
                if (esc_carry) { escaped |= 1ull << i; esc_carry = 0; }
                else if (k.bslash >> i & 1) esc_carry = 1;
            }
        }
        uint64_t quote = k.quote & ~escaped;
        uint64_t str = prefix_xor(quote) ^ in_str; /* inside a string, its opening quote included */
        in_str = (uint64_t)((int64_t)str >> 63);
        uint64_t open = k.open & ~str, close = k.close & ~str, events = open | close;
        uint64_t two = 0; /* closing quotes of two-byte strings: "ts" is one */
        if (age) {
            two = quote & ~str & (quote << 3 | prev_q >> 61);
            events |= two;
            prev_q = quote;
        }
        while (events) {
            int i = __builtin_ctzll(events);
            uint64_t bit = events & -events;
            events ^= bit;
            if (open & bit) {
                depth++;
            } else if (close & bit) {
                if (--depth == 0) return base + i + 1;
            } else if (depth == 2 && base + i - 2 >= p && base[i - 2] == 't' && base[i - 1] == 's') {
                /* a "ts" one object deep: a key if a ':' follows */
                struct jw j = {base + i + 1, e};
                int64_t ts;
                jws(&j);
                if (j.p >= j.e || *j.p != ':') continue;
                j.p++;
                jws(&j);
                if (j.p >= j.e || *j.p == '"' || jint(&j, &ts) < 0) continue;
                record_age(now - ts, aged, worst);
            }
        }
    }
    return NULL;
}

static int jdouble(struct jw *j, double *v) {
    jws(j);
    const char *start = j->p;
    j->p = scalar_end(j->p, j->e);
    size_t n = j->p - start;
    char tmp[64];
    if (n == 0 || n >= sizeof tmp) return -1;
    memcpy(tmp, start, n);
    tmp[n] = 0;
    char *endp;
    *v = strtod(tmp, &endp);
    return *endp ? -1 : 0;
}

/* An integer; a fraction or exponent (never sent) goes through strtod and is floored. */
static int jint(struct jw *j, int64_t *v) {
    jws(j);
    const char *p = j->p, *e = j->e;
    int neg = 0;
    if (p < e && *p == '-') { neg = 1; p++; }
    const char *d0 = p;
    int64_t x = 0;
    while (p < e && *p >= '0' && *p <= '9') x = x * 10 + (*p++ - '0');
    if (p == d0) return -1;
    if (p < e && (*p == '.' || *p == 'e' || *p == 'E')) {
        double d;
        if (jdouble(j, &d) < 0) return -1;
        int64_t t = (int64_t)d; /* floor without libm */
        *v = (double)t > d ? t - 1 : t;
        return 0;
    }
    j->p = p;
    *v = neg ? -x : x;
    return 0;
}

static inline int key_is(const char *k, size_t n, const char *want, size_t wn) {
    if (n != wn) return 0;
    for (size_t i = 0; i < wn; i++) /* unrolled for a literal: no memcmp call per key */
        if (k[i] != want[i]) return 0;
    return 1;
}
#define KEY(k, n, lit) key_is(k, n, lit, sizeof(lit) - 1)

/* --reconnect: one event in this second's counts. */
static void tally(int kind) {
    long sec = (long)(mono_s() - S.t0);
    if (sec < 0) sec = 0;
    if (sec >= PER_S_MAX) sec = PER_S_MAX - 1;
    if (sec >= per_s_cap) {
        long cap = per_s_cap ? per_s_cap : 256;
        while (cap <= sec) cap *= 2;
        per_s = realloc(per_s, cap * sizeof *per_s);
        if (!per_s) { perror("viewers_load: realloc"); _exit(1); }
        memset(per_s + per_s_cap, 0, (cap - per_s_cap) * sizeof *per_s);
        per_s_cap = cap;
    }
    if (sec >= per_s_n) per_s_n = sec + 1;
    per_s[sec][kind]++;
}

/* ---- decoding a frame: the age sample and the board ------------------------------ */

static void board_teach(struct board *b, int64_t index, int slot) {
    if (index < 0 || index >= MAX_INDEX) return;
    if (!b->slot && !(b->slot = calloc(MAX_INDEX, sizeof *b->slot))) { perror("viewers_load: calloc"); _exit(1); }
    b->slot[index] = slot + 1;
}

/* `index`: the compact symbol index the quote carried (-1: none). */
static int board_update(struct board *b, const char *sym, size_t len, int64_t seq, int64_t index) {
    if (len >= sizeof b->e[0].sym) return 0;
    for (int i = 0; i < b->n; i++)
        if (b->e[i].len == len && !memcmp(b->e[i].sym, sym, len)) {
            if (index >= 0) board_teach(b, index, i);
            if (seq > b->e[i].seq) { b->e[i].seq = seq; return 1; }
            return 0;
        }
    if (seq <= 0) return 0;
    if (index >= 0) board_teach(b, index, b->n);
    if (b->n == b->cap) { /* a new symbol: rare, and only on the few board connections */
        b->cap = b->cap ? b->cap * 2 : 64;
        b->e = realloc(b->e, b->cap * sizeof *b->e);
        if (!b->e) { perror("viewers_load: realloc"); _exit(1); }
    }
    b->e[b->n].len = len;
    memcpy(b->e[b->n].sym, sym, len);
    b->e[b->n].sym[len] = 0;
    b->e[b->n++].seq = seq;
    return 1;
}

static int64_t board_get(const struct board *b, const char *sym, size_t len) {
    for (int i = 0; i < b->n; i++)
        if (b->e[i].len == len && !memcmp(b->e[i].sym, sym, len)) return b->e[i].seq;
    return 0;
}

/* One quote object, at its '{': its ts (into *ts, and an age when `aged` is given), symbol,
 * seq and index "i" (to the board). 1 if the board moved, 0 if not, -1 if malformed. */
static int walk_quote(struct jw *j, int64_t now, uint64_t *aged, int64_t *worst,
                      struct board *board, int64_t *ts) {
    int64_t v, seq = 0, index = -1;
    int has_seq = 0;
    const char *sym = NULL;
    size_t sym_len = 0;
    j->p++;
    for (;;) {
        jws(j);
        if (j->p >= j->e) return -1;
        if (*j->p == '}') { j->p++; break; }
        const char *k;
        size_t kn;
        if (jstr(j, &k, &kn) < 0) return -1;
        jws(j);
        if (j->p >= j->e || *j->p != ':') return -1;
        j->p++;
        jws(j);
        if (j->p >= j->e) return -1;
        if (KEY(k, kn, "ts") && *j->p != '"' && jint(j, &v) == 0) {
            *ts = v;
            if (aged) record_age(now - v, aged, worst);
        } else if (KEY(k, kn, "seq") && *j->p != '"' && jint(j, &v) == 0) {
            seq = v;
            has_seq = 1;
        } else if (KEY(k, kn, "symbol") && *j->p == '"') {
            if (jstr(j, &sym, &sym_len) < 0) return -1;
        } else if (board && KEY(k, kn, "i") && *j->p != '"' && jint(j, &v) == 0) {
            index = v;
        } else if (jskip(j) < 0) {
            return -1;
        }
        jws(j);
        if (j->p < j->e && *j->p == ',') j->p++;
        else if (j->p < j->e && *j->p == '}') { j->p++; break; }
        else return -1;
    }
    return board && sym && has_seq ? board_update(board, sym, sym_len, seq, index) : 0;
}

/* At '[' of the top-level "quotes": every element object's ts / symbol / seq, in any order.
 * What was read before a malformed byte still counts (as in scan_nested); `decoded` only
 * counts a whole array. */
static int walk_quotes(struct jw *j, int age, struct board *board) {
    int64_t now = age ? wall_ms() : 0, worst = -1;
    uint64_t aged = 0;
    int moved = 0, ok = -1;
    if (j->p >= j->e || *j->p != '[') return -1;
    j->p++;
    for (;;) {
        jws(j);
        if (j->p >= j->e) goto out;
        if (*j->p == ']') { j->p++; break; }
        if (*j->p == '{') {
            int64_t ts;
            int r = walk_quote(j, now, age ? &aged : NULL, &worst, board, &ts);
            if (r < 0) goto out;
            moved |= r;
        } else if (jskip(j) < 0) {
            goto out;
        }
        jws(j);
        if (j->p < j->e && *j->p == ',') { j->p++; continue; }
        if (j->p < j->e && *j->p == ']') { j->p++; break; }
        goto out;
    }
    ok = 0;
out:
    if (age) {
        S.decoded += ok == 0;
        S.aged += aged;
        if (worst > S.max_age) S.max_age = worst;
    }
    if (moved) board->last_advance = wall_s();
    return ok;
}

/* A compact quotes frame, at its '[': [TS0, entry...]. A full entry is an object (its ts
 * sets the running time; seq, symbol and i go to the board); a delta [i, price, dseq, dts,
 * changes?] moves the running time by dts and the board's seq of index i by dseq. */
static int walk_compact(struct jw *j, int age, struct board *board) {
    int64_t now = age ? wall_ms() : 0, worst = -1, t;
    uint64_t aged = 0;
    int moved = 0, ok = -1;
    if (j->p >= j->e || *j->p != '[') return -1;
    j->p++;
    if (jint(j, &t) < 0) goto out;
    for (;;) {
        jws(j);
        if (j->p >= j->e) goto out;
        if (*j->p == ']') { j->p++; break; }
        if (*j->p != ',') goto out;
        j->p++;
        jws(j);
        if (j->p >= j->e) goto out;
        if (*j->p == '{') {
            int r = walk_quote(j, now, age ? &aged : NULL, &worst, board, &t);
            if (r < 0) goto out;
            moved |= r;
        } else if (*j->p == '[') {
            int64_t index, dseq, dts;
            j->p++;
            if (jint(j, &index) < 0) goto out;
            jws(j);
            if (j->p >= j->e || *j->p != ',') goto out;
            j->p++;
            if (jskip(j) < 0) goto out; /* the price */
            jws(j);
            if (j->p >= j->e || *j->p != ',') goto out;
            j->p++;
            if (jint(j, &dseq) < 0) goto out;
            jws(j);
            if (j->p >= j->e || *j->p != ',') goto out;
            j->p++;
            if (jint(j, &dts) < 0) goto out;
            jws(j);
            if (j->p < j->e && *j->p == ',') { /* the changes */
                j->p++;
                if (jskip(j) < 0) goto out;
                jws(j);
            }
            if (j->p >= j->e || *j->p != ']') goto out;
            j->p++;
            t += dts;
            if (age) record_age(now - t, &aged, &worst);
            if (board && index >= 0 && index < MAX_INDEX && board->slot && board->slot[index]) {
                struct board_entry *be = &board->e[board->slot[index] - 1];
                if (dseq > 0) { be->seq += dseq; moved = 1; }
            }
        } else {
            goto out;
        }
    }
    ok = 0;
out:
    if (age) {
        S.decoded += ok == 0;
        S.aged += aged;
        if (worst > S.max_age) S.max_age = worst;
    }
    if (moved) board->last_advance = wall_s();
    return ok;
}

enum { T_NONE, T_QUOTES, T_SNAPSHOT, T_OTHER };

/* One decoded text message: its top-level "type" decides what its "quotes" are for. */
static void decode(struct conn *c, const uint8_t *m, size_t len) {
    struct jw j = {(const char *)m, (const char *)m + len};
    jws(&j);
    if (j.p < j.e && *j.p == '[') { /* compact quotes */
        if (c->msg_age || c->board) walk_compact(&j, c->msg_age, c->board);
        return;
    }
    if (j.p >= j.e || *j.p != '{') return;
    j.p++;
    int type = T_NONE;
    const char *quotes_at = NULL;
    for (;;) {
        jws(&j);
        if (j.p >= j.e) return;
        if (*j.p == '}') break;
        const char *k, *v;
        size_t kn, vn;
        if (jstr(&j, &k, &kn) < 0) return;
        jws(&j);
        if (j.p >= j.e || *j.p != ':') return;
        j.p++;
        jws(&j);
        if (j.p >= j.e) return;
        if (KEY(k, kn, "type") && type == T_NONE) {
            if (*j.p == '"') {
                if (jstr(&j, &v, &vn) < 0) return;
                type = KEY(v, vn, "quotes") ? T_QUOTES : KEY(v, vn, "snapshot") ? T_SNAPSHOT : T_OTHER;
            } else {
                if (jskip(&j) < 0) return;
                type = T_OTHER;
            }
            if (type == T_OTHER) return; /* nothing else in it is ours */
        } else if (KEY(k, kn, "quotes") && *j.p == '[' && !quotes_at) {
            quotes_at = j.p;
            if (type != T_NONE) break; /* the service's order: type first, walk it now */
            if (jskip(&j) < 0) return;
        } else if (jskip(&j) < 0) {
            return;
        }
        jws(&j);
        if (j.p < j.e && *j.p == ',') j.p++;
        else if (j.p < j.e && *j.p == '}') break;
        else return;
    }
    if (!quotes_at) return;
    int age = c->msg_age && type == T_QUOTES;
    struct board *board = (type == T_QUOTES || type == T_SNAPSHOT) ? c->board : NULL;
    if (!age && !board) return;
    if (board) {
        j.p = quotes_at;
        walk_quotes(&j, age, board);
        return;
    }
    uint64_t aged = 0;
    int64_t worst = -1;
    const char *end = scan_nested(quotes_at, j.e, 1, wall_ms(), &aged, &worst);
    S.aged += aged; /* what went into the histogram, even from a frame cut short */
    if (worst > S.max_age) S.max_age = worst;
    if (end) S.decoded++;
}

/* A message that came with RSV1, inflated (RFC 7692 7.2.2: the payload and 00 00 ff ff,
 * raw deflate, no context kept between messages), into *out; a message that does not
 * inflate is a protocol error (-1). */
static int inflate_msg(const uint8_t *m, size_t len, const uint8_t **out, size_t *out_len) {
    static z_stream zs;
    static int zs_ready;
    static uint8_t *ibuf;
    static size_t icap;
    static const uint8_t tail[4] = {0, 0, 0xff, 0xff};
    if (!zs_ready) {
        if (inflateInit2(&zs, -15) != Z_OK) { fputs("viewers_load: inflateInit2 failed\n", stderr); _exit(1); }
        zs_ready = 1;
    } else {
        inflateReset(&zs);
    }
    size_t have = 0;
    for (int part = 0; part < 2; part++) {
        zs.next_in = (Bytef *)(part ? tail : m);
        zs.avail_in = (uInt)(part ? sizeof tail : len);
        while (zs.avail_in) {
            if (have == icap) {
                icap = icap ? icap * 2 : 65536;
                if (icap > MAX_MSG) return -1;
                if (!(ibuf = realloc(ibuf, icap))) { perror("viewers_load: realloc"); _exit(1); }
            }
            zs.next_out = ibuf + have;
            zs.avail_out = (uInt)(icap - have);
            int r = inflate(&zs, Z_SYNC_FLUSH);
            have = icap - zs.avail_out;
            if (r == Z_STREAM_END) break;
            if (r != Z_OK && !(r == Z_BUF_ERROR && zs.avail_out == 0)) return -1;
        }
    }
    *out = ibuf;
    *out_len = have;
    return 0;
}

/* The first frame of quotes (the snapshot, or an update when the board was empty at the
 * ack) since the connection opened: it follows the board again. */
static void board_synced(struct conn *c) {
    if (c->synced) return;
    c->synced = 1;
    last_sync_wall = wall_s();
    tally(R_SYNCED);
}

/* --reconnect: a connection's first messages (until its board) and its small ones (a
 * status) are read for their type: a snapshot or quotes says it holds the board again, a
 * status its feed. The service puts "type" first, so a snapshot is not walked. */
static void peek(struct conn *c, const uint8_t *m, size_t len) {
    struct jw j = {(const char *)m, (const char *)m + len};
    int status = 0, feed = 0; /* feed: 1 stale, 2 live */
    jws(&j);
    if (j.p < j.e && *j.p == '[') board_synced(c); /* compact quotes */
    if (j.p >= j.e || *j.p != '{') return;
    j.p++;
    for (;;) {
        jws(&j);
        if (j.p >= j.e || *j.p == '}') break;
        const char *k, *v;
        size_t kn, vn;
        if (jstr(&j, &k, &kn) < 0) return;
        jws(&j);
        if (j.p >= j.e || *j.p != ':') return;
        j.p++;
        jws(&j);
        if (j.p >= j.e) return;
        if ((KEY(k, kn, "type") || KEY(k, kn, "feed")) && *j.p == '"') {
            if (jstr(&j, &v, &vn) < 0) return;
            if (KEY(k, kn, "feed")) {
                feed = KEY(v, vn, "stale") ? 1 : KEY(v, vn, "live") ? 2 : 0;
            } else if (KEY(v, vn, "status")) {
                status = 1;
            } else {
                if (KEY(v, vn, "snapshot") || KEY(v, vn, "quotes")) board_synced(c);
                return;
            }
        } else if (jskip(&j) < 0) {
            return;
        }
        jws(&j);
        if (j.p < j.e && *j.p == ',') j.p++;
        else break;
    }
    if (status && feed == 1) c->saw_stale = 1;
    if (status && feed == 2 && c->saw_stale && !c->saw_live) {
        c->saw_live = 1;
        last_live_wall = wall_s();
    }
}

/* ---- sockets ------------------------------------------------------------------------- */

static void set_events(struct conn *c, uint32_t events) {
    struct epoll_event ev = {.events = events | EPOLLRDHUP | EPOLLET, .data.u32 = (uint32_t)(c - conns)};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void drop_fd(struct conn *c) {
    if (c->fd >= 0) close(c->fd); /* leaves the epoll set with it */
    c->fd = -1;
    free(c->acc);
    free(c->hs);
    free(c->out);
    c->acc = NULL;
    c->hs = NULL;
    c->out = NULL;
    c->acc_cap = c->acc_len = c->hs_len = c->out_len = c->out_cap = 0;
}

/* Send now what the socket takes, keep the rest for EPOLLOUT. */
static void send_bytes(struct conn *c, const uint8_t *p, size_t n) {
    if (c->out_len == 0) {
        ssize_t k = send(c->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k < 0) k = (errno == EAGAIN || errno == EINTR) ? 0 : (ssize_t)n; /* dead: reads see it */
        p += k;
        n -= k;
        if (n == 0) return;
    }
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap * 2 : 512;
        while (cap < c->out_len + n) cap *= 2;
        if (cap > (1u << 20)) return; /* a peer that reads nothing from us: drop replies */
        c->out = realloc(c->out, cap);
        if (!c->out) { perror("viewers_load: realloc"); _exit(1); }
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
    set_events(c, EPOLLIN | EPOLLOUT);
}

static void flush_out(struct conn *c) {
    while (c->out_len) {
        ssize_t k = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN) c->out_len = 0;
            break;
        }
        memmove(c->out, c->out + k, c->out_len - k);
        c->out_len -= k;
    }
    if (!c->out_len) set_events(c, EPOLLIN);
}

/* A client frame: masked, as RFC 6455 requires. */
static void send_control(struct conn *c, uint8_t op, const uint8_t *payload, size_t n) {
    uint8_t f[6 + 125];
    uint32_t m = (uint32_t)rnd();
    f[0] = 0x80 | op;
    f[1] = 0x80 | (uint8_t)n;
    memcpy(f + 2, &m, 4);
    for (size_t i = 0; i < n; i++) f[6 + i] = payload[i] ^ f[2 + (i & 3)];
    send_bytes(c, f, 6 + n);
}

static const char *errno_name(int e) {
    switch (e) {
    case ECONNREFUSED: return "ConnectionRefusedError";
    case ECONNRESET: return "ConnectionResetError";
    case ECONNABORTED: return "ConnectionAbortedError";
    case EPIPE: return "BrokenPipeError";
    case ETIMEDOUT: return "TimeoutError";
    default: return "OSError";
    }
}

static void launch(void);

/* ---- --reconnect: the back-off ------------------------------------------------------- */

static void heap_push(struct conn *c) {
    long i = heap_n++;
    int32_t idx = (int32_t)(c - conns);
    while (i > 0) {
        long up = (i - 1) / 2;
        if (conns[heap[up]].retry_at <= c->retry_at) break;
        heap[i] = heap[up];
        i = up;
    }
    heap[i] = idx;
}

static struct conn *heap_pop(void) {
    struct conn *top = &conns[heap[0]];
    int32_t last = heap[--heap_n];
    long i = 0;
    for (;;) {
        long l = 2 * i + 1, m = l;
        if (l >= heap_n) break;
        if (l + 1 < heap_n && conns[heap[l + 1]].retry_at < conns[heap[l]].retry_at) m = l + 1;
        if (conns[last].retry_at <= conns[heap[m]].retry_at) break;
        heap[i] = heap[m];
        i = m;
    }
    if (heap_n) heap[i] = last;
    return top;
}

/* The SDKs' retry_delay: full jitter, uniform in [0, min(cap, 0.2 * 2**attempt)], the
 * attempt starting at SLOW_DOWN_ATTEMPT after a close that asks to slow down, and back to
 * 0 after a connection that got its snapshot (the Python client's `synced`). */
static void back_off(struct conn *c, int close_code) {
    if (c->synced) c->attempt = 0;
    int a = c->attempt;
    if ((close_code == 1008 || close_code == 1013 || close_code == 4029) && a < SLOW_DOWN_ATTEMPT)
        a = SLOW_DOWN_ATTEMPT; /* quote_core.protocol.SLOW_DOWN_CODES */
    double hi = BACKOFF_BASE_S * ldexp(1.0, a < 32 ? a : 32);
    if (hi > reconnect_cap) hi = reconnect_cap;
    if (c->attempt < UINT16_MAX) c->attempt++;
    c->greeted = c->synced = 0;
    c->lost_window = S.window;
    c->last_msg = 0;
    c->state = C_WAIT;
    c->retry_at = mono_s() + hi * (double)(rnd() >> 11) * 0x1p-53;
    heap_push(c);
}

/* A connection that did not get to 101. `status`: the HTTP status it got instead (0: none). */
static void connect_failed(struct conn *c, const char *why, int status) {
    drop_fd(c);
    c->state = C_FAILED;
    count(&conn_errors, why);
    in_flight--;
    if (!c->tried) { failed_n++; c->tried = 1; }
    if (!reconnect_on) return;
    if (status) {
        char name[16];
        snprintf(name, sizeof name, "http_%d", status);
        count(&refused_by, name);
        c->refusals++;
        tally(R_REFUSED);
    } else {
        tally(R_FAILED);
    }
    back_off(c, status == 429 || status == 503 ? 1013 : 0); /* the SSE twins of 1013 */
}

/* An open connection that ended: by a close frame (its `code`, counted by the caller) or
 * not (`why`). With --reconnect, one closed before its welcome was refused. */
static void conn_lost(struct conn *c, const char *why, int code) {
    if (why) count(&S.closes, why);
    drop_fd(c);
    c->state = C_CLOSED;
    c->closed = 1;
    if (!reconnect_on) return;
    if (c->greeted) {
        tally(R_LOST);
    } else if (!why) {
        char name[16];
        snprintf(name, sizeof name, "%d", code);
        count(&refused_by, name);
        c->refusals++;
        tally(R_REFUSED);
    } else {
        tally(R_FAILED);
    }
    back_off(c, why ? 0 : code);
}

static void start_connect(struct conn *c, const struct sockaddr_in *addr) {
    c->t_start = mono_s();
    c->state = C_CONNECTING;
    in_flight++;
    if (reconnect_on) tally(R_ATTEMPTED);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) { connect_failed(c, errno == EMFILE || errno == ENFILE ? "EMFILE" : "OSError", 0); return; }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (bind_given) { /* the port is picked at connect, per destination: no bind-time shortage */
        struct sockaddr_in src = {.sin_family = AF_INET, .sin_addr = bind_addr};
        src.sin_addr.s_addr = htonl(ntohl(bind_addr.s_addr) + (uint32_t)((c - conns) % bind_count));
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(c->fd, (const struct sockaddr *)&src, sizeof src) != 0) {
            connect_failed(c, errno_name(errno), 0);
            return;
        }
    }
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLET, .data.u32 = (uint32_t)(c - conns)};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) { connect_failed(c, "OSError", 0); return; }
    if (connect(c->fd, (const struct sockaddr *)addr, sizeof *addr) != 0 && errno != EINPROGRESS)
        connect_failed(c, errno_name(errno), 0);
    /* done or in progress: EPOLLOUT says which */
}

static void send_handshake(struct conn *c) {
    uint8_t key[16];
    uint64_t a = rnd(), b = rnd();
    memcpy(key, &a, 8);
    memcpy(key + 8, &b, 8);
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char k64[25];
    int o = 0;
    for (int i = 0; i < 16; i += 3) {
        uint32_t v = key[i] << 16 | (i + 1 < 16 ? key[i + 1] << 8 : 0) | (i + 2 < 16 ? key[i + 2] : 0);
        k64[o++] = b64[v >> 18 & 63];
        k64[o++] = b64[v >> 12 & 63];
        k64[o++] = i + 1 < 16 ? b64[v >> 6 & 63] : '=';
        k64[o++] = i + 2 < 16 ? b64[v & 63] : '=';
    }
    k64[o] = 0;
    char req[2048];
    int n = snprintf(req, sizeof req, "%s%s\r\n\r\n", req_fmt, k64);
    set_events(c, EPOLLIN);
    c->state = C_HS;
    send_bytes(c, (const uint8_t *)req, n);
}

/* ---- the websocket stream ------------------------------------------------------------ */

static void protocol_error(struct conn *c) {
    uint8_t code[2] = {1002 >> 8, 1002 & 255};
    send_control(c, 8, code, 2);
    conn_lost(c, "protocol", 1002);
}

/* The header at h is complete; -1: the connection is gone. */
static int frame_start(struct conn *c, const uint8_t *h) {
    uint8_t fin = h[0] >> 7, op = h[0] & 15, len7 = h[1] & 127;
    c->masked = h[1] >> 7;
    /* RSV1: a compressed message, only where deflate was negotiated, only on its first frame. */
    int rsv1 = (h[0] & 0x70) == 0x40 && c->deflate && (op == 1 || op == 2);
    if ((h[0] & 0x70) && !rsv1) { protocol_error(c); return -1; }
    uint64_t len = len7;
    const uint8_t *p = h + 2;
    if (len7 == 126) { len = (uint64_t)p[0] << 8 | p[1]; p += 2; }
    else if (len7 == 127) {
        len = 0;
        for (int i = 0; i < 8; i++) len = len << 8 | p[i];
        p += 8;
    }
    if (c->masked) memcpy(c->mask, p, 4);
    if (op >= 8) {
        if (!fin || len > 125 || op > 10) { protocol_error(c); return -1; }
    } else if (op == 0) {
        if (!c->msg_op) { protocol_error(c); return -1; }
    } else if (op == 1 || op == 2) {
        if (c->msg_op) { protocol_error(c); return -1; }
        c->msg_op = op;
        c->msg_deflated = (uint8_t)rsv1;
        S.compressed += rsv1 && op == 1;
        c->msg_age = c->msg_decode = c->msg_peek = 0;
        c->acc_len = 0;
        if (op == 1) {
            if (--c->countdown <= 0) { c->countdown = decode_every; c->msg_age = 1; }
            c->msg_peek = reconnect_on && (!c->synced || len <= 160);
            c->msg_decode = c->msg_age || c->board || c->msg_peek;
        }
    } else {
        protocol_error(c);
        return -1;
    }
    if (op < 8 && c->msg_decode && c->acc_len + len > MAX_MSG) { protocol_error(c); return -1; }
    c->frame_op = op;
    c->frame_fin = fin;
    c->frame_len = c->remaining = len;
    c->in_payload = 1;
    return 0;
}

static int frame_end(struct conn *c, const uint8_t *inplace) {
    c->in_payload = 0;
    uint8_t op = c->frame_op;
    if (op >= 8) {
        size_t n = c->frame_len;
        if (c->masked)
            for (size_t i = 0; i < n; i++) c->ctl[i] ^= c->mask[i & 3];
        if (op == 9) {
            send_control(c, 10, c->ctl, n);
        } else if (op == 8) {
            int code = n >= 2 ? c->ctl[0] << 8 | c->ctl[1] : 1005;
            char name[16];
            snprintf(name, sizeof name, "%d", code);
            count(&S.closes, name);
            if (n >= 2) send_control(c, 8, c->ctl, 2);
            else send_control(c, 8, NULL, 0);
            conn_lost(c, NULL, code);
            return -1;
        }
        return 0;
    }
    if (c->msg_op == 1) S.bytes += c->frame_len;
    if (!c->frame_fin) return 0;
    if (c->msg_op == 1) {
        S.frames++;
        c->window = S.window;
        if (reconnect_on) {
            if (!c->greeted) { c->greeted = 1; tally(R_ADMITTED); }
            if (c->last_msg > 0 && loop_now - c->last_msg > c->max_gap) c->max_gap = loop_now - c->last_msg;
            c->last_msg = loop_now;
            cur_steady = c->lost_window != S.window;
        }
        if (c->msg_decode) {
            const uint8_t *m = inplace ? inplace : c->acc;
            size_t len = inplace ? c->frame_len : c->acc_len;
            c->acc_len = 0;
            if (c->msg_deflated) {
                if (inflate_msg(m, len, &m, &len) < 0) { c->msg_op = 0; protocol_error(c); return -1; }
            } else if (!inplace && !len) {
                m = NULL;
            }
            if (m && c->msg_peek) peek(c, m, len);
            if (m && (c->msg_age || c->board)) decode(c, m, len);
        }
        cur_steady = 0;
    }
    c->msg_op = 0;
    return 0;
}

static void acc_append(struct conn *c, const uint8_t *p, size_t n) {
    if (c->acc_len + n > c->acc_cap) {
        size_t cap = c->acc_cap ? c->acc_cap : 8192;
        while (cap < c->acc_len + n) cap *= 2;
        c->acc = realloc(c->acc, cap);
        if (!c->acc) { perror("viewers_load: realloc"); _exit(1); }
        c->acc_cap = cap;
    }
    uint8_t *dst = c->acc + c->acc_len;
    if (c->masked) {
        uint64_t off = c->frame_len - c->remaining;
        for (size_t i = 0; i < n; i++) dst[i] = p[i] ^ c->mask[(off + i) & 3];
    } else {
        memcpy(dst, p, n);
    }
    c->acc_len += n;
}

static inline size_t header_size(const uint8_t *h) {
    uint8_t len7 = h[1] & 127;
    return 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + (h[1] & 128 ? 4 : 0);
}

/* Bytes of the stream: headers are parsed where they lie (or gathered in c->hdr when
 * split), payloads are skipped unless decoded, and decoded in place when whole. */
static void ws_input(struct conn *c, const uint8_t *p, size_t n) {
    const uint8_t *end = p + n;
    while (p < end) {
        if (!c->in_payload) {
            const uint8_t *h;
            size_t hn;
            if (c->hdr_len == 0 && end - p >= 2 && (size_t)(end - p) >= (hn = header_size(p))) {
                h = p;
                p += hn;
            } else {
                while (p < end && c->hdr_len < 2) c->hdr[c->hdr_len++] = *p++;
                if (c->hdr_len < 2) return;
                hn = header_size(c->hdr);
                while (p < end && c->hdr_len < hn) c->hdr[c->hdr_len++] = *p++;
                if (c->hdr_len < hn) return;
                h = c->hdr;
                c->hdr_len = 0;
            }
            if (frame_start(c, h) < 0) return;
            if (c->remaining == 0) {
                if (frame_end(c, NULL) < 0) return;
                continue;
            }
        }
        size_t avail = (size_t)(end - p);
        if (avail > c->remaining) avail = c->remaining;
        const uint8_t *inplace = NULL;
        if (c->frame_op >= 8) {
            memcpy(c->ctl + (c->frame_len - c->remaining), p, avail);
        } else if (c->msg_decode) {
            if (c->acc_len == 0 && c->frame_fin && avail == c->frame_len && !c->masked) inplace = p;
            else acc_append(c, p, avail);
        }
        p += avail;
        c->remaining -= avail;
        if (c->remaining == 0 && frame_end(c, inplace) < 0) return;
    }
}

/* The 101 (or not): the response head, then whatever frames came with it. */
static void hs_input(struct conn *c, const uint8_t *p, size_t n) {
    const char *head = (const char *)p;
    size_t head_len = n, before = 0; /* bytes of the head from earlier reads */
    if (c->hs_len || !memmem(p, n, "\r\n\r\n", 4)) {
        if (!c->hs && !(c->hs = malloc(HS_MAX))) { perror("viewers_load: malloc"); _exit(1); }
        before = c->hs_len;
        size_t take = n < HS_MAX - before ? n : HS_MAX - before;
        memcpy(c->hs + before, p, take);
        c->hs_len += take;
        head = c->hs;
        head_len = c->hs_len;
    }
    const char *eoh = memmem(head, head_len, "\r\n\r\n", 4);
    if (!eoh) {
        if (c->hs_len >= HS_MAX) connect_failed(c, "WSInvalidMessageError", 0);
        return;
    }
    if (head_len < 12 || memcmp(head, "HTTP/1.", 7) || memcmp(head + 8, " 101", 4)) {
        int status = head_len >= 12 && !memcmp(head, "HTTP/1.", 7) ? atoi(head + 9) : 0;
        connect_failed(c, "WSInvalidStatusError", status); /* picows's names for these */
        return;
    }
    size_t in_p = (size_t)(eoh + 4 - head) - before; /* the head's bytes in this read */
    free(c->hs);
    c->hs = NULL;
    c->hs_len = 0;
    if (want_deflate) { /* did the 101 accept the offer? */
        const char *h = head;
        size_t hn = (size_t)(eoh - head);
        for (size_t i = 0; i + 18 <= hn; i++)
            if (!strncasecmp(h + i, "permessage-deflate", 18)) { c->deflate = 1; deflate_n++; break; }
    }
    c->state = C_OPEN;
    in_flight--;
    if (!c->tried) { ok_n++; c->tried = 1; }
    if (reconnect_on) tally(R_OPENED);
    if (in_p < n) ws_input(c, p + in_p, n - in_p);
}

/* Edge-triggered, one read per wake-up: a short read drained the data, and data arriving
 * later wakes us again. A FIN or an error that came with this wake-up is not in the data,
 * though (`hup`): then read on to EOF or EAGAIN. */
static void on_readable(struct conn *c, int hup) {
    for (;;) {
        ssize_t n = recv(c->fd, rbuf, sizeof rbuf, 0);
        if (n > 0) {
            if (c->state == C_HS) hs_input(c, rbuf, n);
            else ws_input(c, rbuf, n);
            if (c->state != C_OPEN && c->state != C_HS) return;
            if ((size_t)n < sizeof rbuf && !hup) return;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return;
        if (c->state == C_HS) connect_failed(c, n == 0 ? "ConnectionError" : errno_name(errno), 0);
        else conn_lost(c, "eof", 1006);
        return;
    }
}

static void on_conn_event(struct conn *c, uint32_t events) {
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
        if (err) { connect_failed(c, errno_name(err), 0); return; }
        if (!(events & EPOLLOUT)) return;
        send_handshake(c);
        return;
    }
    if (c->state != C_HS && c->state != C_OPEN) return; /* stale event of a closed one */
    if ((events & EPOLLOUT) && c->out_len) flush_out(c);
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP))
        on_readable(c, (events & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)) != 0);
}

/* ---- connecting all ------------------------------------------------------------------ */

static struct sockaddr_in addr;
static int concurrency = 256;
static long batch_us = 1000;
static int n_boards_req = 4;

static void launch(void) {
    while (!connect_done && in_flight < concurrency && next_conn < n_conns)
        start_connect(&conns[next_conn++], &addr);
}

static void emit_connected(void) {
    long boards = 0;
    for (long i = 0; i < n_conns; i++)
        boards += conns[i].board && (conns[i].state == C_OPEN || conns[i].state == C_CLOSED);
    struct sb b = {0};
    sb_printf(&b, "{\"event\":\"connected\",\"ok\":%ld,\"failed\":%ld,\"boards\":%ld,\"errors\":",
              ok_n, n_conns - ok_n, boards);
    sb_counter(&b, &conn_errors);
    if (encoding_given) sb_printf(&b, ",\"deflate\":%ld", deflate_n);
    sb_printf(&b, ",\"connect_s\":");
    sb_num(&b, mono_s() - connect_t0, 3);
    sb_printf(&b, "}");
    emit(&b);
    connect_done = 1;
}

static double last_scan;

/* Timeouts: 30 s per handshake, --connect-timeout for them all. */
static void connect_tick(void) {
    double now = mono_s();
    if (now >= connect_deadline) {
        for (long i = 0; i < n_conns; i++) {
            struct conn *c = &conns[i];
            if (c->state == C_PENDING || c->state == C_CONNECTING || c->state == C_HS) {
                if (c->state == C_PENDING) in_flight++;
                connect_failed(c, "connect_timeout", 0);
            }
        }
        return;
    }
    if (now - last_scan < 0.1) return;
    last_scan = now;
    for (long i = 0; i < next_conn; i++) {
        struct conn *c = &conns[i];
        if ((c->state == C_CONNECTING || c->state == C_HS) && now - c->t_start > HS_TIMEOUT_S)
            connect_failed(c, "TimeoutError", 0);
    }
}

/* --reconnect: the back-offs that ended, and the 30 s handshake timeout after `connected`. */
static void reconnect_tick(void) {
    double now = mono_s();
    while (heap_n && conns[heap[0]].retry_at <= now) start_connect(heap_pop(), &addr);
    if (!connect_done || now - last_scan < 0.5) return;
    last_scan = now;
    for (long i = 0; i < n_conns; i++) {
        struct conn *c = &conns[i];
        if ((c->state == C_CONNECTING || c->state == C_HS) && now - c->t_start > HS_TIMEOUT_S)
            connect_failed(c, "TimeoutError", 0);
    }
}

/* ---- the driver ---------------------------------------------------------------------- */

static void reset_stats(void) {
    S.window++;
    S.frames = S.bytes = S.decoded = S.aged = S.compressed = 0;
    S.max_age = 0;
    memset(hist, 0, sizeof hist);
    S.closes.n = 0;
    S.t0 = mono_s();
    getrusage(RUSAGE_SELF, &S.ru0);
    if (!reconnect_on) return;
    per_s_n = 0;
    if (per_s) memset(per_s, 0, per_s_cap * sizeof *per_s);
    refused_by.n = 0;
    memset(hist_steady, 0, sizeof hist_steady);
    steady_aged = 0;
    steady_max_age = 0;
    for (long i = 0; i < n_conns; i++) { /* steady: open, with its board, from now on */
        struct conn *c = &conns[i];
        c->refusals = 0;
        c->saw_stale = c->saw_live = 0;
        c->max_gap = 0;
        if (c->state == C_OPEN && c->synced) c->last_msg = S.t0;
        else c->lost_window = S.window;
    }
}

static double tv(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }

/* A sparse histogram, bucket i named i * scale. */
static void sb_hist(struct sb *b, const uint64_t *h, long n, long scale) {
    sb_printf(b, "{");
    int first = 1;
    for (long i = 0; i < n; i++)
        if (h[i]) {
            sb_printf(b, "%s\"%ld\":%llu", first ? "" : ",", i * scale, (unsigned long long)h[i]);
            first = 0;
        }
    sb_printf(b, "}");
}

#define GAP_BUCKETS 600 /* 100 ms each: a minute */

/* --reconnect's part of `stats`: per second since `start`, what was attempted, opened
 * (101), admitted (a welcome came), refused (closed before the welcome, or an HTTP
 * status), failed (no 101 nor close code), lost (admitted, then closed) and synced (its
 * snapshot came); then where every connection stands, and what the steady ones (open with
 * their board at `start`, never lost since) saw. */
static void emit_reconnect(struct sb *b) {
    static uint64_t refusals[65], gaps[GAP_BUCKETS + 1];
    memset(refusals, 0, sizeof refusals);
    memset(gaps, 0, sizeof gaps);
    long waiting = 0, connecting = 0, synced = 0, steady = 0, stale = 0, live = 0, max_ref = 0;
    double now = mono_s(), max_gap = 0;
    for (long i = 0; i < n_conns; i++) {
        const struct conn *c = &conns[i];
        waiting += c->state == C_WAIT;
        connecting += c->state == C_CONNECTING || c->state == C_HS;
        synced += c->state == C_OPEN && c->synced;
        stale += c->saw_stale;
        live += c->saw_live;
        refusals[c->refusals < 64 ? c->refusals : 64]++;
        if (c->refusals > max_ref) max_ref = c->refusals;
        if (c->state == C_OPEN && c->lost_window != S.window) {
            steady++;
            double gap = c->max_gap;
            if (c->last_msg > 0 && now - c->last_msg > gap) gap = now - c->last_msg;
            if (gap > max_gap) max_gap = gap;
            long k = (long)(gap * 10);
            gaps[k < GAP_BUCKETS ? k : GAP_BUCKETS]++;
        }
    }
    sb_printf(b, ",\"reconnect\":{\"per_s\":{");
    for (int k = 0; k < R_KINDS; k++) {
        sb_printf(b, "%s\"%s\":[", k ? "," : "", r_names[k]);
        for (long i = 0; i < per_s_n; i++) sb_printf(b, "%s%u", i ? "," : "", per_s[i][k]);
        sb_printf(b, "]");
    }
    sb_printf(b, "},\"refused_by\":");
    sb_counter(b, &refused_by);
    sb_printf(b, ",\"refusals\":");
    sb_hist(b, refusals, 65, 1);
    sb_printf(b, ",\"max_refusals\":%ld,\"waiting\":%ld,\"connecting\":%ld,\"synced\":%ld,"
              "\"last_sync\":", max_ref, waiting, connecting, synced);
    if (last_sync_wall > 0) sb_num(b, last_sync_wall, 3);
    else sb_printf(b, "null");
    sb_printf(b, ",\"last_live\":");
    if (last_live_wall > 0) sb_num(b, last_live_wall, 3);
    else sb_printf(b, "null");
    sb_printf(b, ",\"stale\":%ld,\"live\":%ld,\"steady\":%ld,\"steady_aged\":%llu,"
              "\"steady_max_age_ms\":%lld,\"steady_ages\":", stale, live, steady,
              (unsigned long long)steady_aged, (long long)steady_max_age);
    sb_hist(b, hist_steady, HIST_MAX_MS + 1, 1);
    sb_printf(b, ",\"steady_max_gap_ms\":%.0f,\"steady_gaps\":", max_gap * 1000);
    sb_hist(b, gaps, GAP_BUCKETS + 1, 100);
    sb_printf(b, "}");
}

static void emit_stats(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double user = tv(ru.ru_utime) - tv(S.ru0.ru_utime), sys = tv(ru.ru_stime) - tv(S.ru0.ru_stime);
    long open = 0, silent = 0;
    for (long i = 0; i < n_conns; i++) {
        open += conns[i].state == C_OPEN;
        silent += conns[i].state == C_OPEN && conns[i].window != S.window;
    }
    struct sb b = {0};
    sb_printf(&b, "{\"event\":\"stats\",\"wall_s\":");
    sb_num(&b, mono_s() - S.t0, 3);
    sb_printf(&b, ",\"cpu_s\":");
    sb_num(&b, user + sys, 4);
    sb_printf(&b, ",\"user_s\":");
    sb_num(&b, user, 4);
    sb_printf(&b, ",\"sys_s\":");
    sb_num(&b, sys, 4);
    sb_printf(&b, ",\"frames\":%llu,\"bytes\":%llu,\"decoded\":%llu,\"aged\":%llu,\"max_age_ms\":%lld,\"ages\":{",
              (unsigned long long)S.frames, (unsigned long long)S.bytes,
              (unsigned long long)S.decoded, (unsigned long long)S.aged, (long long)S.max_age);
    int first = 1;
    for (int i = 0; i <= HIST_MAX_MS; i++)
        if (hist[i]) {
            sb_printf(&b, "%s\"%d\":%llu", first ? "" : ",", i, (unsigned long long)hist[i]);
            first = 0;
        }
    sb_printf(&b, "},\"closes\":");
    sb_counter(&b, &S.closes);
    sb_printf(&b, ",\"open\":%ld,\"silent\":%ld,\"conns\":%ld", open, silent, ok_n);
    if (encoding_given) sb_printf(&b, ",\"compressed\":%llu", (unsigned long long)S.compressed);
    if (reconnect_on) emit_reconnect(&b);
    sb_printf(&b, "}");
    emit(&b);
}

/* A `final`: loadclient.converged_at, polled from the loop instead of awaited. */
static struct {
    int active;
    int nsyms;
    char (*sym)[24];
    uint8_t *sym_len;
    int64_t *seq;
    double t_stop, deadline_s, end, next_check;
    long nboards, ndone;
    long *board_idx;
    double *when;
    uint8_t *done;
} F;

static void final_free(void) {
    free(F.sym);
    free(F.sym_len);
    free(F.seq);
    free(F.board_idx);
    free(F.when);
    free(F.done);
    memset(&F, 0, sizeof F);
}

static void final_check(void) {
    for (long i = 0; i < F.nboards; i++) {
        if (F.done[i]) continue;
        const struct board *b = conns[F.board_idx[i]].board;
        int all = 1;
        for (int s = 0; s < F.nsyms && all; s++)
            all = board_get(b, F.sym[s], F.sym_len[s]) >= F.seq[s];
        if (all) {
            F.done[i] = 1;
            F.when[F.ndone++] = b->last_advance - F.t_stop;
        }
    }
    if (F.ndone == F.nboards || wall_s() >= F.end) {
        for (long i = 0; i < F.nboards; i++) { /* why not: on stderr, the driver's log */
            if (F.done[i]) continue;
            const struct board *b = conns[F.board_idx[i]].board;
            int behind = 0, first = -1;
            for (int s = 0; s < F.nsyms; s++)
                if (board_get(b, F.sym[s], F.sym_len[s]) < F.seq[s] && behind++ == 0) first = s;
            if (first >= 0)
                fprintf(stderr, "viewers_load: board of connection %ld behind on %d of %d symbols "
                        "(%s: %lld of %lld), last advance %.3f s after t_stop\n", F.board_idx[i],
                        behind, F.nsyms, F.sym[first], (long long)board_get(b, F.sym[first], F.sym_len[first]),
                        (long long)F.seq[first], b->last_advance - F.t_stop);
        }
        double worst = -INFINITY;
        for (long i = 0; i < F.ndone; i++)
            if (F.when[i] > worst) worst = F.when[i];
        struct sb b = {0};
        sb_printf(&b, "{\"event\":\"converged\",\"boards\":%ld,\"converged\":%ld,\"max_s\":", F.nboards, F.ndone);
        if (F.ndone) sb_num(&b, worst, 3);
        else sb_printf(&b, "null");
        sb_printf(&b, ",\"deadline_s\":%.15g}", F.deadline_s);
        emit(&b);
        final_free();
        return;
    }
    F.next_check = mono_s() + 0.05;
}

static int parse_seqs(struct jw *j) {
    if (j->p >= j->e || *j->p != '{') return -1;
    j->p++;
    int cap = 0;
    for (;;) {
        jws(j);
        if (j->p >= j->e) return -1;
        if (*j->p == '}') { j->p++; return 0; }
        const char *k;
        size_t kn;
        int64_t v;
        if (jstr(j, &k, &kn) < 0) return -1;
        jws(j);
        if (j->p >= j->e || *j->p != ':') return -1;
        j->p++;
        if (jint(j, &v) < 0) return -1;
        if (F.nsyms == cap) {
            cap = cap ? cap * 2 : 64;
            F.sym = realloc(F.sym, cap * sizeof *F.sym);
            F.sym_len = realloc(F.sym_len, cap);
            F.seq = realloc(F.seq, cap * sizeof *F.seq);
            if (!F.sym || !F.sym_len || !F.seq) { perror("viewers_load: realloc"); _exit(1); }
        }
        if (kn >= sizeof F.sym[0]) kn = sizeof F.sym[0] - 1; /* such a symbol never matches */
        memcpy(F.sym[F.nsyms], k, kn);
        F.sym[F.nsyms][kn] = 0;
        F.sym_len[F.nsyms] = kn;
        F.seq[F.nsyms++] = v;
        jws(j);
        if (j->p < j->e && *j->p == ',') j->p++;
        else if (j->p < j->e && *j->p == '}') { j->p++; return 0; }
        else return -1;
    }
}

/* One command line; 1: quit. */
static int command(const char *line, size_t n) {
    struct jw j = {line, line + n};
    jws(&j);
    if (j.p >= j.e) return 0; /* a blank line */
    if (*j.p != '{') goto bad;
    j.p++;
    char cmd[16] = "";
    double t_stop = 0, deadline_s = 5.0;
    int have_seqs = 0;
    final_free();
    for (;;) {
        jws(&j);
        if (j.p >= j.e) goto bad;
        if (*j.p == '}') break;
        const char *k, *v;
        size_t kn, vn;
        if (jstr(&j, &k, &kn) < 0) goto bad;
        jws(&j);
        if (j.p >= j.e || *j.p != ':') goto bad;
        j.p++;
        jws(&j);
        if (KEY(k, kn, "cmd") && j.p < j.e && *j.p == '"') {
            if (jstr(&j, &v, &vn) < 0) goto bad;
            snprintf(cmd, sizeof cmd, "%.*s", (int)(vn < 15 ? vn : 15), v);
        } else if (KEY(k, kn, "seqs")) {
            if (parse_seqs(&j) < 0) goto bad;
            have_seqs = 1;
        } else if (KEY(k, kn, "t_stop")) {
            if (jdouble(&j, &t_stop) < 0) goto bad;
        } else if (KEY(k, kn, "deadline_s")) {
            if (jdouble(&j, &deadline_s) < 0) goto bad;
        } else if (jskip(&j) < 0) {
            goto bad;
        }
        jws(&j);
        if (j.p < j.e && *j.p == ',') j.p++;
        else if (j.p < j.e && *j.p == '}') break;
        else goto bad;
    }
    if (!strcmp(cmd, "start")) {
        reset_stats();
    } else if (!strcmp(cmd, "stop")) {
        emit_stats();
    } else if (!strcmp(cmd, "final")) {
        if (!have_seqs) goto bad;
        F.t_stop = t_stop;
        F.deadline_s = deadline_s;
        F.end = t_stop + deadline_s;
        F.board_idx = malloc((n_boards_req + 1) * sizeof *F.board_idx);
        if (!F.board_idx) { perror("viewers_load: malloc"); _exit(1); }
        for (long i = 0; i < n_conns; i++) /* with --reconnect, a board lives on through reconnects */
            if (conns[i].board && (reconnect_on || conns[i].state == C_OPEN || conns[i].state == C_CLOSED))
                F.board_idx[F.nboards++] = i;
        F.when = calloc(F.nboards + 1, sizeof *F.when);
        F.done = calloc(F.nboards + 1, 1);
        if (!F.when || !F.done) { perror("viewers_load: calloc"); _exit(1); }
        F.active = 1;
        final_check();
    } else if (!strcmp(cmd, "quit")) {
        return 1;
    }
    return 0; /* an unknown command: ignored, as serve_driver does */
bad:
    final_free();
    fprintf(stderr, "viewers_load: bad command line: %.*s\n", (int)(n > 200 ? 200 : n), line);
    return 0;
}

static char *in_buf;
static size_t in_len, in_cap;
static int in_eof, stdin_polled;

static void read_stdin(void) {
    if (in_len == in_cap) {
        in_cap = in_cap ? in_cap * 2 : 65536;
        in_buf = realloc(in_buf, in_cap);
        if (!in_buf) { perror("viewers_load: realloc"); _exit(1); }
    }
    ssize_t k = read(0, in_buf + in_len, in_cap - in_len);
    if (k > 0) in_len += k;
    else if (k == 0 || (errno != EINTR && errno != EAGAIN)) in_eof = 1;
}

/* Commands wait for `connected` and for a pending `final`, as serve_driver's readline does. */
static void run_commands(void) {
    while (connect_done && !F.active && in_len) {
        char *nl = memchr(in_buf, '\n', in_len);
        size_t n = nl ? (size_t)(nl - in_buf) : in_len;
        if (!nl && !in_eof) break;
        int quit = command(in_buf, n);
        size_t used = nl ? n + 1 : n;
        memmove(in_buf, in_buf + used, in_len - used);
        in_len -= used;
        if (quit) { fflush(stdout); _exit(0); }
    }
    /* EOF: done once what was read is answered; during connecting there is nobody to tell. */
    if (in_eof && !in_len && !F.active) { fflush(stdout); _exit(0); }
}

/* ---- main ---------------------------------------------------------------------------- */

#define USAGE "usage: viewers_load --url ws://127.0.0.1:PORT/ws --conns N [--max-hz H] " \
    "[--decode-every K] [--boards S] [--concurrency C] [--connect-timeout T] [--batch-us U] " \
    "[--encoding json|compact|deflate|compact+deflate] [--reconnect] [--reconnect-cap S] " \
    "[--bind 127.0.0.X [--bind-count K]]\n"

static void usage(const char *why) {
    fputs(USAGE, stderr);
    if (why) fprintf(stderr, "viewers_load: error: %s\n", why);
    exit(2);
}

static long arg_long(const char *v, const char *name) {
    char *e;
    errno = 0;
    long x = strtol(v, &e, 10);
    if (errno || !*v || *e) { fprintf(stderr, "viewers_load: %s: not an integer: %s\n", name, v); usage(NULL); }
    return x;
}

static double arg_double(const char *v, const char *name) {
    char *e;
    double x = strtod(v, &e);
    if (!*v || *e || !isfinite(x)) { fprintf(stderr, "viewers_load: %s: not a number: %s\n", name, v); usage(NULL); }
    return x;
}

int main(int argc, char **argv) {
    const char *url = NULL;
    double max_hz = NAN, connect_timeout = 120.0;
    n_conns = -1;
    for (int i = 1; i < argc; i++) {
        char *a = argv[i], *v = NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(USAGE, stdout);
            exit(0);
        }
        if (!strcmp(a, "--reconnect")) { reconnect_on = 1; continue; }
        char *eq = strncmp(a, "--", 2) ? NULL : strchr(a, '=');
        if (eq) { *eq = 0; v = eq + 1; }
        else if (i + 1 < argc) v = argv[++i];
        else usage("a flag without its value");
        if (!strcmp(a, "--url")) url = v;
        else if (!strcmp(a, "--conns")) n_conns = arg_long(v, a);
        else if (!strcmp(a, "--max-hz")) max_hz = arg_double(v, a);
        else if (!strcmp(a, "--decode-every")) decode_every = (int)arg_long(v, a);
        else if (!strcmp(a, "--boards")) n_boards_req = (int)arg_long(v, a);
        else if (!strcmp(a, "--concurrency")) concurrency = (int)arg_long(v, a);
        else if (!strcmp(a, "--connect-timeout")) connect_timeout = arg_double(v, a);
        else if (!strcmp(a, "--batch-us")) batch_us = arg_long(v, a);
        else if (!strcmp(a, "--reconnect-cap")) reconnect_cap = arg_double(v, a);
        else if (!strcmp(a, "--bind-count")) bind_count = arg_long(v, a);
        else if (!strcmp(a, "--bind")) {
            if (inet_pton(AF_INET, v, &bind_addr) != 1) usage("--bind takes an IPv4 address");
            bind_given = 1;
        }
        else if (!strcmp(a, "--encoding")) {
            encoding_given = 1;
            if (!strcmp(v, "compact")) want_compact = 1;
            else if (!strcmp(v, "deflate")) want_deflate = 1;
            else if (!strcmp(v, "compact+deflate")) want_compact = want_deflate = 1;
            else if (strcmp(v, "json")) usage("--encoding is json, compact, deflate or compact+deflate");
        }
        else { fprintf(stderr, "viewers_load: unrecognized argument: %s\n", a); usage(NULL); }
    }
    if (!url || n_conns < 0) usage("--url and --conns are required");
    if (decode_every < 1) decode_every = 1;
    if (concurrency < 1) concurrency = 1;
    if (n_boards_req < 0) n_boards_req = 0;
    if (!(reconnect_cap > 0)) usage("--reconnect-cap must be positive");
    if (bind_count < 1 || bind_count > 65536) usage("--bind-count is 1-65536");

    /* 127.0.0.1 only, and the query fastclient.viewer_url adds. */
    const char *hostport;
    if (!strncmp(url, "ws://127.0.0.1:", 15)) hostport = url + 5;
    else if (!strncmp(url, "ws://localhost:", 15)) hostport = url + 5;
    else usage("127.0.0.1 only");
    const char *colon = strchr(hostport, ':');
    char *pe;
    long port = strtol(colon + 1, &pe, 10);
    if (pe == colon + 1 || port <= 0 || port > 65535 || (*pe && *pe != '/' && *pe != '?'))
        usage("the URL needs a port: ws://127.0.0.1:PORT/ws");
    const char *path = pe;
    int hostport_len = (int)(pe - hostport);
    char query[64] = "";
    if (!isnan(max_hz)) snprintf(query, sizeof query, "&max_hz=%g", max_hz);
    if (want_compact) strncat(query, "&encoding=compact", sizeof query - strlen(query) - 1);
    struct sb req = {0};
    sb_printf(&req, "GET %s%s%ssymbols=*%s HTTP/1.1\r\nHost: %.*s\r\nUpgrade: websocket\r\n"
              "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n%sSec-WebSocket-Key: ",
              *pe == '/' ? "" : "/", path, strchr(url, '?') ? "&" : "?", query, hostport_len, hostport,
              want_deflate ? "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
                             "client_no_context_takeover\r\n" : "");
    req_fmt = req.p;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    if (getrandom(&rng_state, sizeof rng_state, 0) != sizeof rng_state)
        rng_state = (uint64_t)getpid() << 32 ^ (uint64_t)(wall_s() * 1e6);
    rng_state |= 1;

    conns = aligned_alloc(64, (n_conns ? n_conns : 1) * sizeof *conns);
    if (!conns) { perror("viewers_load: aligned_alloc"); return 1; }
    memset(conns, 0, (n_conns ? n_conns : 1) * sizeof *conns);
    for (long i = 0; i < n_conns; i++) {
        conns[i].fd = -1;
        conns[i].countdown = 1 + (int)(rnd() % (uint64_t)decode_every);
    }
    if (reconnect_on && !(heap = malloc((n_conns ? n_conns : 1) * sizeof *heap))) {
        perror("viewers_load: malloc");
        return 1;
    }
    for (long i = 0; i < n_boards_req && n_conns > 0; i++) {
        struct conn *c = &conns[i * n_conns / n_boards_req];
        if (!c->board && !(c->board = calloc(1, sizeof *c->board))) { perror("viewers_load: calloc"); return 1; }
    }

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) { perror("viewers_load: epoll_create1"); return 1; }
    struct epoll_event sev = {.events = EPOLLIN, .data.u32 = STDIN_TAG};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev) != 0) stdin_polled = 1; /* a file or /dev/null */

    reset_stats();
    connect_t0 = mono_s();
    connect_deadline = connect_t0 + connect_timeout;
    static struct epoll_event evs[1024];
    for (;;) {
        if (!connect_done) {
            connect_tick();
            launch();
            if (ok_n + failed_n >= n_conns) emit_connected();
        }
        if (reconnect_on) reconnect_tick();
        if (stdin_polled && !in_eof) read_stdin();
        run_commands();
        int timeout = -1;
        if (!connect_done) timeout = 100;
        if (reconnect_on) {
            int ms = 500; /* the handshake timeout's scan */
            if (heap_n) {
                double w = (conns[heap[0]].retry_at - mono_s()) * 1000 + 1;
                if (w < ms) ms = w < 0 ? 0 : (int)w;
            }
            if (timeout < 0 || ms < timeout) timeout = ms;
        }
        if (F.active) {
            int ms = (int)((F.next_check - mono_s()) * 1000) + 1;
            if (ms < 0) ms = 0;
            if (timeout < 0 || ms < timeout) timeout = ms;
        }
        if (stdin_polled && !in_eof) timeout = timeout < 0 || timeout > 50 ? 50 : timeout;
        int k = epoll_wait(ep, evs, 1024, timeout);
        if (k < 0) {
            if (errno == EINTR) continue;
            perror("viewers_load: epoll_wait");
            return 1;
        }
        if (reconnect_on) loop_now = mono_s();
        for (int i = 0; i < k; i++) {
            uint32_t tag = evs[i].data.u32;
            if (tag == STDIN_TAG) {
                read_stdin();
                if (in_eof) epoll_ctl(ep, EPOLL_CTL_DEL, 0, NULL);
            } else {
                on_conn_event(&conns[tag], evs[i].events);
            }
        }
        if (F.active && mono_s() >= F.next_check) final_check();
        /* Gather frames before the next wait: one wake-up per frame costs more than the
         * frame (~5 µs on a VM); ages are read up to batch_us later. */
        if (batch_us > 0 && connect_done && k > 0 && k < 1024) {
            struct timespec ts = {batch_us / 1000000, batch_us % 1000000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
}
