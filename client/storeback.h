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

#include "memo.h"

struct stored_outputs {
    uint32_t n;
    char digest[MEMO_MAX_OUTPUTS][DIGEST_HEX_LEN + 1];
    uint64_t size[MEMO_MAX_OUTPUTS];
    int memo_written;  /* 0: the blobs are stored, the memo is left to the daemon */
};

/* tmpl[0..len) is the memo of the 'S' frame; it is modified in place (digests, sizes, trailer).
 * Returns 0 when every output is stored as a blob under cache_dir (then *out is filled), or -1
 * when nothing may be reported as stored: the template does not parse, has stdout or stderr, a
 * check fails, an output is not a non-empty regular file, or any write fails. Blobs written
 * before a failure are whole and content-addressed (the daemon sweeps unreferenced ones). */
int store_outputs(const char *cache_dir, const char *lookup, unsigned char *tmpl, size_t len,
                  struct stored_outputs *out);

#endif
