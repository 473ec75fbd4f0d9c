/*
 * Team pack reader (cache-schema/teampack.v1.md). One pread per index probe: a pack indexes up to
 * 20,000 memos and 320,000 blobs, and a job needs one memo and a few blobs of them.
 */
#include "pack.h"

#include "memo.h"
#include "memo_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEADER_BYTES 16u
#define MEMO_ENTRY_BYTES 44u
#define BLOB_ENTRY_BYTES 48u

/* Reads exactly n bytes at `at`; 0, or -1 on an error or a short file. */
static int pread_full(int fd, void *buf, size_t n, uint64_t at) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, (unsigned char *)buf + got, n - got, (off_t)(at + got));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

int pack_open_fd(int fd, struct team_pack *p) {
    memset(p, 0, sizeof *p);
    p->fd = -1;
    struct stat st;
    unsigned char head[HEADER_BYTES];
    if (fd < 0) return -1;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != getuid() ||
        (st.st_mode & 022) != 0 || pread_full(fd, head, sizeof head, 0) != 0 ||
        memcmp(head, TEAM_PACK_MAGIC, MEMO_MAGIC_LEN) != 0) {
        close(fd);
        return -1;
    }
    struct rd r = {head, sizeof head, MEMO_MAGIC_LEN, 0};
    uint32_t nmemos = rd_u32(&r), nblobs = rd_u32(&r);
    uint64_t end = HEADER_BYTES + (uint64_t)MEMO_ENTRY_BYTES * nmemos +
                   (uint64_t)BLOB_ENTRY_BYTES * nblobs;  /* < 2^40: no overflow */
    if (nmemos > TEAM_PACK_MAX_MEMOS || nblobs > TEAM_PACK_MAX_BLOBS ||
        end > (uint64_t)st.st_size) {
        close(fd);
        return -1;
    }
    *p = (struct team_pack){fd, (uint64_t)st.st_size, nmemos, nblobs, end};
    return 0;
}

int pack_open(int memo_dir, struct team_pack *p) {
    return pack_open_fd(openat(memo_dir, TEAM_PACK_NAME,
                               O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK),
                        p);
}

void pack_close(struct team_pack *p) {
    if (p->fd >= 0) close(p->fd);
    p->fd = -1;
}

/* Binary search of the index of n entries of `width` bytes at `base` for the one whose first 32
 * bytes are `hex`; 0 with that entry in rec, or -1. An index out of order can only hide entries. */
static int search(const struct team_pack *p, uint64_t base, uint32_t n, size_t width,
                  const char *hex, unsigned char *rec) {
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (pread_full(p->fd, rec, width, base + (uint64_t)width * mid) != 0) return -1;
        int c = memcmp(rec, hex, DIGEST_HEX_LEN);
        if (c == 0) return 0;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

/* Whether [offset, offset + length) lies after the indexes and inside the file. */
static int in_data(const struct team_pack *p, uint64_t offset, uint64_t length) {
    return offset >= p->index_end && offset <= p->size && length <= p->size - offset;
}

unsigned char *pack_read_memo(const struct team_pack *p, const char *lookup, size_t *len) {
    unsigned char rec[MEMO_ENTRY_BYTES];
    if (p->fd < 0 || search(p, HEADER_BYTES, p->nmemos, sizeof rec, lookup, rec) != 0) return NULL;
    struct rd r = {rec, sizeof rec, DIGEST_HEX_LEN, 0};
    uint64_t offset = rd_u64(&r);
    uint32_t length = rd_u32(&r);
    if (length <= DIGEST_HEX_LEN || length - DIGEST_HEX_LEN > MEMO_MAX_BYTES ||
        !in_data(p, offset, length))
        return NULL;
    char prefix[DIGEST_HEX_LEN];
    size_t n = length - DIGEST_HEX_LEN;
    unsigned char *buf = malloc(n);
    if (!buf || pread_full(p->fd, prefix, sizeof prefix, offset) != 0 ||
        memcmp(prefix, lookup, DIGEST_HEX_LEN) != 0 ||
        pread_full(p->fd, buf, n, offset + DIGEST_HEX_LEN) != 0) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

int pack_find_blob(const struct team_pack *p, const char *digest, uint64_t size,
                   uint64_t *offset) {
    unsigned char rec[BLOB_ENTRY_BYTES];
    uint64_t base = HEADER_BYTES + (uint64_t)MEMO_ENTRY_BYTES * p->nmemos;
    if (p->fd < 0 || search(p, base, p->nblobs, sizeof rec, digest, rec) != 0) return -1;
    struct rd r = {rec, sizeof rec, DIGEST_HEX_LEN, 0};
    uint64_t at = rd_u64(&r), n = rd_u64(&r);
    if (n != size || !in_data(p, at, n)) return -1;
    *offset = at;
    return 0;
}
