/*
 * A miss the client stores itself (docs/protocol.md, "'S': store it yourself"): the daemon has
 * keyed the job and sent the memo it would write, with the outputs' digests and sizes left zero.
 * After a clean compile the client re-runs the memo's checks (the inputs did not change while the
 * compiler ran), copies each output into the local store as a content-addressed blob, fills in
 * the digests and sizes it computed, and writes the memo. The daemon decided what to check and
 * where it goes; this only copies bytes and reports what it hashed.
 */
#ifndef LTOCACHE_STOREBACK_H
#define LTOCACHE_STOREBACK_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "memo.h"

struct stored_outputs {
    uint32_t n;
    char digest[MEMO_MAX_OUTPUTS][DIGEST_HEX_LEN + 1];
    uint64_t size[MEMO_MAX_OUTPUTS];
    int memo_written;  /* 0: the blobs are stored, the memo is left to the daemon */
};

/* The stat identities of the files a template checks by content, taken before the compiler
 * starts. Content alone cannot show that clang read the key's bytes: lld rewrites an index in
 * place (truncate, then write), so a file read while empty may have its old bytes again by the
 * time the checks run. Any write after this look sets a later ctime, as a timestamp tick is
 * shorter than clang's start-up before it opens its inputs. */
struct pinned {
    uint32_t n;
    struct memo_check *stat;  /* MEMO_STAT checks; their names point into the template */
};

/* Fills *p for the template tmpl[0..len), which must outlive it: each file the template checks
 * by content, as a STAT check of how it is now (memo_run_checks then tells whether it moved).
 * Returns -1 (nothing to free) when the template does not parse, a file cannot be looked at, or
 * its timestamps are whole seconds (a file system too coarse for the proof above): then the run
 * is reported with 'D' and the daemon decides. */
int pin_content_files(const unsigned char *tmpl, size_t len, struct pinned *p);
void pinned_free(struct pinned *p);

/* Where the compiler wrote the object and when it ended (docs/store.md "Output races").
 * `temp` non-NULL: the object (the template's only output) was redirected to that private temp;
 * it is stored from there, then renamed onto `output`. Otherwise each output is read at its own
 * name, and refused if it changed while read or after `ended` (the compiler's exit). */
struct written {
    const char *temp, *output;
    struct timespec ended;
};

/* Renames a redirected object's temp onto the output. Refused (-1, the temp left) when the output
 * exists and is not a regular file (a named pipe, /dev/null through a link: clang writes into it
 * as it is, and a rename would replace it), or the rename fails. */
int place_redirected(const char *temp, const char *output);

/* tmpl[0..len) is the memo of the 'S' frame; it is modified in place (digests, sizes, trailer).
 * `pin` is what pin_content_files saw before the compile: a file whose identity moved since
 * fails like a check.
 * Returns 0 when every output is stored as a blob under cache_dir (then *out is filled; a
 * redirected object is renamed into place before the memo is written), or -1 when nothing may
 * be reported as stored: the template does not parse, has stdout or stderr, a check fails, an
 * output is not a non-empty regular file or was written by another process, the rename fails,
 * or any write fails. Blobs written before a failure are whole and content-addressed (the daemon
 * sweeps unreferenced ones). */
int store_outputs(const char *cache_dir, const char *lookup, unsigned char *tmpl, size_t len,
                  const struct pinned *pin, const struct written *w, struct stored_outputs *out);

/* After 'H' (a team-cache hit the daemon hands over): p[0..n) is u32 memo length, the memo (its
 * outputs' digests and sizes filled in), then for each output u32 length and its bytes. Each
 * output's bytes must have the memo's size and digest; they are stored as blobs, and the memo is
 * written. Returns 0 (then *out is filled), or -1 when the payload is not exactly that or a write
 * fails. The caller then serves the job from the memo like the fast path. */
int store_fetched(const char *cache_dir, const char *lookup, const unsigned char *p, size_t n,
                  struct stored_outputs *out);

#endif
