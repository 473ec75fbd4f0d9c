/*
 * Store-back of a miss compiled by the client (storeback.h). Every failure returns -1 and the
 * caller reports the run with 'D', so the daemon reads the outputs itself.
 */
#include "storeback.h"

#include "io.h"
#include "memo_internal.h"
#include "reply.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Renames the temp blob `tmp` (whole, digest `hex`) to its blob name, making the shard directory
 * if it is missing. Unlinks the temp on failure. */
static int place_blob(const char *cache_dir, const char *tmp, const char *hex) {
    char *shard = fmt("%s/store/v1/blobs/%.2s", cache_dir, hex);
    char *blob = shard ? fmt("%s/%.30s", shard, hex + 2) : NULL;
    int ok = blob != NULL;
    if (ok && rename(tmp, blob) != 0)
        ok = errno == ENOENT && (mkdir(shard, 0700) == 0 || errno == EEXIST) &&
             rename(tmp, blob) == 0;
    if (!ok) unlink(tmp);
    free(shard);
    free(blob);
    return ok ? 0 : -1;
}

/* Creates the store's temp file for this process's blob number i (private, O_EXCL; the daemon
 * empties tmp/ when it opens the store). Returns the fd with *tmp its malloc'd path, or -1. */
static int open_blob_temp(const char *cache_dir, unsigned i, char **tmp) {
    *tmp = fmt("%s/store/v1/tmp/client-%ld-%u", cache_dir, (long)getpid(), i);
    return *tmp ? open(*tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600) : -1;
}

static int same_file(const struct stat *a, const struct stat *b) {
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           memo_ns(a->st_mtim) == memo_ns(b->st_mtim) && memo_ns(a->st_ctim) == memo_ns(b->st_ctim);
}

/* Copies the output o (read from `from` if not NULL: a redirected object) into the store's tmp/,
 * hashing while copying, then renames it to its blob name (an existing blob of that name has the
 * same bytes). An output read at its own name that changed after `ended`, or one that changed
 * while copied, is another process's write: refused. */
static int store_blob(const char *cache_dir, const struct memo_output *o, unsigned i,
                      const char *from, const struct timespec *ended, unsigned char *chunk,
                      char hex[DIGEST_HEX_LEN + 1], uint64_t *size) {
    char *path = from ? strdup(from) : memo_name(o->path, NULL);
    int in = path && path[0] == '/' ? open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
                                    : -1;
    free(path);
    struct stat st, now;
    if (in < 0 || fstat(in, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 ||
        (!from && memo_ns(st.st_ctim) > memo_ns(*ended))) {
        if (in >= 0) close(in);
        return -1;
    }
    char *tmp = NULL;
    int out = open_blob_temp(cache_dir, i, &tmp);
    if (out < 0) {
        close(in);
        free(tmp);
        return -1;
    }
    uint64_t total = 0;
    int ok = copy_hashing(in, -1, out, chunk, UINT64_MAX, hex, &total) == 0 &&
             fstat(in, &now) == 0 && same_file(&st, &now) && total == (uint64_t)st.st_size;
    close(in);
    if (close(out) != 0) ok = 0;
    *size = total;
    if (!ok || total == 0) unlink(tmp);
    else ok = place_blob(cache_dir, tmp, hex) == 0;
    free(tmp);
    return ok && total > 0 ? 0 : -1;
}

/* Writes the memo atomically as memo/<lookup[0..2]>/<lookup[2..]>, private like the daemon's. */
static int write_memo(const char *cache_dir, const char *lookup, const unsigned char *b,
                      size_t len) {
    char *dir = fmt("%s/memo", cache_dir);
    int made = dir && (mkdir(dir, 0700) == 0 || errno == EEXIST);
    free(dir);
    int memo_dir = made ? open_memo_dir(cache_dir) : -1;
    if (memo_dir < 0) return -1;
    char shard_name[3] = {lookup[0], lookup[1], 0};
    int shard = mkdirat(memo_dir, shard_name, 0700) == 0 || errno == EEXIST
                    ? open_private_dir(memo_dir, shard_name)
                    : -1;
    close(memo_dir);
    if (shard < 0) return -1;
    char *tmp = fmt("%s.tmp-c%ld", lookup + 2, (long)getpid());
    int fd = tmp ? openat(shard, tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600) : -1;
    int ok = fd >= 0 && fchmod(fd, 0600) == 0 && write_all(fd, b, len, 0) == 0;
    if (fd >= 0 && close(fd) != 0) ok = 0;
    if (fd >= 0 && (!ok || renameat(shard, tmp, shard, lookup + 2) != 0)) {
        unlinkat(shard, tmp, 0);
        ok = 0;
    }
    free(tmp);
    close(shard);
    return ok ? 0 : -1;
}

int place_redirected(const char *temp, const char *output) {
    struct stat st;
    if (stat(output, &st) == 0 && !S_ISREG(st.st_mode)) return -1;
    return rename(temp, output) == 0 ? 0 : -1;
}

void pinned_free(struct pinned *p) {
    free(p->stat);
    p->stat = NULL;
    p->n = 0;
}

int pin_content_files(const unsigned char *tmpl, size_t len, struct pinned *p) {
    struct memo m;
    p->n = 0;
    p->stat = NULL;
    if (memo_parse(tmpl, len, &m) != 0) return -1;
    int rc = 0;
    p->stat = calloc(m.nchecks ? m.nchecks : 1, sizeof *p->stat);
    if (!p->stat) rc = -1;
    for (uint32_t i = 0; rc == 0 && i < m.nchecks; i++) {
        if (m.checks[i].kind != MEMO_CONTENT) continue;
        char *path = memo_name(m.checks[i].name, NULL);
        struct stat st;
        if (!path || stat(path, &st) != 0 || !S_ISREG(st.st_mode) ||
            (st.st_mtim.tv_nsec == 0 && st.st_ctim.tv_nsec == 0))
            rc = -1;
        else
            p->stat[p->n++] = (struct memo_check){
                .kind = MEMO_STAT, .name = m.checks[i].name, .dev = (uint64_t)st.st_dev,
                .ino = (uint64_t)st.st_ino, .size = (uint64_t)st.st_size,
                .mtime_ns = memo_ns(st.st_mtim), .ctime_ns = memo_ns(st.st_ctim)};
        free(path);
    }
    memo_free(&m);
    if (rc != 0) pinned_free(p);
    return rc;
}

static void put_u64_le(unsigned char *p, uint64_t v) {
    for (int k = 0; k < 8; k++) p[k] = (unsigned char)(v >> (8 * k));
}

int store_outputs(const char *cache_dir, const char *lookup, unsigned char *tmpl, size_t len,
                  const struct pinned *pin, const struct written *w, struct stored_outputs *out) {
    struct memo m;
    if (memo_parse(tmpl, len, &m) != 0) return -1;
    int rc = -1;
    unsigned char *chunk = malloc(COPY_CHUNK);
    /* The identities last: a write while the content was hashed moves them too. */
    if (!chunk || m.out.len || m.err.len || (w->temp && m.noutputs != 1) ||
        memo_run_checks(m.checks, m.nchecks, NULL, chunk) != 0 ||
        memo_run_checks(pin->stat, pin->n, NULL, chunk) != 0)
        goto done;
    for (uint32_t i = 0; i < m.noutputs; i++) {
        if (store_blob(cache_dir, &m.outputs[i], i, w->temp, &w->ended, chunk, out->digest[i],
                       &out->size[i]) != 0)
            goto done;
        /* The digest and its u64 size sit side by side in the buffer (memo.v1.md). */
        unsigned char *at = tmpl + (m.outputs[i].digest - (const char *)tmpl);
        memcpy(at, out->digest[i], DIGEST_HEX_LEN);
        put_u64_le(at + DIGEST_HEX_LEN, out->size[i]);
    }
    out->n = m.noutputs;
    if (w->temp && place_redirected(w->temp, w->output) != 0) goto done;
    char trailer[DIGEST_HEX_LEN + 1];
    digest128_bytes_hex(tmpl, len - DIGEST_HEX_LEN, trailer);
    memcpy(tmpl + len - DIGEST_HEX_LEN, trailer, DIGEST_HEX_LEN);
    out->memo_written = write_memo(cache_dir, lookup, tmpl, len) == 0;
    rc = 0;
done:
    free(chunk);
    memo_free(&m);
    return rc;
}

int store_fetched(const char *cache_dir, const char *lookup, const unsigned char *p, size_t n,
                  struct stored_outputs *out) {
    struct memo m;
    struct memo_bytes memo, files[MEMO_MAX_OUTPUTS];
    if (reply_parse_hit(p, n, &m, &memo, files) != 0) return -1;
    int rc = -1;
    for (uint32_t i = 0; i < m.noutputs; i++) {
        char *tmp = NULL;
        int fd = open_blob_temp(cache_dir, i, &tmp);
        int ok = fd >= 0 && write_all(fd, files[i].p, files[i].len, 0) == 0;
        if (fd >= 0 && close(fd) != 0) ok = 0;
        if (fd >= 0 && !ok) unlink(tmp);
        ok = ok && place_blob(cache_dir, tmp, m.outputs[i].digest) == 0;
        free(tmp);
        if (!ok) goto done;
        memcpy(out->digest[i], m.outputs[i].digest, DIGEST_HEX_LEN);
        out->digest[i][DIGEST_HEX_LEN] = 0;
        out->size[i] = files[i].len;
    }
    out->n = m.noutputs;
    out->memo_written = write_memo(cache_dir, lookup, memo.p, memo.len) == 0;
    rc = 0;
done:
    memo_free(&m);
    return rc;
}
