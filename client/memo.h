/*
 * The memo fast path of the native client (docs/memo.md): serve a backend job from a memo the
 * daemon wrote, without connecting to the daemon, or decline so the caller takes the daemon path.
 */
#ifndef LTOCACHE_MEMO_H
#define LTOCACHE_MEMO_H

#include <stddef.h>
#include <stdint.h>

#include "limits.h"
#include "xxh64.h"

/* From the generated limits.h (src/protocol/limits.ts), shared with src/memo/memoFormat.ts. */
#define MEMO_MAX_CHECKS LTOC_MEMO_MAX_CHECKS
#define MEMO_MAX_OUTPUTS LTOC_MEMO_MAX_OUTPUTS
#define MEMO_MAX_BYTES LTOC_MEMO_MAX_BYTES
#define MEMO_MAX_NAME LTOC_MEMO_MAX_NAME
#define MEMO_MAX_STREAM LTOC_MAX_OUTPUT_STREAM
#define MEMO_MAGIC "LTOMEMO\x01"
#define MEMO_MAGIC_LEN 8u

enum memo_kind {
    MEMO_STAT = 1,
    MEMO_CONTENT = 2,
    MEMO_ABSENT = 3,
    MEMO_NOTREG = 4,
    MEMO_DIR = 5,
    MEMO_ENV = 6,
};

/* A byte range inside the parsed buffer; not NUL-terminated. */
struct memo_bytes {
    const unsigned char *p;
    uint32_t len;
};

struct memo_check {
    unsigned kind;
    struct memo_bytes name;    /* a path, or the variable name for MEMO_ENV */
    uint64_t dev, ino, size, mtime_ns, ctime_ns;  /* the fields the kind has */
    const char *digest;        /* MEMO_CONTENT: 32 lowercase hex digits inside the buffer */
    int env_set;               /* MEMO_ENV */
    struct memo_bytes value;   /* MEMO_ENV */
};

struct memo_output {
    struct memo_bytes path;
    const char *digest;        /* 32 lowercase hex digits inside the buffer */
    uint64_t size;
};

/* Every pointer refers into the buffer given to memo_parse, which must outlive the memo. */
struct memo {
    const char *key;           /* 32 lowercase hex digits */
    uint32_t nchecks;
    struct memo_check *checks; /* malloc'd; memo_free releases it */
    uint32_t noutputs;
    struct memo_output outputs[MEMO_MAX_OUTPUTS];
    struct memo_bytes out, err;
};

/* Parses a whole memo file of format v1, trailer included. Pure (no I/O), reads only
 * buf[0..len). Returns 0 (then memo_free the result) or -1 (nothing to free) for anything that
 * is not exactly a valid memo within every limit. */
int memo_parse(const unsigned char *buf, size_t len, struct memo *out);
void memo_free(struct memo *m);

/* The memo's name: digest of "ltocache-memo-v1" NUL compiler NUL cwd NUL arg NUL ... */
void memo_lookup_digest(const char *compiler_abs, const char *cwd, int argc, char **argv,
                        char out[DIGEST_HEX_LEN + 1]);

/* Content digest of the file at path, streamed. Returns 0, or -1 if it cannot be read. */
int memo_file_digest(const char *path, char out[DIGEST_HEX_LEN + 1], uint64_t *size);

/* Serves the job (compiler_abs, cwd, the argc arguments after the compiler) from its memo under
 * cache_dir and exits 0 (1 if replaying its stdout/stderr failed). Returns -1 whenever it does
 * not serve (no memo, any doubt, LTOCACHE_MEMO=0); the caller must then run the job another way.
 * Outputs are replaced only after all of them are verified; if a rename fails part-way the
 * caller's compiler run rewrites them all.
 * Test hook: LTOCACHE_PRINT_LOOKUP=1 prints the lookup digest and exits 0. */
int memo_serve(const char *cache_dir, const char *compiler_abs, const char *cwd, int argc,
               char **argv);
/* memo_serve without the hit notice: for a hit the daemon has counted already ('H'). */
int memo_serve_counted(const char *cache_dir, const char *compiler_abs, const char *cwd, int argc,
                       char **argv);

/* Test hook: with LTOCACHE_PRINT_DIGEST=<file> set, prints that file's content digest and exits
 * 0 (1 if it cannot be read); otherwise returns. */
void memo_print_digest_hook(void);

#endif
