/*
 * Helpers shared by the job memo (memo.c) and the distribution memo (distmemo.c) fast paths.
 * Internal to the client: not part of memo.h's interface.
 */
#ifndef LTOCACHE_MEMO_INTERNAL_H
#define LTOCACHE_MEMO_INTERNAL_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "memo.h"
#include "pack.h"

#define COPY_CHUNK (1u << 20)

/* Bounds-checked reader: `at` never exceeds `len`; after any failed read `bad` latches and
 * every further read yields zeros. */
struct rd {
    const unsigned char *p;
    size_t len, at;
    int bad;
};

uint32_t rd_u32(struct rd *r);
uint64_t rd_u64(struct rd *r);
void rd_bytes(struct rd *r, uint32_t max, struct memo_bytes *out);
const char *rd_hex(struct rd *r);

/* For a memo file buf[0..len) with this magic: checks the size limit, the magic and the trailer
 * digest, and starts *r on the body after the magic. Returns 0, or -1. */
int rd_start(struct rd *r, const unsigned char *buf, size_t len, const char *magic);
/* Reads a check list of at most `max` checks (memo.v1.md) into a malloc'd array (free it even
 * when r->bad is set afterwards). Returns 0, or -1 (nothing allocated). */
int rd_checks(struct rd *r, uint32_t max, struct memo_check **checks, uint32_t *n);
/* Reads an output list into out[0..MEMO_MAX_OUTPUTS); returns its length (0 if r->bad). */
uint32_t rd_outputs(struct rd *r, struct memo_output *out);

/* The link's token for names (distmemo.v1.md): NULL for job memos, whose names are used as they
 * are; for distribution memos the token's digits, or "" when there is none (then a name holding
 * the placeholder byte 0x01 is refused). */
#define MEMO_TOKEN_BYTE 0x01
/* NUL-terminated copy of a name, each 0x01 replaced by the token (above); NULL if the name holds
 * a NUL byte, a 0x01 with an empty token, or memory runs out. */
char *memo_name(struct memo_bytes b, const char *token);

/* A timestamp in nanoseconds since the epoch, as memo checks hold them. */
uint64_t memo_ns(struct timespec t);

/* Runs every check; returns 0 when all pass. `chunk` is a COPY_CHUNK buffer. */
int memo_run_checks(const struct memo_check *c, uint32_t n, const char *token,
                    unsigned char *chunk);

/* A directory (not a symlink) owned by us with no group/other permission bits, opened; -1 with
 * errno ENOENT only when there is none. */
int open_private_dir(int at, const char *name);
/* `<cache_dir>/memo`, opened under the rules of open_private_dir; -1 if it does not qualify. */
int open_memo_dir(const char *cache_dir);
/* Reads exactly n bytes of fd into a malloc'd buffer; one byte more must read as EOF (the file
 * did not grow under us). NULL on any failure. */
unsigned char *read_exact(int fd, size_t n);
/* Reads the memo file named `lookup` under the open memo directory (docs/memo.md rules).
 * Returns a malloc'd buffer, or NULL; then *absent (if not NULL) says whether the reason was that
 * the file or its shard directory does not exist. */
unsigned char *read_memo(int memo_dir, const char *lookup, size_t *len, int *absent);

struct staged {
    char *path;  /* the output */
    char *temp;  /* created by us beside it; unlinked unless renamed */
};

/* Copies `in` to `out` (none if out < 0) through `chunk` (COPY_CHUNK bytes), hashing what it
 * reads: with at < 0 the rest of `in` from its position, failing once more than `limit` bytes
 * were read; with at >= 0 at most `limit` bytes from offset `at` (pread, to EOF if sooner).
 * Returns 0 with the content digest and the byte count, or -1 on a read or write error. */
int copy_hashing(int in, int64_t at, int out, unsigned char *chunk, uint64_t limit,
                 char hex[DIGEST_HEX_LEN + 1], uint64_t *total);

/* Copies the output's blob into a new temp file beside it (named with `n`, unique within this
 * process's run), verifying digest and size. The blob is the store's file, or, when the store has
 * none and `pack` is not NULL, the pack's copy. Fills s (s->temp only once the temp exists).
 * Returns 0, or -1. */
int stage_output(const char *cache_dir, const struct memo_output *o, const char *token,
                 const struct team_pack *pack, unsigned n, unsigned char *chunk,
                 struct staged *s);
/* Renames every temp over its output, in order. Returns 0, or -1 at the first failure; the
 * temps not renamed stay in s for unstage. */
int commit_staged(struct staged *s, size_t n);
/* Unlinks every temp left and frees s[0..n) (not s itself). */
void unstage(struct staged *s, size_t n);

/* Whether clang, given `output` as it is now, replaces it by a rename of its temp, as we do in
 * its stead: absent, or a regular file we may write. Clang refuses an existing output it may not
 * write (its error, status 1) and writes into one that is not a regular file (a FIFO, /dev/null
 * through a symlink) in place; a rename would replace either. */
int replaced_by_rename(const char *output);

/* Signals that end the client by default and that a build sends (Ctrl-C, a kill from make or a CI
 * runner, a file size limit reached while writing a temp): held from the first stage_output until
 * every temp is renamed or removed (then the old mask is restored), so that one ends the client
 * only once no temp of ours stands beside the outputs, as clang removes its own temp files when one
 * ends it. */
void hold_signals(sigset_t *old);

/* Appends text to memo/hits.log in one write (O_APPEND keeps concurrent notices whole). */
void append_notices(int memo_dir, const char *text, size_t len);
long long unix_ms(void);
char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));

#endif
