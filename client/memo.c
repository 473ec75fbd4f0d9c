/*
 * Memo fast path (docs/memo.md). Every failure returns to the caller, which takes the daemon
 * path; nothing here may leave a partial or unverified output in place.
 */
#include "memo.h"

#include "io.h"
#include "memo_internal.h"
#include "verifyconf.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------- */
/* Parser                                                                                    */

static int rd_need(struct rd *r, size_t n) {
    if (r->bad || n > r->len - r->at) {
        r->bad = 1;
        return 0;
    }
    return 1;
}

static unsigned rd_u8(struct rd *r) {
    if (!rd_need(r, 1)) return 0;
    return r->p[r->at++];
}

uint32_t rd_u32(struct rd *r) {
    if (!rd_need(r, 4)) return 0;
    const unsigned char *q = r->p + r->at;
    r->at += 4;
    return (uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 | (uint32_t)q[3] << 24;
}

uint64_t rd_u64(struct rd *r) {
    if (!rd_need(r, 8)) return 0;
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | r->p[r->at + (size_t)i];
    r->at += 8;
    return v;
}

void rd_bytes(struct rd *r, uint32_t max, struct memo_bytes *out) {
    uint32_t n = rd_u32(r);
    out->p = NULL;
    out->len = 0;
    if (n > max) r->bad = 1;
    if (!rd_need(r, n)) return;
    out->p = r->p + r->at;
    out->len = n;
    r->at += n;
}

static int is_hex32(const unsigned char *p) {
    for (int i = 0; i < DIGEST_HEX_LEN; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f'))) return 0;
    return 1;
}

const char *rd_hex(struct rd *r) {
    if (!rd_need(r, DIGEST_HEX_LEN)) return NULL;
    const unsigned char *q = r->p + r->at;
    if (!is_hex32(q)) {
        r->bad = 1;
        return NULL;
    }
    r->at += DIGEST_HEX_LEN;
    return (const char *)q;
}

/* Smallest encoding of one check (kind + empty name), to refuse counts the buffer cannot hold
 * before allocating for them. */
#define MIN_CHECK_BYTES 5u

int rd_start(struct rd *r, const unsigned char *buf, size_t len, const char *magic) {
    if (!buf || len > MEMO_MAX_BYTES || len < MEMO_MAGIC_LEN + DIGEST_HEX_LEN) return -1;
    if (memcmp(buf, magic, MEMO_MAGIC_LEN) != 0) return -1;
    size_t body = len - DIGEST_HEX_LEN;
    char trailer[DIGEST_HEX_LEN + 1];
    digest128_bytes_hex(buf, body, trailer);
    if (memcmp(trailer, buf + body, DIGEST_HEX_LEN) != 0) return -1;
    *r = (struct rd){buf, body, MEMO_MAGIC_LEN, 0};
    return 0;
}

int rd_checks(struct rd *r, uint32_t max, struct memo_check **checks, uint32_t *count) {
    uint32_t n = rd_u32(r);
    if (r->bad || n > max || (size_t)n > (r->len - r->at) / MIN_CHECK_BYTES) return -1;
    *checks = calloc(n ? n : 1, sizeof **checks);
    if (!*checks) return -1;
    *count = n;
    for (uint32_t i = 0; i < n && !r->bad; i++) {
        struct memo_check *c = &(*checks)[i];
        c->kind = rd_u8(r);
        rd_bytes(r, MEMO_MAX_NAME, &c->name);
        switch (c->kind) {
        case MEMO_STAT:
            c->dev = rd_u64(r);
            c->ino = rd_u64(r);
            c->size = rd_u64(r);
            c->mtime_ns = rd_u64(r);
            c->ctime_ns = rd_u64(r);
            break;
        case MEMO_CONTENT:
            c->size = rd_u64(r);
            c->digest = rd_hex(r);
            break;
        case MEMO_ABSENT:
        case MEMO_NOTREG:
            break;
        case MEMO_DIR:
            c->dev = rd_u64(r);
            c->ino = rd_u64(r);
            c->mtime_ns = rd_u64(r);
            c->ctime_ns = rd_u64(r);
            break;
        case MEMO_ENV: {
            unsigned set = rd_u8(r);
            if (set > 1) r->bad = 1;
            c->env_set = (int)set;
            rd_bytes(r, MEMO_MAX_NAME, &c->value);
            break;
        }
        default:
            r->bad = 1;
            break;
        }
    }
    return 0;
}

uint32_t rd_outputs(struct rd *r, struct memo_output *out) {
    uint32_t no = rd_u32(r);
    if (no < 1 || no > MEMO_MAX_OUTPUTS) r->bad = 1;
    for (uint32_t i = 0; i < no && !r->bad; i++) {
        rd_bytes(r, MEMO_MAX_NAME, &out[i].path);
        out[i].digest = rd_hex(r);
        out[i].size = rd_u64(r);
    }
    return r->bad ? 0 : no;
}

int memo_parse(const unsigned char *buf, size_t len, struct memo *m) {
    memset(m, 0, sizeof *m);
    struct rd r;
    if (rd_start(&r, buf, len, MEMO_MAGIC) != 0) return -1;
    m->key = rd_hex(&r);
    if (rd_checks(&r, MEMO_MAX_CHECKS, &m->checks, &m->nchecks) != 0) return -1;
    m->noutputs = rd_outputs(&r, m->outputs);
    rd_bytes(&r, MEMO_MAX_STREAM, &m->out);
    rd_bytes(&r, MEMO_MAX_STREAM, &m->err);
    if (r.bad || r.at != r.len) {
        memo_free(m);
        return -1;
    }
    return 0;
}

void memo_free(struct memo *m) {
    free(m->checks);
    memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------------------------------- */
/* Digests                                                                                   */

void memo_lookup_digest(const char *compiler_abs, const char *cwd, int argc, char **argv,
                        char out[DIGEST_HEX_LEN + 1]) {
    static const char tag[] = LTOC_MEMO_NAME_TAG;
    struct digest128 d;
    digest128_init(&d);
    digest128_update(&d, tag, sizeof tag);  /* with its NUL */
    digest128_update(&d, compiler_abs, strlen(compiler_abs) + 1);
    digest128_update(&d, cwd, strlen(cwd) + 1);
    for (int i = 0; i < argc; i++) digest128_update(&d, argv[i], strlen(argv[i]) + 1);
    digest128_hex(&d, out);
}

int memo_file_digest(const char *path, char out[DIGEST_HEX_LEN + 1], uint64_t *size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return -1;
    unsigned char *chunk = malloc(COPY_CHUNK);
    int r = chunk ? copy_hashing(fd, -1, -1, chunk, UINT64_MAX, out, size) : -1;
    free(chunk);
    close(fd);
    return r;
}

void memo_print_digest_hook(void) {
    const char *f = getenv("LTOCACHE_PRINT_DIGEST");
    if (!f || !*f) return;
    char hex[DIGEST_HEX_LEN + 1];
    uint64_t size;
    if (memo_file_digest(f, hex, &size) != 0) {
        fprintf(stderr, "ltocache: cannot read '%s': %s\n", f, strerror(errno));
        exit(1);
    }
    printf("%s\n", hex);
    exit(0);
}

/* ---------------------------------------------------------------------------------------- */
/* Checks                                                                                    */

char *memo_name(struct memo_bytes b, const char *token) {
    if (b.len && memchr(b.p, 0, b.len)) return NULL;
    size_t tl = token ? strlen(token) : 0, n = b.len;
    for (uint32_t i = 0; token && i < b.len; i++) {
        if (b.p[i] != MEMO_TOKEN_BYTE) continue;
        if (!tl) return NULL;  /* a placeholder with no token to put there */
        n += tl - 1;
    }
    char *s = malloc(n + 1), *q = s;
    if (!s) return NULL;
    for (uint32_t i = 0; i < b.len; i++) {
        if (token && b.p[i] == MEMO_TOKEN_BYTE) {
            memcpy(q, token, tl);
            q += tl;
        } else {
            *q++ = (char)b.p[i];
        }
    }
    *q = '\0';
    return s;
}

static int check_content(const char *path, const struct memo_check *c, unsigned char *chunk) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return -1;
    struct stat st;
    char hex[DIGEST_HEX_LEN + 1];
    uint64_t size = 0;
    int ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == c->size &&
             copy_hashing(fd, -1, -1, chunk, UINT64_MAX, hex, &size) == 0 && size == c->size &&
             memcmp(hex, c->digest, DIGEST_HEX_LEN) == 0;
    close(fd);
    return ok ? 0 : -1;
}

uint64_t memo_ns(struct timespec t) {
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* Returns 0 when the check passes. ENV names are used as they are, other names get the token. */
static int run_check(const struct memo_check *c, const char *token, unsigned char *chunk) {
    char *name = memo_name(c->name, c->kind == MEMO_ENV ? NULL : token);
    if (!name) return -1;
    int ok = 0;
    struct stat st;
    if (c->kind == MEMO_ENV) {
        /* A name getenv cannot look up exactly is a doubt, not an unset variable. */
        if (*name && !strchr(name, '=')) {
            const char *v = getenv(name);
            ok = c->env_set ? v && strlen(v) == c->value.len &&
                                  memcmp(v, c->value.p, c->value.len) == 0
                            : !v;
        }
    } else if (name[0] != '/') {
        ok = 0;
    } else if (c->kind == MEMO_STAT) {
        ok = stat(name, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_dev == c->dev &&
             (uint64_t)st.st_ino == c->ino && (uint64_t)st.st_size == c->size &&
             memo_ns(st.st_mtim) == c->mtime_ns && memo_ns(st.st_ctim) == c->ctime_ns;
    } else if (c->kind == MEMO_CONTENT) {
        ok = check_content(name, c, chunk) == 0;
    } else if (c->kind == MEMO_ABSENT) {
        ok = stat(name, &st) != 0 && (errno == ENOENT || errno == ENOTDIR ||
                                      errno == ENAMETOOLONG || errno == ELOOP);
    } else if (c->kind == MEMO_NOTREG) {
        ok = stat(name, &st) == 0 && !S_ISREG(st.st_mode);
    } else if (c->kind == MEMO_DIR) {
        ok = stat(name, &st) == 0 && S_ISDIR(st.st_mode) && (uint64_t)st.st_dev == c->dev &&
             (uint64_t)st.st_ino == c->ino && memo_ns(st.st_mtim) == c->mtime_ns &&
             memo_ns(st.st_ctim) == c->ctime_ns;
    }
    free(name);
    return ok ? 0 : -1;
}

int memo_run_checks(const struct memo_check *c, uint32_t n, const char *token,
                    unsigned char *chunk) {
    for (uint32_t i = 0; i < n; i++)
        if (run_check(&c[i], token, chunk) != 0) return -1;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Reading the memo                                                                          */

int open_private_dir(int at, const char *name) {
    int fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != getuid() ||
        (st.st_mode & 077) != 0) {
        close(fd);
        errno = EACCES;
        return -1;
    }
    return fd;
}

int open_memo_dir(const char *cache_dir) {
    int root = open(cache_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root < 0) return -1;
    int memo_dir = open_private_dir(root, "memo");
    close(root);
    return memo_dir;
}

unsigned char *read_exact(int fd, size_t n) {
    unsigned char *buf = malloc(n + 1);
    if (!buf) return NULL;
    size_t got = 0;
    while (got < n + 1) {
        ssize_t r = read(fd, buf + got, n + 1 - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    if (got != n) {
        free(buf);
        return NULL;
    }
    return buf;
}

unsigned char *read_memo(int memo_dir, const char *lookup, size_t *len, int *absent) {
    char shard[3] = {lookup[0], lookup[1], '\0'};
    if (absent) *absent = 0;
    int sd = open_private_dir(memo_dir, shard);
    int fd = sd < 0 ? -1 : openat(sd, lookup + 2, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0 && absent) *absent = errno == ENOENT;
    if (sd >= 0) close(sd);
    if (fd < 0) return NULL;
    struct stat st;
    unsigned char *buf = NULL;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == getuid() &&
        (st.st_mode & 022) == 0 && st.st_size > 0 && (uint64_t)st.st_size <= MEMO_MAX_BYTES)
        buf = read_exact(fd, (size_t)st.st_size);  /* the memo did not change under us */
    close(fd);
    if (buf) *len = (size_t)st.st_size;
    return buf;
}

/* ---------------------------------------------------------------------------------------- */
/* Outputs                                                                                   */

char *fmt(const char *f, ...) {
    va_list ap;
    va_start(ap, f);
    char *s = NULL;
    int r = vasprintf(&s, f, ap);
    va_end(ap);
    return r < 0 ? NULL : s;
}

int copy_hashing(int in, int64_t at, int out, unsigned char *chunk, uint64_t limit,
                 char hex[DIGEST_HEX_LEN + 1], uint64_t *total) {
    struct digest128 d;
    digest128_init(&d);
    *total = 0;
    int ok = 1;
    for (;;) {
        size_t want = COPY_CHUNK;
        if (at >= 0 && limit - *total < want) want = (size_t)(limit - *total);
        if (want == 0) break;
        ssize_t r = at < 0 ? read(in, chunk, want)
                           : pread(in, chunk, want, (off_t)((uint64_t)at + *total));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) { ok = 0; break; }
        if (r == 0) break;
        digest128_update(&d, chunk, (size_t)r);
        *total += (uint64_t)r;
        if (*total > limit || (out >= 0 && write_all(out, chunk, (size_t)r, 0) != 0)) {
            ok = 0;
            break;
        }
    }
    digest128_hex(&d, hex);
    return ok ? 0 : -1;
}

int stage_output(const char *cache_dir, const struct memo_output *o, const char *token,
                 const struct team_pack *pack, unsigned n, unsigned char *chunk,
                 struct staged *s) {
    s->path = memo_name(o->path, token);
    if (!s->path || s->path[0] != '/') return -1;
    const char *slash = strrchr(s->path, '/');
    const char *base = slash + 1;
    if (!*base || strcmp(base, ".") == 0 || strcmp(base, "..") == 0) return -1;
    /* The daemon keys neither kind of output a rename must not replace (uncacheable `output`);
     * one may have become so since. */
    if (!replaced_by_rename(s->path)) return -1;
    char *blob = fmt("%s/store/v1/blobs/%.2s/%.30s", cache_dir, o->digest, o->digest + 2);
    char *temp = fmt("%.*s/.%s.ltocache-%ld-%u", (int)(slash - s->path), s->path, base,
                     (long)getpid(), n);
    if (!blob || !temp) {
        free(blob);
        free(temp);
        return -1;
    }
    int own = open(blob, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    int missing = own < 0 && errno == ENOENT;
    free(blob);
    /* The store's blob, whole (at < 0); or the pack's copy, at its offset. */
    int in = own;
    int64_t at = -1;
    uint64_t found = 0;
    struct stat st;
    if (missing && pack && pack_find_blob(pack, o->digest, o->size, &found) == 0) {
        in = pack->fd;
        at = (int64_t)found;
    } else if (own < 0 || fstat(own, &st) != 0 || !S_ISREG(st.st_mode) ||
               (uint64_t)st.st_size != o->size) {
        if (own >= 0) close(own);
        free(temp);
        return -1;
    }
    int out = open(temp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0666);
    if (out < 0) {
        if (own >= 0) close(own);
        free(temp);
        return -1;
    }
    s->temp = temp;
    char hex[DIGEST_HEX_LEN + 1];
    uint64_t total = 0;
    int ok = copy_hashing(in, at, out, chunk, o->size, hex, &total) == 0;
    if (own >= 0) close(own);
    if (close(out) != 0) ok = 0;
    return ok && total == o->size && memcmp(hex, o->digest, DIGEST_HEX_LEN) == 0 ? 0 : -1;
}

int commit_staged(struct staged *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (rename(s[i].temp, s[i].path) != 0) return -1;
        free(s[i].temp);
        s[i].temp = NULL;
    }
    return 0;
}

void unstage(struct staged *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (s[i].temp) unlink(s[i].temp);
        free(s[i].temp);
        free(s[i].path);
        s[i].temp = s[i].path = NULL;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* The fast path                                                                             */

#ifdef LTOCACHE_MEMO_TIMING
/* Benchmark build only (bench/hitPath.ts): the fast path's phase times, in ns, printed as one
 * stderr line on a hit. Phases: lookup digest, memo open+read+parse, checks, blob copy+verify,
 * rename, stdout/stderr replay + notice. */
enum { TM_START, TM_LOOKUP, TM_READ, TM_CHECKS, TM_COPY, TM_RENAME, TM_NOTICE, TM_N };
static uint64_t tm[TM_N];
#define TM_MARK(i) (tm[i] = tm_now())
static uint64_t tm_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return memo_ns(t);
}
static void tm_print(uint32_t nchecks) {
    fprintf(stderr,
            "ltocache-memo-timing lookup=%llu read=%llu checks=%llu copy=%llu rename=%llu "
            "notice=%llu nchecks=%u\n",
            (unsigned long long)(tm[TM_LOOKUP] - tm[TM_START]),
            (unsigned long long)(tm[TM_READ] - tm[TM_LOOKUP]),
            (unsigned long long)(tm[TM_CHECKS] - tm[TM_READ]),
            (unsigned long long)(tm[TM_COPY] - tm[TM_CHECKS]),
            (unsigned long long)(tm[TM_RENAME] - tm[TM_COPY]),
            (unsigned long long)(tm[TM_NOTICE] - tm[TM_RENAME]), nchecks);
}
#else
#define TM_MARK(i) ((void)0)
#endif

long long unix_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void append_notices(int memo_dir, const char *text, size_t len) {
    int log = openat(memo_dir, "hits.log",
                     O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0600);
    if (log < 0) return;
    /* One write on O_APPEND keeps concurrent notices whole; a lost one loses a counter. */
    ssize_t w = write(log, text, len);
    (void)w;
    close(log);
}

static int serve(const char *cache_dir, const char *compiler_abs, const char *cwd, int argc,
                 char **argv, int notice);

int replaced_by_rename(const char *output) {
    struct stat st;
    if (stat(output, &st) != 0) return errno == ENOENT;
    return S_ISREG(st.st_mode) && access(output, W_OK) == 0;
}

void hold_signals(sigset_t *old) {
    static const int held[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGXFSZ};
    sigset_t set;
    sigemptyset(&set);
    for (size_t i = 0; i < sizeof held / sizeof *held; i++) sigaddset(&set, held[i]);
    sigprocmask(SIG_BLOCK, &set, old);
}

int memo_serve(const char *cache_dir, const char *compiler_abs, const char *cwd, int argc,
               char **argv) {
    return serve(cache_dir, compiler_abs, cwd, argc, argv, 1);
}

int memo_serve_counted(const char *cache_dir, const char *compiler_abs, const char *cwd, int argc,
                       char **argv) {
    return serve(cache_dir, compiler_abs, cwd, argc, argv, 0);
}

static int serve(const char *cache_dir, const char *compiler_abs, const char *cwd, int argc,
                 char **argv, int notice) {
    char lookup[DIGEST_HEX_LEN + 1];
    TM_MARK(TM_START);
    memo_lookup_digest(compiler_abs, cwd, argc, argv, lookup);
    const char *p = getenv("LTOCACHE_PRINT_LOOKUP");
    if (p && strcmp(p, "1") == 0) {
        printf("%s\n", lookup);
        exit(0);
    }
    const char *off = getenv("LTOCACHE_MEMO");
    if (off && strcmp(off, "0") == 0) return -1;
    if (verify_configured(cache_dir)) return -1;
    long long start = unix_ms();
    TM_MARK(TM_LOOKUP);

    int memo_dir = open_memo_dir(cache_dir);
    if (memo_dir < 0) return -1;

    size_t len = 0;
    int absent = 0;
    unsigned char *buf = read_memo(memo_dir, lookup, &len, &absent);
    /* The team pack only stands in for a memo file that is not there: a memo file that fails is
     * a doubt, and the daemon path resolves it. */
    struct team_pack pack = {.fd = -1};
    if (!buf && absent && pack_open(memo_dir, &pack) == 0)
        buf = pack_read_memo(&pack, lookup, &len);
    /* Set only when the memo came from the pack; then its blobs may too. A memo file's blobs are
     * in the store (the daemon writes the memo only after them). */
    const struct team_pack *from = buf && pack.fd >= 0 ? &pack : NULL;
    struct memo m;
    unsigned char *chunk = NULL;
    struct staged staged[MEMO_MAX_OUTPUTS];
    memset(staged, 0, sizeof staged);
    int ok = buf && memo_parse(buf, len, &m) == 0;
    if (!ok) goto out;
    TM_MARK(TM_READ);
    chunk = malloc(COPY_CHUNK);
    ok = chunk && memo_run_checks(m.checks, m.nchecks, NULL, chunk) == 0;
    TM_MARK(TM_CHECKS);
    sigset_t mask;
    hold_signals(&mask);
    for (uint32_t i = 0; ok && i < m.noutputs; i++)
        ok = stage_output(cache_dir, &m.outputs[i], NULL, from, i, chunk, &staged[i]) == 0;
    TM_MARK(TM_COPY);
    ok = ok && commit_staged(staged, m.noutputs) == 0;
    if (!ok) unstage(staged, MEMO_MAX_OUTPUTS);
    sigprocmask(SIG_SETMASK, &mask, NULL);
    TM_MARK(TM_RENAME);
    if (ok) {
        int wrote = write_all(1, m.out.p, m.out.len, 0) == 0;
        if (write_all(2, m.err.p, m.err.len, 0) != 0) wrote = 0;
        char *line = notice ? fmt("%c %.32s %s %lld %lld\n", from ? 'P' : 'H', m.key, lookup,
                                  start, unix_ms())
                            : NULL;
        if (line) append_notices(memo_dir, line, strlen(line));
        free(line);
        TM_MARK(TM_NOTICE);
#ifdef LTOCACHE_MEMO_TIMING
        tm_print(m.nchecks);
#endif
        exit(wrote ? 0 : 1);
    }
    memo_free(&m);
out:
    unstage(staged, MEMO_MAX_OUTPUTS);
    free(chunk);
    free(buf);
    pack_close(&pack);
    close(memo_dir);
    return -1;
}
