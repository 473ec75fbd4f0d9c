/*
 * The team pack (cache-schema/teampack.v1.md): many memos and their blobs in one file,
 * $LTOCACHE_DIR/memo/team.pack, consulted by the fast path when a job has no memo file. Reads
 * O(log n) index entries per lookup with pread; never maps or reads the whole file. Every
 * function refuses anything out of bounds or out of its limits, so a damaged pack can only make
 * the client fall back.
 */
#ifndef LTOCACHE_PACK_H
#define LTOCACHE_PACK_H

#include <stddef.h>
#include <stdint.h>

#include "limits.h"

#define TEAM_PACK_MAX_MEMOS LTOC_TEAM_PACK_MAX_MEMOS
#define TEAM_PACK_MAX_BLOBS LTOC_TEAM_PACK_MAX_BLOBS
#define TEAM_PACK_MAGIC "LTOPACK\x01"
#define TEAM_PACK_NAME "team.pack"

struct team_pack {
    int fd;              /* -1 when no pack is open */
    uint64_t size;       /* of the file when opened */
    uint32_t nmemos, nblobs;
    uint64_t index_end;  /* first byte after the blob index */
};

/* Opens memo/team.pack under the open memo directory: a regular file, ours, not group/other
 * writable, whose header is valid and whose indexes lie inside it. Returns 0, or -1 (p->fd is
 * then -1). */
int pack_open(int memo_dir, struct team_pack *p);
/* pack_open on a descriptor already open (takes it over: pack_close closes it, and so does a
 * failure). */
int pack_open_fd(int fd, struct team_pack *p);
void pack_close(struct team_pack *p);

/* The memo v1 file of `lookup` (32 hex digits) in a malloc'd buffer of *len bytes, once its
 * record's prefix names that lookup; NULL if the pack has none or its entry is out of bounds.
 * The memo itself is not parsed here. */
unsigned char *pack_read_memo(const struct team_pack *p, const char *lookup, size_t *len);
/* Where the blob `digest` (32 hex digits) of exactly `size` bytes lies in the pack: 0 with its
 * offset, or -1. Its content is not verified here (the caller hashes it while copying). */
int pack_find_blob(const struct team_pack *p, const char *digest, uint64_t size, uint64_t *offset);

#endif
