/*
 * The distribution memo fast path of the native client (cache-schema/distmemo.v1.md): serve a
 * whole DTLTO distribution (`ltocache distribute FILE.json`) from a memo the daemon wrote,
 * without connecting to the daemon, or decline so the caller takes the daemon path.
 */
#ifndef LTOCACHE_DISTMEMO_H
#define LTOCACHE_DISTMEMO_H

#include <stddef.h>
#include <stdint.h>

#include "memo.h"

#define DIST_MEMO_MAGIC "LTODIST\x01"
#define DIST_MEMO_MAX_JOBS LTOC_DIST_MEMO_MAX_JOBS
#define DIST_MEMO_MAX_CHECKS LTOC_DIST_MEMO_MAX_CHECKS
#define DIST_MEMO_MAX_FILE LTOC_DIST_MEMO_MAX_FILE
/* The longest token: 1 to 19 ASCII digits. */
#define DIST_TOKEN_MAX 19

struct dist_memo_job {
    const char *key;           /* 32 lowercase hex digits */
    const char *lookup;        /* 32 lowercase hex digits: the job's notice lookup */
    uint32_t first_output;     /* its outputs: dist_memo.outputs[first_output ..] */
    uint32_t noutputs;
    struct memo_bytes out, err;
};

/* Every pointer refers into the buffer given to dist_memo_parse, which must outlive the memo. */
struct dist_memo {
    uint32_t nchecks;
    struct memo_check *checks;   /* malloc'd */
    uint32_t njobs;
    struct dist_memo_job *jobs;  /* malloc'd */
    uint32_t noutputs;           /* all jobs' outputs, in job order */
    struct memo_output *outputs; /* malloc'd */
};

/* Parses a whole distribution memo file of format v1, trailer included. Pure (no I/O), reads
 * only buf[0..len). Returns 0 (then dist_memo_free the result) or -1 (nothing to free) for
 * anything that is not exactly a valid distribution memo within every limit. */
int dist_memo_parse(const unsigned char *buf, size_t len, struct dist_memo *out);
void dist_memo_free(struct dist_memo *m);

/* The token of a distribution file argument (lld's PID in `prog.<PID>.dist-file.json`): writes
 * its digits and a NUL into out and returns 1, or returns 0 (out = ""). */
int dist_token(const char *file_arg, char out[DIST_TOKEN_MAX + 1]);

/* Normalises buf[0..len) in place for the token (every `.T.` becomes `.\x01.`, left to right,
 * not overlapping); returns the new length. An empty token leaves it unchanged. */
size_t dist_normalize(unsigned char *buf, size_t len, const char *token);

/* Serves the distribution `file_arg` (as lld passed it, relative to cwd) from its memo under
 * cache_dir and exits 0 (1 if replaying a job's stdout/stderr failed). Returns -1 whenever it
 * does not serve (no memo, any doubt, LTOCACHE_MEMO=0); the caller then takes the daemon path.
 * Outputs are replaced only after all of them are verified; if a rename fails part-way the
 * daemon path rewrites them all.
 * Test hook: LTOCACHE_PRINT_LOOKUP=1 prints the lookup digest and exits 0. */
int dist_memo_serve(const char *cache_dir, const char *cwd, const char *file_arg);

#endif
