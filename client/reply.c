/* Decoding of the daemon's replies (reply.h). */
#include "reply.h"

#include <string.h>

#include "limits.h"

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int reply_parse_result(const unsigned char *p, size_t n, struct reply_result *r) {
    if (n < LTOC_RESULT_OVERHEAD || p[0] != LTOC_FRAME_RESULT) return -1;
    int32_t st = (int32_t)le32(p + 1), sg = (int32_t)le32(p + 5);
    if (st < 0 || st > 255 || sg < 0 || sg > (int32_t)LTOC_MAX_SIGNAL) return -1;
    size_t at = 9;
    uint32_t out_len = le32(p + at);
    at += 4;
    if (out_len > n - at || n - at - out_len < 4) return -1;
    r->out.p = p + at;
    r->out.len = out_len;
    at += out_len;
    uint32_t err_len = le32(p + at);
    at += 4;
    if (err_len != n - at) return -1;  /* exact: no trailing bytes */
    r->err.p = p + at;
    r->err.len = err_len;
    r->status = st;
    r->sig = sg;
    return 0;
}

int reply_parse_hit(const unsigned char *p, size_t n, struct memo *m, struct memo_bytes *memo,
                    struct memo_bytes files[MEMO_MAX_OUTPUTS]) {
    if (n < 4 || le32(p) > n - 4) return -1;
    memo->p = p + 4;
    memo->len = le32(p);
    if (memo_parse(memo->p, memo->len, m) != 0) return -1;
    size_t at = 4 + (size_t)memo->len;
    for (uint32_t i = 0; i < m->noutputs; i++) {
        if (n - at < 4) goto bad;
        uint32_t len = le32(p + at);
        at += 4;
        if (len > n - at || len != m->outputs[i].size || len == 0) goto bad;
        char hex[DIGEST_HEX_LEN + 1];
        digest128_bytes_hex(p + at, len, hex);
        if (memcmp(hex, m->outputs[i].digest, DIGEST_HEX_LEN) != 0) goto bad;
        files[i].p = p + at;
        files[i].len = len;
        at += len;
    }
    if (at == n) return 0;
bad:
    memo_free(m);
    return -1;
}

/* A str (u32 length, bytes) at *at that holds no NUL byte. */
static int take_str(const unsigned char *p, size_t n, size_t *at, struct memo_bytes *b) {
    if (n - *at < 4 || le32(p + *at) > n - *at - 4) return -1;
    b->len = le32(p + *at);
    b->p = p + *at + 4;
    *at += 4 + (size_t)b->len;
    return b->len && memchr(b->p, 0, b->len) ? -1 : 0;
}

int reply_parse_compile(const unsigned char *p, size_t n, int with_options,
                        struct reply_compile *c) {
    memset(c, 0, sizeof *c);
    if (n < 1 || (p[0] != LTOC_FRAME_COMPILE_YOURSELF && p[0] != LTOC_FRAME_STORE_YOURSELF))
        return -1;
    c->type = p[0];
    size_t at = 1;
    if (with_options) {
        if (n < 2 || (p[1] & ~(LTOC_COMPILE_OPTION_COLOUR | LTOC_COMPILE_OPTION_REDIRECT))) return -1;
        c->options = p[1];
        at = 2;
    }
    if (c->options & LTOC_COMPILE_OPTION_REDIRECT) {
        if (n - at < 4) return -1;
        c->redirect = 1;
        c->index = le32(p + at);
        at += 4;
        if (take_str(p, n, &at, &c->arg) || take_str(p, n, &at, &c->temp) ||
            take_str(p, n, &at, &c->output) || !c->temp.len || c->temp.p[0] != '/' ||
            !c->output.len || c->output.p[0] != '/')
            return -1;
    }
    c->memo.p = p + at;
    c->memo.len = (uint32_t)(n - at);
    return c->type == LTOC_FRAME_COMPILE_YOURSELF ? (c->memo.len == 0 ? 0 : -1)
                                                  : (c->memo.len > 0 ? 0 : -1);
}

int reply_is_unknown_flag_refusal(const unsigned char *p, size_t n) {
    static const char reason[] = "malformed request: unknown flag bits";
    size_t k = sizeof reason - 1;
    return p && n >= 5 + k && p[0] == LTOC_FRAME_PASSTHROUGH && le32(p + 1) == n - 5 &&
           memcmp(p + 5, reason, k) == 0;
}
