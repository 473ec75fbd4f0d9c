/*
 * The daemon's replies as the client decodes them (docs/protocol.md): pure functions, no I/O,
 * fuzzed with the memo parsers (client/fuzz/memo_fuzz.c).
 */
#ifndef LTOCACHE_REPLY_H
#define LTOCACHE_REPLY_H

#include <stddef.h>
#include <stdint.h>

#include "memo.h"

struct reply_result {
    int status, sig;
    struct memo_bytes out, err;  /* inside the payload */
};

/* An 'R' payload p[0..n) (type byte included): 0 with *r, or -1 for anything that is not exactly
 * an 'R' (status in 0..255, signal in 0..MAX_SIGNAL, both streams inside, nothing after). */
int reply_parse_result(const unsigned char *p, size_t n, struct reply_result *r);

/* An 'H' payload after its type byte, p[0..n): u32 memo length, the memo, then for each of its
 * outputs u32 length and bytes, nothing after. 0 when the memo parses (into *m: memo_free it; its
 * bytes are *memo) and each output's bytes (files[i]) have the memo's size (not 0) and digest;
 * -1 otherwise (nothing to free). */
int reply_parse_hit(const unsigned char *p, size_t n, struct memo *m, struct memo_bytes *memo,
                    struct memo_bytes files[MEMO_MAX_OUTPUTS]);

/* An 'M' or 'S' payload p[0..n) (type byte included), decoded by the layout the client asked for
 * (`with_options`: it set FLAG_COMPILE_OPTIONS): the options byte (no unknown bit), then, if it
 * holds COMPILE_OPTION_REDIRECT, the output redirect (u32 index, str arg, str temp, str output:
 * no NUL byte in any, temp and output absolute); after 'M' nothing, after 'S' the memo (not
 * empty, not parsed here). 0 with *c (its bytes inside the payload), or -1. */
struct reply_compile {
    unsigned type, options;
    int redirect;
    uint32_t index;
    struct memo_bytes arg, temp, output, memo;
};
int reply_parse_compile(const unsigned char *p, size_t n, int with_options,
                        struct reply_compile *c);

/* Whether p[0..n) (type byte included; NULL: no) is a 'P' whose reason says the daemon does not
 * know a flag bit the request set (docs/protocol.md). */
int reply_is_unknown_flag_refusal(const unsigned char *p, size_t n);

#endif
