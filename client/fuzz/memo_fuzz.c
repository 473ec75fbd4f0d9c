/*
 * libFuzzer target for memo_parse (docs/memo.md, format v1). Each input is tried twice: as a
 * whole memo file, and as a memo body with its correct trailer appended, so that mutations reach
 * the structure parser instead of stopping at the trailer check. A memo that parses must
 * re-encode to exactly the bytes it came from, and every range it refers to must lie inside them.
 *
 * Build and run: client/fuzz/run.sh [seconds].
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../memo.h"

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

static void try_parse(const unsigned char *buf, size_t len) {
    struct memo m;
    if (memo_parse(buf, len, &m) != 0) return;
    REQUIRE(m.nchecks <= MEMO_MAX_CHECKS);
    REQUIRE(m.noutputs >= 1 && m.noutputs <= MEMO_MAX_OUTPUTS);
    REQUIRE(m.out.len <= MEMO_MAX_STREAM && m.err.len <= MEMO_MAX_STREAM);
    struct enc e = {malloc(len), 0, len};
    REQUIRE(e.p);
    put(&e, MEMO_MAGIC, MEMO_MAGIC_LEN);
    put_hex(&e, buf, len, m.key);
    put_le(&e, m.nchecks, 4);
    for (uint32_t i = 0; i < m.nchecks; i++) {
        const struct memo_check *c = &m.checks[i];
        REQUIRE(c->name.len <= MEMO_MAX_NAME);
        put_le(&e, c->kind, 1);
        put_bytes(&e, buf, len, c->name);
        switch (c->kind) {
        case MEMO_STAT:
            put_le(&e, c->dev, 8);
            put_le(&e, c->ino, 8);
            put_le(&e, c->size, 8);
            put_le(&e, c->mtime_ns, 8);
            put_le(&e, c->ctime_ns, 8);
            break;
        case MEMO_CONTENT:
            put_le(&e, c->size, 8);
            put_hex(&e, buf, len, c->digest);
            break;
        case MEMO_ABSENT:
        case MEMO_NOTREG:
            break;
        case MEMO_DIR:
            put_le(&e, c->dev, 8);
            put_le(&e, c->ino, 8);
            put_le(&e, c->mtime_ns, 8);
            put_le(&e, c->ctime_ns, 8);
            break;
        case MEMO_ENV:
            REQUIRE(c->env_set == 0 || c->env_set == 1);
            REQUIRE(c->value.len <= MEMO_MAX_NAME);
            put_le(&e, (uint64_t)c->env_set, 1);
            put_bytes(&e, buf, len, c->value);
            break;
        default:
            abort();
        }
    }
    put_le(&e, m.noutputs, 4);
    for (uint32_t i = 0; i < m.noutputs; i++) {
        REQUIRE(m.outputs[i].path.len <= MEMO_MAX_NAME);
        put_bytes(&e, buf, len, m.outputs[i].path);
        put_hex(&e, buf, len, m.outputs[i].digest);
        put_le(&e, m.outputs[i].size, 8);
    }
    put_bytes(&e, buf, len, m.out);
    put_bytes(&e, buf, len, m.err);
    char trailer[DIGEST_HEX_LEN + 1];
    digest128_bytes_hex(e.p, e.len, trailer);
    put(&e, trailer, DIGEST_HEX_LEN);
    REQUIRE(e.len == len && memcmp(e.p, buf, len) == 0);
    free(e.p);
    memo_free(&m);
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
