/*
 * libFuzzer target for memo_parse (docs/memo.md, format v1), dist_memo_parse
 * (cache-schema/distmemo.v1.md), the team pack reader (client/pack.h, cache-schema/teampack.v1.md)
 * and the client's reply decoders (client/reply.h): an input starting with the distribution
 * memo's magic goes to dist_memo_parse, one starting with the team pack's magic is written to a
 * memfd and looked up (memos and blobs its own indexes name, and absent ones: whatever is found
 * must lie inside the input after its indexes, and a blob must hash as it is copied), one
 * starting with 'R' to
 * reply_parse_result, one starting with 'H' to reply_parse_hit (after that byte), one starting
 * with 'M' or 'S' to reply_parse_compile (both layouts), one starting with 'P' to
 * reply_is_unknown_flag_refusal, every other input to memo_parse. A reply that parses must lie inside the input; an 'R' must re-encode to it
 * and an 'H''s files must hash to its memo's digests. Each input is tried twice: as a whole memo file,
 * and as a memo body with its correct trailer appended, so that mutations reach the structure
 * parser instead of stopping at the trailer check. A memo that parses must re-encode to exactly
 * the bytes it came from, and every range it refers to must lie inside them.
 *
 * Build and run: client/fuzz/run.sh [seconds].
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../distmemo.h"
#include "../memo.h"
#include "../memo_internal.h"
#include "../pack.h"
#include "../reply.h"

#define REQUIRE(c) do { if (!(c)) abort(); } while (0)

struct enc {
    unsigned char *p;
    size_t len, cap;
};

static void put(struct enc *e, const void *d, size_t n) {
    REQUIRE(e->len + n <= e->cap);
    if (n) memcpy(e->p + e->len, d, n);
    e->len += n;
}

static void put_le(struct enc *e, uint64_t v, int bytes) {
    unsigned char b[8];
    for (int i = 0; i < bytes; i++) b[i] = (unsigned char)(v >> (8 * i));
    put(e, b, (size_t)bytes);
}

static void inside(const unsigned char *buf, size_t len, const void *p, size_t n) {
    const unsigned char *q = p;
    REQUIRE(q >= buf && q <= buf + len && n <= (size_t)(buf + len - q));
}

static void put_bytes(struct enc *e, const unsigned char *buf, size_t len, struct memo_bytes b) {
    inside(buf, len, b.p, b.len);
    put_le(e, b.len, 4);
    put(e, b.p, b.len);
}

static void put_hex(struct enc *e, const unsigned char *buf, size_t len, const char *h) {
    inside(buf, len, h, DIGEST_HEX_LEN);
    for (int i = 0; i < DIGEST_HEX_LEN; i++)
        REQUIRE((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f'));
    put(e, h, DIGEST_HEX_LEN);
}

static void put_checks(struct enc *e, const unsigned char *buf, size_t len,
                       const struct memo_check *checks, uint32_t n) {
    put_le(e, n, 4);
    for (uint32_t i = 0; i < n; i++) {
        const struct memo_check *c = &checks[i];
        REQUIRE(c->name.len <= MEMO_MAX_NAME);
        put_le(e, c->kind, 1);
        put_bytes(e, buf, len, c->name);
        switch (c->kind) {
        case MEMO_STAT:
            put_le(e, c->dev, 8);
            put_le(e, c->ino, 8);
            put_le(e, c->size, 8);
            put_le(e, c->mtime_ns, 8);
            put_le(e, c->ctime_ns, 8);
            break;
        case MEMO_CONTENT:
            put_le(e, c->size, 8);
            put_hex(e, buf, len, c->digest);
            break;
        case MEMO_ABSENT:
        case MEMO_NOTREG:
            break;
        case MEMO_DIR:
            put_le(e, c->dev, 8);
            put_le(e, c->ino, 8);
            put_le(e, c->mtime_ns, 8);
            put_le(e, c->ctime_ns, 8);
            break;
        case MEMO_ENV:
            REQUIRE(c->env_set == 0 || c->env_set == 1);
            REQUIRE(c->value.len <= MEMO_MAX_NAME);
            put_le(e, (uint64_t)c->env_set, 1);
            put_bytes(e, buf, len, c->value);
            break;
        default:
            abort();
        }
    }
}

static void put_outputs(struct enc *e, const unsigned char *buf, size_t len,
                        const struct memo_output *o, uint32_t n) {
    REQUIRE(n >= 1 && n <= MEMO_MAX_OUTPUTS);
    put_le(e, n, 4);
    for (uint32_t i = 0; i < n; i++) {
        REQUIRE(o[i].path.len <= MEMO_MAX_NAME);
        put_bytes(e, buf, len, o[i].path);
        put_hex(e, buf, len, o[i].digest);
        put_le(e, o[i].size, 8);
    }
}

static void put_streams(struct enc *e, const unsigned char *buf, size_t len,
                        struct memo_bytes out, struct memo_bytes err) {
    REQUIRE(out.len <= MEMO_MAX_STREAM && err.len <= MEMO_MAX_STREAM);
    put_bytes(e, buf, len, out);
    put_bytes(e, buf, len, err);
}

/* Appends the trailer and requires the re-encoding to be exactly buf[0..len); frees it. */
static void finish(struct enc *e, const unsigned char *buf, size_t len) {
    char trailer[DIGEST_HEX_LEN + 1];
    digest128_bytes_hex(e->p, e->len, trailer);
    put(e, trailer, DIGEST_HEX_LEN);
    REQUIRE(e->len == len && memcmp(e->p, buf, len) == 0);
    free(e->p);
}

static void try_memo(const unsigned char *buf, size_t len) {
    struct memo m;
    if (memo_parse(buf, len, &m) != 0) return;
    REQUIRE(m.nchecks <= MEMO_MAX_CHECKS);
    struct enc e = {malloc(len), 0, len};
    REQUIRE(e.p);
    put(&e, MEMO_MAGIC, MEMO_MAGIC_LEN);
    put_hex(&e, buf, len, m.key);
    put_checks(&e, buf, len, m.checks, m.nchecks);
    put_outputs(&e, buf, len, m.outputs, m.noutputs);
    put_streams(&e, buf, len, m.out, m.err);
    finish(&e, buf, len);
    memo_free(&m);
}

static void try_dist(const unsigned char *buf, size_t len) {
    struct dist_memo m;
    if (dist_memo_parse(buf, len, &m) != 0) return;
    REQUIRE(m.nchecks <= DIST_MEMO_MAX_CHECKS);
    REQUIRE(m.njobs >= 1 && m.njobs <= DIST_MEMO_MAX_JOBS);
    struct enc e = {malloc(len), 0, len};
    REQUIRE(e.p);
    put(&e, DIST_MEMO_MAGIC, MEMO_MAGIC_LEN);
    put_checks(&e, buf, len, m.checks, m.nchecks);
    put_le(&e, m.njobs, 4);
    uint32_t next = 0;
    for (uint32_t i = 0; i < m.njobs; i++) {
        const struct dist_memo_job *j = &m.jobs[i];
        put_hex(&e, buf, len, j->key);
        put_hex(&e, buf, len, j->lookup);
        REQUIRE(j->first_output == next && j->noutputs <= m.noutputs - next);
        put_outputs(&e, buf, len, m.outputs + j->first_output, j->noutputs);
        next += j->noutputs;
        put_streams(&e, buf, len, j->out, j->err);
    }
    REQUIRE(next == m.noutputs);
    finish(&e, buf, len);
    dist_memo_free(&m);
}

static void try_result(const unsigned char *buf, size_t len) {
    struct reply_result r;
    if (reply_parse_result(buf, len, &r) != 0) return;
    REQUIRE(r.status >= 0 && r.status <= 255 && r.sig >= 0 && r.sig <= (int)LTOC_MAX_SIGNAL);
    struct enc e = {malloc(len), 0, len};
    REQUIRE(e.p);
    put(&e, buf, 1);
    put_le(&e, (uint64_t)r.status, 4);
    put_le(&e, (uint64_t)r.sig, 4);
    put_bytes(&e, buf, len, r.out);
    put_bytes(&e, buf, len, r.err);
    REQUIRE(e.len == len && memcmp(e.p, buf, len) == 0);
    free(e.p);
}

static void try_hit(const unsigned char *buf, size_t len) {
    struct memo m;
    struct memo_bytes memo, files[MEMO_MAX_OUTPUTS];
    if (reply_parse_hit(buf, len, &m, &memo, files) != 0) return;
    inside(buf, len, memo.p, memo.len);
    for (uint32_t i = 0; i < m.noutputs; i++) {
        inside(buf, len, files[i].p, files[i].len);
        char hex[DIGEST_HEX_LEN + 1];
        digest128_bytes_hex(files[i].p, files[i].len, hex);
        REQUIRE(files[i].len == m.outputs[i].size && memcmp(hex, m.outputs[i].digest, DIGEST_HEX_LEN) == 0);
    }
    memo_free(&m);
}

/* 'M' or 'S', with and without the options byte: what parses lies inside the input, re-encodes
 * to it, holds no NUL in its strings and names absolute paths. */
static void try_compile(const unsigned char *buf, size_t len) {
    for (int with_options = 0; with_options <= 1; with_options++) {
        struct reply_compile c;
        if (reply_parse_compile(buf, len, with_options, &c) != 0) continue;
        REQUIRE(c.type == buf[0] && (with_options || c.options == 0));
        struct enc e = {malloc(len), 0, len};
        REQUIRE(e.p);
        put(&e, buf, 1);
        if (with_options) {
            unsigned char o = (unsigned char)c.options;
            put(&e, &o, 1);
        }
        if (c.redirect) {
            put_le(&e, c.index, 4);
            put_bytes(&e, buf, len, c.arg);
            put_bytes(&e, buf, len, c.temp);
            put_bytes(&e, buf, len, c.output);
            REQUIRE(!memchr(c.arg.p, 0, c.arg.len) && c.temp.p[0] == '/' && c.output.p[0] == '/');
        }
        inside(buf, len, c.memo.p, c.memo.len);
        REQUIRE(c.type == LTOC_FRAME_STORE_YOURSELF ? c.memo.len > 0 : c.memo.len == 0);
        put(&e, c.memo.p, c.memo.len);
        REQUIRE(e.len == len && memcmp(e.p, buf, len) == 0);
        free(e.p);
    }
}

/* A 'P' taken for the unknown-flag refusal is exactly one: its length field covers the rest. */
static void try_refusal(const unsigned char *buf, size_t len) {
    static const char reason[] = "malformed request: unknown flag bits";
    if (!reply_is_unknown_flag_refusal(buf, len)) return;
    REQUIRE(len >= 5 + sizeof reason - 1 && memcmp(buf + 5, reason, sizeof reason - 1) == 0);
    REQUIRE(((uint32_t)buf[1] | (uint32_t)buf[2] << 8 | (uint32_t)buf[3] << 16 | (uint32_t)buf[4] << 24) == len - 5);
}

/* The blob `digest` of `size` bytes, looked up in the pack made of buf[0..len); when found, its
 * range lies after the indexes and inside the input, and copying it hashes its bytes there. */
static void pack_blob(const struct team_pack *p, const unsigned char *buf, size_t len,
                      const char *digest, uint64_t size, unsigned char *chunk) {
    uint64_t at = 0;
    if (pack_find_blob(p, digest, size, &at) != 0) return;
    REQUIRE(at >= p->index_end && at <= len && size <= len - at);
    char hex[DIGEST_HEX_LEN + 1], want[DIGEST_HEX_LEN + 1];
    uint64_t total = 0;
    REQUIRE(copy_hashing(p->fd, (int64_t)at, -1, chunk, size, hex, &total) == 0);
    digest128_bytes_hex(buf + at, (size_t)size, want);
    REQUIRE(total == size && memcmp(hex, want, DIGEST_HEX_LEN) == 0);
}

/* The memo of `lookup`: when found, its record (the lookup, then the memo) lies inside the input
 * after the indexes; a memo that parses has its outputs' blobs looked up. */
static void pack_memo(const struct team_pack *p, const unsigned char *buf, size_t len,
                      const char *lookup, unsigned char *chunk) {
    size_t n = 0;
    unsigned char *m = pack_read_memo(p, lookup, &n);
    if (!m) return;
    REQUIRE(n >= 1 && n <= MEMO_MAX_BYTES && n <= len - p->index_end);
    int inside_input = 0;
    for (size_t at = (size_t)p->index_end; !inside_input && at + DIGEST_HEX_LEN + n <= len; at++)
        inside_input = memcmp(buf + at, lookup, DIGEST_HEX_LEN) == 0 &&
                       memcmp(buf + at + DIGEST_HEX_LEN, m, n) == 0;
    REQUIRE(inside_input);
    struct memo memo;
    if (memo_parse(m, n, &memo) == 0) {
        for (uint32_t i = 0; i < memo.noutputs; i++)
            pack_blob(p, buf, len, memo.outputs[i].digest, memo.outputs[i].size, chunk);
        memo_free(&memo);
    }
    free(m);
}

static void try_pack(const unsigned char *buf, size_t len) {
    static unsigned char *chunk;
    if (!chunk) REQUIRE((chunk = malloc(COPY_CHUNK)) != NULL);
    int fd = memfd_create("team.pack", MFD_CLOEXEC);
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, buf, len) == (ssize_t)len && fchmod(fd, 0600) == 0);
    struct team_pack p;
    if (pack_open_fd(fd, &p) != 0) return;
    REQUIRE(p.index_end <= len && p.size == len);
    static const char absent[] = "0123456789abcdef0123456789abcdef";
    pack_memo(&p, buf, len, absent, chunk);
    pack_blob(&p, buf, len, absent, 0, chunk);
    uint64_t blobs = 16 + 44 * (uint64_t)p.nmemos;
    uint32_t picks[3] = {0, p.nmemos / 2, p.nmemos - 1};
    for (int k = 0; k < 3 && p.nmemos; k++)
        pack_memo(&p, buf, len, (const char *)buf + 16 + 44 * (uint64_t)picks[k], chunk);
    uint32_t bpicks[3] = {0, p.nblobs / 2, p.nblobs - 1};
    for (int k = 0; k < 3 && p.nblobs; k++) {
        const unsigned char *e = buf + blobs + 48 * (uint64_t)bpicks[k];
        struct rd r = {e, 48, 40, 0};
        pack_blob(&p, buf, len, (const char *)e, rd_u64(&r), chunk);
    }
    pack_close(&p);
}

static void try_parse(const unsigned char *buf, size_t len) {
    if (len >= MEMO_MAGIC_LEN && memcmp(buf, DIST_MEMO_MAGIC, MEMO_MAGIC_LEN) == 0)
        try_dist(buf, len);
    else if (len >= MEMO_MAGIC_LEN && memcmp(buf, TEAM_PACK_MAGIC, MEMO_MAGIC_LEN) == 0)
        try_pack(buf, len);
    else if (len && buf[0] == LTOC_FRAME_RESULT)
        try_result(buf, len);
    else if (len && buf[0] == LTOC_FRAME_HIT_STORE)
        try_hit(buf + 1, len - 1);
    else if (len && (buf[0] == LTOC_FRAME_COMPILE_YOURSELF || buf[0] == LTOC_FRAME_STORE_YOURSELF))
        try_compile(buf, len);
    else if (len && buf[0] == LTOC_FRAME_PASSTHROUGH)
        try_refusal(buf, len);
    else
        try_memo(buf, len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* Exact-size heap copies, so that any read past the end is an ASan report. */
    unsigned char *whole = malloc(size ? size : 1);
    if (!whole) return 0;
    if (size) memcpy(whole, data, size);
    try_parse(whole, size);
    free(whole);

    if (size > MEMO_MAX_BYTES - DIGEST_HEX_LEN) return 0;
    unsigned char *t = malloc(size + DIGEST_HEX_LEN);
    if (!t) return 0;
    if (size) memcpy(t, data, size);
    char trailer[DIGEST_HEX_LEN + 1];
    digest128_bytes_hex(t, size, trailer);
    memcpy(t + size, trailer, DIGEST_HEX_LEN);
    try_parse(t, size + DIGEST_HEX_LEN);
    free(t);
    return 0;
}
