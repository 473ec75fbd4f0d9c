/*
 * The frames the client sends and the reply frames it reads (frames.h, docs/protocol.md).
 */
#include "frames.h"

#include "io.h"
#include "limits.h"
#include "storeback.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;

static void put(struct buf *b, const void *data, size_t n) {
    if (b->failed) return;
    if (n > LTOC_MAX_REQUEST_PAYLOAD + 4 - b->len) { b->failed = 1; return; }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        unsigned char *q = realloc(b->p, cap);
        if (!q) { b->failed = 1; return; }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void put_u8(struct buf *b, unsigned v) {
    unsigned char c = (unsigned char)v;
    put(b, &c, 1);
}

static void put_u32(struct buf *b, uint32_t v) {
    unsigned char le[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                           (unsigned char)(v >> 24)};
    put(b, le, 4);
}

static void put_str(struct buf *b, const char *s) {
    size_t n = strlen(s);
    if (n > UINT32_MAX) { b->failed = 1; return; }
    put_u32(b, (uint32_t)n);
    put(b, s, n);
}

int build_request(struct buf *b, unsigned type, uint32_t flags, const char *compiler,
                  const char *cwd, char **args, int nargs) {
    mode_t mask = umask(0);
    umask(mask);
    size_t envc = 0;
    for (char **e = environ; *e; e++) envc++;

    put_u32(b, 0);  /* length placeholder */
    put_u8(b, type);
    put_u8(b, LTOC_PROTOCOL_VERSION);
    put_u32(b, (isatty(2) ? LTOC_FLAG_STDERR_TTY : 0) | flags);
    put_u32(b, (uint32_t)(mask & 0777));
    put_str(b, compiler);
    put_str(b, cwd);
    put_u32(b, (uint32_t)nargs);
    for (int i = 0; i < nargs; i++) put_str(b, args[i]);
    put_u32(b, (uint32_t)envc);
    for (char **e = environ; *e; e++) put_str(b, *e);
    if (b->failed || b->len - 4 > LTOC_MAX_REQUEST_PAYLOAD) return -1;
    uint32_t n = (uint32_t)(b->len - 4);
    unsigned char le[4] = {(unsigned char)n, (unsigned char)(n >> 8), (unsigned char)(n >> 16),
                           (unsigned char)(n >> 24)};
    memcpy(b->p, le, 4);
    return 0;
}

/* Reads exactly n bytes. Returns 0, or -1 on EOF/error. */
static int read_all(int fd, unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

unsigned char *read_reply(int fd, uint32_t *len) {
    unsigned char hdr[5];
    uint32_t n;
    for (;;) {
        if (read_all(fd, hdr, 4) != 0) return NULL;
        n = get_u32(hdr);
        if (n != 1) break;
        if (read_all(fd, hdr + 4, 1) != 0) return NULL;
        if (hdr[4] != LTOC_FRAME_WAIT) {
            unsigned char *p = malloc(1);
            if (p) { p[0] = hdr[4]; *len = 1; }
            return p;
        }
    }
    if (n == 0 || n > LTOC_MAX_REPLY_PAYLOAD) return NULL;
    unsigned char *p = malloc(n);
    if (!p) return NULL;
    if (read_all(fd, p, n) != 0) { free(p); return NULL; }
    *len = n;
    return p;
}

int send_done(int fd, uint32_t status, uint32_t sig, const unsigned char *out, size_t out_len,
              const unsigned char *err, size_t err_len) {
    if (out_len > LTOC_MAX_OUTPUT_STREAM || err_len > LTOC_MAX_OUTPUT_STREAM) return -1;
    struct buf head = {0}, mid = {0};
    put_u32(&head, (uint32_t)(LTOC_RESULT_OVERHEAD + out_len + err_len));
    put_u8(&head, LTOC_FRAME_DONE);
    put_u32(&head, status);
    put_u32(&head, sig);
    put_u32(&head, (uint32_t)out_len);
    put_u32(&mid, (uint32_t)err_len);
    int rc = -1;
    if (!head.failed && !mid.failed && write_all(fd, head.p, head.len, 1) == 0 &&
        write_all(fd, out, out_len, 1) == 0 && write_all(fd, mid.p, mid.len, 1) == 0 &&
        write_all(fd, err, err_len, 1) == 0)
        rc = 0;
    free(head.p);
    free(mid.p);
    return rc;
}

void report_stored(int fd, const struct stored_outputs *st) {
    struct buf b = {0};
    put_u32(&b, 0);
    put_u8(&b, LTOC_FRAME_STORED);
    put_u8(&b, st->memo_written ? 1 : 0);
    put_u32(&b, st->n);
    for (uint32_t i = 0; i < st->n; i++) {
        put(&b, st->digest[i], DIGEST_HEX_LEN);
        put_u32(&b, (uint32_t)st->size[i]);
        put_u32(&b, (uint32_t)(st->size[i] >> 32));
    }
    if (b.p && !b.failed) {
        uint32_t n = (uint32_t)(b.len - 4);
        for (int k = 0; k < 4; k++) b.p[k] = (unsigned char)(n >> (8 * k));
        write_all(fd, b.p, b.len, 1);
    }
    free(b.p);
}

