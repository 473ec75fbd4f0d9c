/*
 * Distribution memo fast path (cache-schema/distmemo.v1.md). Like the job memo (memo.c, whose
 * helpers it shares through memo_internal.h), every failure returns to the caller, which takes
 * the daemon path; nothing here may leave a partial or unverified output in place. It parses no
 * JSON: the distribution file is only read, normalised for the link's token and digested.
 */
#include "distmemo.h"

#include "io.h"
#include "memo_internal.h"
#include "verifyconf.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DIST_SUFFIX ".dist-file.json"

/* Smallest encoding of one job: key, lookup, one output (empty path, digest, size), two empty
 * streams; to refuse job counts the buffer cannot hold before allocating for them. */
#define MIN_JOB_BYTES (2u * DIGEST_HEX_LEN + 4u + (4u + DIGEST_HEX_LEN + 8u) + 4u + 4u)

/* ---------------------------------------------------------------------------------------- */
/* Parser                                                                                    */

/* Room for one more job's outputs in m->outputs. Returns 0, or -1 if memory runs out. */
static int reserve_outputs(struct dist_memo *m, uint32_t *cap) {
    if (*cap - m->noutputs >= MEMO_MAX_OUTPUTS) return 0;
    uint32_t n = *cap ? *cap * 2 : 4 * MEMO_MAX_OUTPUTS;
    struct memo_output *p = realloc(m->outputs, (size_t)n * sizeof *p);
    if (!p) return -1;
    m->outputs = p;
    *cap = n;
    return 0;
}

int dist_memo_parse(const unsigned char *buf, size_t len, struct dist_memo *m) {
    memset(m, 0, sizeof *m);
    struct rd r;
    if (rd_start(&r, buf, len, DIST_MEMO_MAGIC) != 0) return -1;
    if (rd_checks(&r, DIST_MEMO_MAX_CHECKS, &m->checks, &m->nchecks) != 0) return -1;
    uint32_t n = rd_u32(&r), cap = 0;
    if (r.bad || n < 1 || n > DIST_MEMO_MAX_JOBS || (size_t)n > (r.len - r.at) / MIN_JOB_BYTES)
        goto fail;
    m->jobs = calloc(n, sizeof *m->jobs);
    if (!m->jobs) goto fail;
    m->njobs = n;
    for (uint32_t i = 0; i < n && !r.bad; i++) {
        struct dist_memo_job *j = &m->jobs[i];
        j->key = rd_hex(&r);
        j->lookup = rd_hex(&r);
        if (reserve_outputs(m, &cap) != 0) goto fail;
        j->first_output = m->noutputs;
        j->noutputs = rd_outputs(&r, m->outputs + m->noutputs);
        m->noutputs += j->noutputs;
        rd_bytes(&r, MEMO_MAX_STREAM, &j->out);
        rd_bytes(&r, MEMO_MAX_STREAM, &j->err);
    }
    if (r.bad || r.at != r.len) goto fail;
    return 0;
fail:
    dist_memo_free(m);
    return -1;
}

void dist_memo_free(struct dist_memo *m) {
    free(m->checks);
    free(m->jobs);
    free(m->outputs);
    memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------------------------------- */
/* Token, normalisation, lookup                                                              */

int dist_token(const char *file_arg, char out[DIST_TOKEN_MAX + 1]) {
    out[0] = '\0';
    const char *slash = strrchr(file_arg, '/');
    const char *base = slash ? slash + 1 : file_arg;
    size_t n = strlen(base), sl = sizeof DIST_SUFFIX - 1;
    if (n < sl || memcmp(base + n - sl, DIST_SUFFIX, sl) != 0) return 0;
    n -= sl;  /* base[0..n) must be "<at least one byte>.<1 to 19 digits>" */
    size_t d = 0;
    while (d < n && base[n - 1 - d] >= '0' && base[n - 1 - d] <= '9') d++;
    if (d < 1 || d > DIST_TOKEN_MAX || n < d + 2 || base[n - 1 - d] != '.') return 0;
    memcpy(out, base + n - d, d);
    out[d] = '\0';
    return 1;
}

size_t dist_normalize(unsigned char *buf, size_t len, const char *token) {
    size_t tl = strlen(token), w = 0, i = 0;
    if (!tl) return len;
    while (i < len) {
        if (buf[i] == '.' && len - i >= tl + 2 && memcmp(buf + i + 1, token, tl) == 0 &&
            buf[i + 1 + tl] == '.') {
            buf[w++] = '.';
            buf[w++] = MEMO_TOKEN_BYTE;
            buf[w++] = '.';
            i += tl + 2;
        } else {
            buf[w++] = buf[i++];
        }
    }
    return w;
}

/* The distribution file, whole (a regular file of at most DIST_MEMO_MAX_FILE bytes), or NULL. */
static unsigned char *read_dist_file(const char *path, size_t *len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return NULL;
    struct stat st;
    unsigned char *buf = NULL;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size >= 0 &&
        (uint64_t)st.st_size <= DIST_MEMO_MAX_FILE)
        buf = read_exact(fd, (size_t)st.st_size);
    close(fd);
    if (buf) *len = (size_t)st.st_size;
    return buf;
}

/* The memo's name: digest of LTOC_DIST_MEMO_NAME_TAG NUL cwd NUL <normalised file bytes>. Returns
 * 0, or -1 when the file cannot be looked up (unreadable, too big, holds a 0x01 byte). */
static int dist_lookup(const char *cwd, const char *file_arg, const char *token,
                       char out[DIGEST_HEX_LEN + 1]) {
    size_t len = 0;
    unsigned char *file = read_dist_file(file_arg, &len);
    if (!file) return -1;
    if (len && memchr(file, MEMO_TOKEN_BYTE, len)) {
        free(file);
        return -1;
    }
    len = dist_normalize(file, len, token);
    struct digest128 d;
    digest128_init(&d);
    digest128_update(&d, LTOC_DIST_MEMO_NAME_TAG, sizeof LTOC_DIST_MEMO_NAME_TAG);  /* with its NUL */
    digest128_update(&d, cwd, strlen(cwd) + 1);
    digest128_update(&d, file, len);
    digest128_hex(&d, out);
    free(file);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* The fast path                                                                             */

/* "H <key> <lookup> <start> <end>\n" with two 64-bit decimals at most. */
#define NOTICE_MAX (2 + DIGEST_HEX_LEN + 1 + DIGEST_HEX_LEN + 1 + 20 + 1 + 20 + 2)

/* Replays every job's stdout and stderr in job order and appends their notices in one write.
 * Returns 0, or -1 if a stdout/stderr write failed. */
static int replay(const struct dist_memo *m, int memo_dir, long long start) {
    int wrote = 1;
    for (uint32_t i = 0; i < m->njobs; i++) {
        const struct dist_memo_job *j = &m->jobs[i];
        if (write_all(1, j->out.p, j->out.len, 0) != 0) wrote = 0;
        if (write_all(2, j->err.p, j->err.len, 0) != 0) wrote = 0;
    }
    long long end = unix_ms();
    char *text = malloc((size_t)m->njobs * NOTICE_MAX);
    size_t n = 0;
    for (uint32_t i = 0; text && i < m->njobs; i++) {
        int w = snprintf(text + n, NOTICE_MAX, "H %.32s %.32s %lld %lld\n", m->jobs[i].key,
                         m->jobs[i].lookup, start, end);
        if (w < 0 || w >= (int)NOTICE_MAX) break;
        n += (size_t)w;
    }
    if (text) append_notices(memo_dir, text, n);
    free(text);
    return wrote ? 0 : -1;
}

int dist_memo_serve(const char *cache_dir, const char *cwd, const char *file_arg) {
    const char *off = getenv("LTOCACHE_MEMO");
    if (off && strcmp(off, "0") == 0) return -1;
    char token[DIST_TOKEN_MAX + 1], lookup[DIGEST_HEX_LEN + 1];
    dist_token(file_arg, token);
    if (dist_lookup(cwd, file_arg, token, lookup) != 0) return -1;
    const char *p = getenv("LTOCACHE_PRINT_LOOKUP");
    if (p && strcmp(p, "1") == 0) {
        printf("%s\n", lookup);
        exit(0);
    }
    if (verify_configured(cache_dir)) return -1;
    long long start = unix_ms();

    int memo_dir = open_memo_dir(cache_dir);
    if (memo_dir < 0) return -1;

    size_t len = 0;
    unsigned char *buf = read_memo(memo_dir, lookup, &len, NULL);
    struct dist_memo m;
    memset(&m, 0, sizeof m);
    int ok = buf && dist_memo_parse(buf, len, &m) == 0;
    unsigned char *chunk = ok ? malloc(COPY_CHUNK) : NULL;
    ok = chunk && memo_run_checks(m.checks, m.nchecks, token, chunk) == 0;
    struct staged *staged = ok ? calloc(m.noutputs, sizeof *staged) : NULL;
    sigset_t mask;
    hold_signals(&mask);
    /* Temp names carry the output's index in the whole distribution: unique in this run. */
    for (uint32_t i = 0; staged && ok && i < m.noutputs; i++)
        ok = stage_output(cache_dir, &m.outputs[i], token, NULL, i, chunk, &staged[i]) == 0;
    ok = staged && ok && commit_staged(staged, m.noutputs) == 0;
    if (!ok && staged) unstage(staged, m.noutputs);
    sigprocmask(SIG_SETMASK, &mask, NULL);
    if (ok) exit(replay(&m, memo_dir, start) == 0 ? 0 : 1);
    free(staged);
    dist_memo_free(&m);
    free(chunk);
    free(buf);
    close(memo_dir);
    return -1;
}
