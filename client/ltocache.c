/*
 * ltocache: native front end of the ThinLTO backend-job cache.
 *
 * Contract: this program behaves exactly like the compiler it wraps. It recognises a
 * distributed-ThinLTO backend job (an argument starting with "-fthinlto-index=", or a response
 * file "@..." that may hide one), hands that job to the ltocache daemon over a Unix socket and
 * replays the daemon's answer. Every other invocation, and every failure on the ltocache side
 * (no daemon, unsafe socket directory, malformed reply, daemon dying mid-job, ...), ends in a
 * plain exec of the real compiler: the build never fails because of ltocache.
 *
 * Why C and why so small: every backend job (~100 ms of clang) passes through here, and
 * starting Node alone costs ~90 ms. So this file parses no compiler flags and holds no cache
 * knowledge; it only moves bytes. All knowledge lives in the TypeScript daemon. The wire format
 * is described in docs/protocol.md and mirrored in src/protocol/clientFrames.ts.
 *
 * Modes (decided by basename(argv[0])):
 *   prefix:     "ltocache <compiler> <args...>"; "ltocache" alone or with a CLI sub-command
 *               (stats, daemon, ...) execs the TypeScript CLI under node instead, except
 *               "ltocache distribute ..." (lld's DTLTO distributor), which is first served from
 *               its distribution memo (distmemo.c) if it can be, else handed to the daemon whole
 *               (one 'T' frame, answered like a compile), and runs the CLI only when the daemon
 *               cannot take it.
 *   masquerade: a symlink named like the compiler (clang, clang-19, ...) pointing here; the real
 *               compiler is the next executable of that name on PATH that is not this program.
 *
 * Environment: LTOCACHE_DIR, XDG_CACHE_HOME, HOME (cache dir -> socket), LTOCACHE_DISABLE,
 * LTOCACHE_NODE, LTOCACHE_START_TIMEOUT_MS, LTOCACHE_SILENCE_TIMEOUT_MS, LTOCACHE_EXEC_GUARD
 * (ours: see self_exec_guard()), and LTOCACHE_PRINT_SOCKET=1 (tests only: print the socket path
 * and exit 0).
 *
 * Limits, frame types and the protocol version come from limits.h, generated from
 * src/protocol/limits.ts.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "limits.h"
#include "io.h"
#include "distmemo.h"
#include "memo.h"
#include "reply.h"
#include "memo_internal.h"
#include "storeback.h"

extern char **environ;

#define CONNECT_RETRY_NS (10L * 1000 * 1000)
/* After a daemon we started found the store held by another (its answer 'L'): how long the
 * holder gets to be found listening on our socket. */
#define LOST_START_WAIT_MS 250
#define GUARD_ENV "LTOCACHE_EXEC_GUARD"
#define MAX_SKIP 64

/* The SIGCHLD disposition we inherited. We need SIG_DFL for our own waitpid (an inherited
 * SIG_IGN makes children vanish unreaped: ECHILD); every exec restores the inherited one so the
 * compiler starts with exactly what we were given. */
static struct sigaction inherited_sigchld;

/* Executables known to be this program, by device and inode: every symlink or hard link to us
 * on PATH is skipped. From /proc/self/exe when it is mounted (`exact`); otherwise from argv[0]
 * resolved the way execvp found it, or, in a process that exec'd itself by mistake, from
 * LTOCACHE_EXEC_GUARD (see self_exec_guard()). */
static struct {
    dev_t dev[MAX_SKIP];
    ino_t ino[MAX_SKIP];
    int n, exact, self_exec;
} skip;
static const char *argv0 = "";

/* The compiler to run: `path` is what execv gets (resolved, possibly relative), `argv` is the
 * argument vector as the user gave it (argv[0] = compiler name as given), `argc` its length. */
struct job {
    const char *path;
    char **argv;
    int argc;
};

/* ---------------------------------------------------------------------------------------- */
/* Small helpers                                                                             */

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static int starts_with(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Non-NULL and non-empty. */
static const char *env_nonempty(const char *name) {
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* Malloc'd concatenation of up to three strings; NULL on OOM. */
static char *concat3(const char *a, const char *b, const char *c) {
    size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
    char *r = malloc(la + lb + lc + 1);
    if (!r) return NULL;
    memcpy(r, a, la);
    memcpy(r + la, b, lb);
    memcpy(r + la + lb, c, lc + 1);
    return r;
}

/* ---------------------------------------------------------------------------------------- */
/* Direct exec: the universal fallback                                                       */

/* Without an exact self identity, a compiler candidate may turn out to be this program again.
 * Before exec'ing one, record "<pid> <dev>:<ino>..." (the pid survives exec; the identities are
 * the candidate's and those of earlier candidates proven to be us, never a guess from argv[0]):
 * a process that finds its own pid there knows it is that candidate, skips exactly those and
 * talks to no daemon (its parent image already did).
 * Only ever set without /proc, and removed on entry, so it never reaches a daemon request. */
static void set_exec_guard(const char *path) {
    if (skip.exact) return;
    struct stat st;
    char buf[32 + MAX_SKIP * 42];
    int at = snprintf(buf, sizeof buf, "%ld", (long)getpid());
    for (int i = 0; skip.self_exec && i < skip.n; i++)
        at += snprintf(buf + at, sizeof buf - (size_t)at, " %lu:%lu", (unsigned long)skip.dev[i],
                       (unsigned long)skip.ino[i]);
    if (stat(path, &st) == 0 && skip.n < MAX_SKIP)
        snprintf(buf + at, sizeof buf - (size_t)at, " %lu:%lu", (unsigned long)st.st_dev,
                 (unsigned long)st.st_ino);
    setenv(GUARD_ENV, buf, 1);
}

/* Replace this process with the real compiler, same args/env/stdio. Never returns. The socket
 * (if any) is SOCK_CLOEXEC, SIGPIPE was never touched (we use MSG_NOSIGNAL) and SIGCHLD is
 * restored, so the compiler inherits exactly what we inherited. */
_Noreturn static void direct_exec(const struct job *j) {
    set_exec_guard(j->path);
    sigaction(SIGCHLD, &inherited_sigchld, NULL);
    execv(j->path, j->argv);
    int e = errno;
    fprintf(stderr, "ltocache: cannot execute '%s': %s\n", j->path, strerror(e));
    exit(e == ENOENT ? 127 : 126);
}

/* ---------------------------------------------------------------------------------------- */
/* Compiler lookup                                                                           */

static int is_skipped(const struct stat *st) {
    for (int i = 0; i < skip.n; i++)
        if (skip.dev[i] == st->st_dev && skip.ino[i] == st->st_ino) return 1;
    return 0;
}

static void add_skip(dev_t dev, ino_t ino) {
    if (skip.n >= MAX_SKIP) return;
    skip.dev[skip.n] = dev;
    skip.ino[skip.n] = ino;
    skip.n++;
}

/* First executable regular file called `name` on PATH that is not skipped. Returns a malloc'd
 * path (relative if PATH has relative entries) or NULL. An empty PATH entry means the current
 * directory, as for execvp. */
static char *find_on_path(const char *name) {
    if (!*name || strchr(name, '/')) return NULL;
    const char *path = getenv("PATH");
    if (!path) path = "/usr/local/bin:/usr/bin:/bin";
    struct stat st;
    for (const char *p = path;; ) {
        const char *colon = strchrnul(p, ':');
        size_t n = (size_t)(colon - p);
        char *dir = n ? strndup(p, n) : strdup(".");
        char *cand = dir ? concat3(dir, "/", name) : NULL;
        free(dir);
        if (cand) {
            if (stat(cand, &st) == 0 && S_ISREG(st.st_mode) && access(cand, X_OK) == 0 &&
                !is_skipped(&st))
                return cand;
            free(cand);
        }
        if (!*colon) return NULL;
        p = colon + 1;
    }
}

/* Real path of this executable (malloc'd, NULL if unknown): /proc/self/exe, else argv[0]
 * resolved as execvp would have (as given if it has a '/', else the first match on PATH). */
static char *self_path(void) {
    char *p = realpath("/proc/self/exe", NULL);
    if (p || !*argv0) return p;
    if (strchr(argv0, '/')) return realpath(argv0, NULL);
    int n = skip.n;
    skip.n = 0;
    char *found = find_on_path(argv0);
    skip.n = n;
    p = found ? realpath(found, NULL) : NULL;
    free(found);
    return p;
}

/* Consumes LTOCACHE_EXEC_GUARD (see set_exec_guard()). Returns 1 if this process is a
 * mistaken exec of itself, having loaded the identities to skip from the guard. */
static int self_exec_guard(void) {
    const char *g = getenv(GUARD_ENV);
    int mine = 0;
    if (g) {
        char *end;
        long pid = strtol(g, &end, 10);
        if (end != g && pid == (long)getpid()) {
            mine = 1;
            for (const char *q = end; *q == ' ';) {
                unsigned long d = strtoul(q + 1, &end, 10), i;
                if (*end != ':') break;
                i = strtoul(end + 1, &end, 10);
                add_skip((dev_t)d, (ino_t)i);
                q = end;
            }
        }
        unsetenv(GUARD_ENV);
    }
    return mine;
}

/* Fills `skip` with this program's identity. */
static void find_self(void) {
    struct stat st;
    if (self_exec_guard()) {
        skip.self_exec = 1;
        return;
    }
    if (stat("/proc/self/exe", &st) == 0) {
        skip.exact = 1;
        add_skip(st.st_dev, st.st_ino);
        return;
    }
    char *self = self_path();
    if (self && stat(self, &st) == 0) add_skip(st.st_dev, st.st_ino);
    free(self);
}

/* ---------------------------------------------------------------------------------------- */
/* Socket location (mirrored by socketPathFor() in src/protocol/clientFrames.ts)             */

static uint64_t fnv1a64(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        h ^= *p;
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Cache dir: $LTOCACHE_DIR, else $XDG_CACHE_HOME/ltocache if that is absolute, else
 * $HOME/.cache/ltocache; trailing slashes stripped (keeping a lone "/"). Returns a malloc'd
 * string, or NULL if there is no usable *absolute* directory (then: direct exec). */
static char *cache_dir(void) {
    const char *v, *xdg = env_nonempty("XDG_CACHE_HOME"), *home = env_nonempty("HOME");
    char *d;
    if ((v = env_nonempty("LTOCACHE_DIR"))) d = strdup(v);
    else if (xdg && xdg[0] == '/') d = concat3(xdg, "/", "ltocache");
    else if (home) d = concat3(home, "/", ".cache/ltocache");
    else return NULL;
    if (!d) return NULL;
    size_t n = strlen(d);
    while (n > 1 && d[n - 1] == '/') d[--n] = '\0';
    if (d[0] != '/') { free(d); return NULL; }
    return d;
}

/* The real path of `dir`, or, while it does not exist, the real path of its longest existing
 * ancestor with the rest of `dir` appended ("" and "." skipped, ".." dropping the component
 * before it): the name the daemon's socket is derived from (cacheDir.ts socketDirName gives the
 * same, and the same once the daemon has made the directory). Malloc'd, or NULL. */
static char *socket_dir_name(const char *dir) {
    char *head = strdup(dir);
    if (!head) return NULL;
    char *real;
    while (!(real = realpath(head, NULL))) {
        char *slash = strrchr(head, '/');
        if (!slash || (slash == head && head[1] == '\0')) {
            free(head);
            return NULL;
        }
        slash[slash == head ? 1 : 0] = '\0';
    }
    const char *rest = dir + strlen(head);
    free(head);
    size_t cap = strlen(real) + strlen(rest) + 2, len = strlen(real);
    char *out = realloc(real, cap);
    if (!out) {
        free(real);
        return NULL;
    }
    while (*rest) {
        while (*rest == '/') rest++;
        size_t k = strcspn(rest, "/");
        if (k == 0 || (k == 1 && rest[0] == '.')) {
        } else if (k == 2 && rest[0] == '.' && rest[1] == '.') {
            while (len > 1 && out[len - 1] != '/') len--;
            if (len > 1) len--;
        } else {
            if (len > 1) out[len++] = '/';
            memcpy(out + len, rest, k);
            len += k;
        }
        out[len] = '\0';
        rest += k;
    }
    out[len] = '\0';
    return out;
}

/* Fills sock_dir ("/tmp/ltocache-<uid>") and addr ("<sock_dir>/<fnv hex>.sock").
 * Returns 0 on success, -1 if there is no usable cache dir. */
static int socket_location(char sock_dir[64], struct sockaddr_un *addr) {
    char *dir = cache_dir();
    if (!dir) return -1;
    /* One daemon per directory, whatever the spelling ("//", a symlink, $HOME with a trailing
     * slash): the socket is named after the real path, as the daemon names it. */
    char *real = socket_dir_name(dir);
    uint64_t h = fnv1a64(real ? real : dir);
    free(real);
    free(dir);
    snprintf(sock_dir, 64, "/tmp/ltocache-%lu", (unsigned long)getuid());
    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    /* At most 14 + 10 + 1 + 16 + 5 + 1 bytes: always fits in sun_path (108). */
    snprintf(addr->sun_path, sizeof addr->sun_path, "%s/%016llx.sock", sock_dir,
             (unsigned long long)h);
    return 0;
}

/* The socket directory must be a real directory (not a symlink), owned by us, with no
 * group/other permission bits; otherwise someone else could plant a fake daemon there.
 * Returns 1 = safe, 0 = missing (the daemon creates it), -1 = unsafe. */
static int socket_dir_state(const char *sock_dir) {
    struct stat st;
    if (lstat(sock_dir, &st) != 0) return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(st.st_mode) || st.st_uid != getuid() || (st.st_mode & 077) != 0) return -1;
    return 1;
}

/* ---------------------------------------------------------------------------------------- */
/* Talking to the daemon                                                                     */

/* One non-blocking connect attempt. Non-blocking so that a daemon with a full accept backlog
 * yields EAGAIN instead of blocking us forever. On success the fd is switched back to
 * blocking (a compile may legitimately take minutes). Returns fd >= 0 or -errno. */
static int try_connect(const struct sockaddr_un *addr) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -errno;
    if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) != 0) {
        /* EINTR leaves the attempt in an unknown state: drop it, the caller retries. */
        int e = errno == EINTR ? EAGAIN : errno;
        close(fd);
        return -e;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) { int e = errno; close(fd); return -e; }
    return fd;
}

/* Path of the TypeScript CLI entry point, relative to the real location of this executable:
 * <dir of self_path()>/../dist/src/cli/main.js (bin/ltocache in a checkout, prebuilt/ltocache in
 * the package), else <dir>/../../dist/src/cli/main.js (prebuilt/<platform>/ltocache run as is).
 * Malloc'd, NULL on failure. */
static char *cli_path(void) {
    char *self = self_path();
    if (!self) return NULL;
    char *slash = strrchr(self, '/');
    if (slash) *slash = '\0';
    char *r = concat3(self, "/../dist/src/cli/main.js", "");
    if (r && access(r, F_OK) != 0) {
        char *up = concat3(self, "/../../dist/src/cli/main.js", "");
        if (up && access(up, F_OK) == 0) { free(r); r = up; }
        else free(up);
    }
    free(self);
    return r;
}

static const char *node_binary(void) {
    const char *n = env_nonempty("LTOCACHE_NODE");
    return n ? n : "node";
}

/* The daemon serves every later build, not just the one whose job started it: soft limits that
 * build's shell set for itself (ulimit -t, -f, -v, -d) are raised to the hard ones, which bound
 * it still: under an inherited CPU limit, SIGXCPU would end the daemon once its accumulated CPU
 * time reached it. Node resets the signal mask and dispositions itself, and raises RLIMIT_NOFILE. */
static void lift_soft_limits(void) {
    static const int resources[] = {RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_AS, RLIMIT_DATA};
    for (size_t i = 0; i < sizeof resources / sizeof resources[0]; i++) {
        struct rlimit r;
        if (getrlimit(resources[i], &r) == 0 && r.rlim_cur != r.rlim_max) {
            r.rlim_cur = r.rlim_max;
            setrlimit(resources[i], &r);
        }
    }
}

/* Start "node <cli> daemon run --background" fully detached (double fork + setsid, stdio on
 * /dev/null, cwd "/", no inherited fds but fd 3: the write end of a pipe named by
 * LTOCACHE_STARTUP_NOTIFY_FD, on which the daemon writes 'R' once it listens or 'L' if another
 * daemon holds the cache; it closes it otherwise, so EOF without a byte means a failed start).
 * Reaps the intermediate child so no zombie is left. Returns the read end, or -1. */
static int spawn_daemon(void) {
    char *cli = cli_path();
    if (!cli) return -1;
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0) { free(cli); return -1; }
    pid_t pid = fork();
    if (pid == 0) {
        setsid();
        if (fork() != 0) _exit(0);
        int nul = open("/dev/null", O_RDWR);
        if (nul >= 0) {
            dup2(nul, 0);
            dup2(nul, 1);
            dup2(nul, 2);
        }
        if (pfd[1] == 3) fcntl(3, F_SETFD, 0);
        else if (dup2(pfd[1], 3) != 3) _exit(127);
#ifdef SYS_close_range
        if (syscall(SYS_close_range, 4u, ~0u, 0u) != 0)
#endif
        {
            long max = sysconf(_SC_OPEN_MAX);
            if (max < 0 || max > 1 << 20) max = 1 << 20;
            for (int fd = 4; fd < max; fd++) close(fd);
        }
        if (chdir("/") != 0) { /* keep going: the daemon does not need a particular cwd */ }
        lift_soft_limits();
        setenv("LTOCACHE_STARTUP_NOTIFY_FD", "3", 1);
        const char *node = node_binary();
        char semi[48];
        if (!getenv("MALLOC_ARENA_MAX")) {
            char arenas[24];
            snprintf(arenas, sizeof arenas, "%u", (unsigned)LTOC_DAEMON_MALLOC_ARENA_MAX);
            setenv("MALLOC_ARENA_MAX", arenas, 1);
        }
        snprintf(semi, sizeof semi, "--max-semi-space-size=%u", (unsigned)LTOC_DAEMON_SEMI_SPACE_MB);
        char *args[] = {(char *)node, semi, cli, "daemon", "run", "--background", NULL};
        execvp(node, args);
        _exit(127);
    }
    close(pfd[1]);
    if (pid > 0)
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
    free(cli);
    if (pid < 0) { close(pfd[0]); return -1; }
    return pfd[0];
}

static long env_ms(const char *name, long dflt) {
    const char *v = env_nonempty(name);
    if (!v) return dflt;
    char *end;
    errno = 0;
    long ms = strtol(v, &end, 10);
    if (errno || *end || ms < 0 || ms > 600000) return dflt;
    return ms;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for the daemon's start notification until `deadline`. Returns the byte ('R', 'L', ...),
 * 0 on EOF (the start failed), -1 on timeout. */
static int wait_notify(int fd, long long deadline) {
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0) return -1;
        struct pollfd p = {fd, POLLIN, 0};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        unsigned char c;
        ssize_t n = read(fd, &c, 1);
        if (n < 0 && errno == EINTR) continue;
        return n == 1 ? c : 0;
    }
}

/* "<sock_dir>/<hash>.startfail": its mtime is the last failed daemon start for this cache
 * dir; within START_FAILURE_MEMORY_S of it, jobs do not spawn a daemon. */
static void start_marker(const struct sockaddr_un *addr, char out[sizeof addr->sun_path + 16],
                         const char *suffix) {
    size_t n = strlen(addr->sun_path) - strlen(".sock");
    memcpy(out, addr->sun_path, n);
    strcpy(out + n, suffix);
}

/* "<sock_dir>/<hash>.silent": its mtime is the last time a daemon that accepted a request said
 * nothing for the silence timeout (stopped by a debugger or Ctrl-Z, or hung). Within
 * START_FAILURE_MEMORY_S of it, jobs do not ask the daemon at all: one job in that time pays the
 * timeout, not every job. Set by connect_daemon for send_request. */
static struct {
    char sock_dir[64];
    char marker[sizeof ((struct sockaddr_un *)0)->sun_path + 16];
} silent;

static int recent_start_failure(const char *marker) {
    struct stat st;
    if (lstat(marker, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    time_t now = time(NULL);
    return st.st_mtime <= now && now - st.st_mtime < (time_t)LTOC_START_FAILURE_MEMORY_S;
}

/* Best effort; only in a socket directory that is (or that we just made) private. */
static void record_start_failure(const char *sock_dir, const char *marker) {
    if (mkdir(sock_dir, 0700) != 0 && errno != EEXIST) return;
    if (socket_dir_state(sock_dir) != 1) return;
    int fd = open(marker, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return;
    futimens(fd, NULL);
    close(fd);
}

/* Connect to the daemon, starting it if nobody listens. Returns fd >= 0 or -1 (fall back).
 * Bounded: never waits longer than the start timeout, and not at all when the daemon reports
 * a failed start or one failed recently. The socket directory is re-validated before every
 * attempt; a missing directory counts as "no daemon yet". The connected socket gets send and
 * receive timeouts of LTOCACHE_SILENCE_TIMEOUT_MS: a daemon silent that long (no 'W') is stuck. */
static int connect_daemon(void) {
    char *sock_dir = silent.sock_dir, marker[sizeof ((struct sockaddr_un *)0)->sun_path + 16];
    struct sockaddr_un addr;
    if (socket_location(sock_dir, &addr) != 0) return -1;
    start_marker(&addr, marker, ".startfail");
    start_marker(&addr, silent.marker, ".silent");
    if (recent_start_failure(silent.marker)) return -1;
    long long deadline = 0;
    int started = 0, lost = 0;
    for (;;) {
        int state = socket_dir_state(sock_dir);
        if (state < 0) return -1;
        int r = state ? try_connect(&addr) : -ENOENT;
        if (r >= 0) {
            long ms = env_ms("LTOCACHE_SILENCE_TIMEOUT_MS", LTOC_DEFAULT_SILENCE_TIMEOUT_MS);
            struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
            if (ms > 0 && (setsockopt(r, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
                           setsockopt(r, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0)) {
                close(r);
                return -1;
            }
            return r;
        }
        if (r != -ENOENT && r != -ECONNREFUSED && r != -EAGAIN) return -1;
        if (!deadline) deadline = now_ms() + env_ms("LTOCACHE_START_TIMEOUT_MS", LTOC_DEFAULT_START_TIMEOUT_MS);
        if (!started && r != -EAGAIN) {  /* EAGAIN: a daemon exists, it is just busy */
            started = 1;
            if (recent_start_failure(marker)) return -1;
            int nfd = spawn_daemon();
            if (nfd >= 0) {
                int c = wait_notify(nfd, deadline);
                close(nfd);
                /* EOF: it failed. Silent until the deadline: stuck or too slow to count on, and
                 * the next jobs must not each wait out a start of their own; they still connect
                 * to it if it comes up. */
                if (c <= 0) {
                    record_start_failure(sock_dir, marker);
                    return -1;
                }
                if (c == 'R') unlink(marker);
                /* 'L': another daemon holds the store. One started at the same moment listens
                 * here any moment now; one that does not listen here (the directory reached
                 * another way, as through a bind mount) will not, and later jobs go straight
                 * to clang for a while instead of each starting a daemon of their own. */
                if (c == 'L') {
                    lost = 1;
                    long long soon = now_ms() + LOST_START_WAIT_MS;
                    if (soon < deadline) deadline = soon;
                }
            }
            continue;
        }
        if (now_ms() >= deadline) {
            if (lost) record_start_failure(sock_dir, marker);
            return -1;
        }
        struct timespec ts = {0, CONNECT_RETRY_NS};
        nanosleep(&ts, NULL);  /* an early wake-up (EINTR) only shortens one interval */
    }
}

/* Growable byte buffer for the request. `failed` latches on OOM or size overflow. */
struct buf {
    unsigned char *p;
    size_t len, cap;
    int failed;
};

static void put(struct buf *b, const void *data, size_t n) {
    if (b->failed) return;
    if (n > LTOC_MAX_REQUEST_PAYLOAD + 4 - b->len) { b->failed = 1; return; }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        unsigned char *q = realloc(b->p, cap);
        if (!q) { b->failed = 1; return; }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void put_u8(struct buf *b, unsigned v) {
    unsigned char c = (unsigned char)v;
    put(b, &c, 1);
}

static void put_u32(struct buf *b, uint32_t v) {
    unsigned char le[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                           (unsigned char)(v >> 24)};
    put(b, le, 4);
}

static void put_str(struct buf *b, const char *s) {
    size_t n = strlen(s);
    if (n > UINT32_MAX) { b->failed = 1; return; }
    put_u32(b, (uint32_t)n);
    put(b, s, n);
}

/* Builds a whole request frame (length prefix included): 'C' for a compile, 'T' for a DTLTO
 * distribution (same layout; `compiler` is then "distribute"). Returns 0, or -1 (fall back). */
static int build_request(struct buf *b, unsigned type, uint32_t flags, const char *compiler,
                         const char *cwd, char **args, int nargs) {
    mode_t mask = umask(0);
    umask(mask);
    size_t envc = 0;
    for (char **e = environ; *e; e++) envc++;

    put_u32(b, 0);  /* length placeholder */
    put_u8(b, type);
    put_u8(b, LTOC_PROTOCOL_VERSION);
    put_u32(b, (isatty(2) ? LTOC_FLAG_STDERR_TTY : 0) | flags);
    put_u32(b, (uint32_t)(mask & 0777));
    put_str(b, compiler);
    put_str(b, cwd);
    put_u32(b, (uint32_t)nargs);
    for (int i = 0; i < nargs; i++) put_str(b, args[i]);
    put_u32(b, (uint32_t)envc);
    for (char **e = environ; *e; e++) put_str(b, *e);
    if (b->failed || b->len - 4 > LTOC_MAX_REQUEST_PAYLOAD) return -1;
    uint32_t n = (uint32_t)(b->len - 4);
    unsigned char le[4] = {(unsigned char)n, (unsigned char)(n >> 8), (unsigned char)(n >> 16),
                           (unsigned char)(n >> 24)};
    memcpy(b->p, le, 4);
    return 0;
}

/* Reads exactly n bytes. Returns 0, or -1 on EOF/error. */
static int read_all(int fd, unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Reads one complete reply frame, skipping keepalives ('W'). Returns a malloc'd payload and
 * its length, or NULL (EOF, error, or the socket's receive timeout: a silent daemon). */
static unsigned char *read_reply(int fd, uint32_t *len) {
    unsigned char hdr[5];
    uint32_t n;
    for (;;) {
        if (read_all(fd, hdr, 4) != 0) return NULL;
        n = get_u32(hdr);
        if (n != 1) break;
        if (read_all(fd, hdr + 4, 1) != 0) return NULL;
        if (hdr[4] != LTOC_FRAME_WAIT) {
            unsigned char *p = malloc(1);
            if (p) { p[0] = hdr[4]; *len = 1; }
            return p;
        }
    }
    if (n == 0 || n > LTOC_MAX_REPLY_PAYLOAD) return NULL;
    unsigned char *p = malloc(n);
    if (!p) return NULL;
    if (read_all(fd, p, n) != 0) { free(p); return NULL; }
    *len = n;
    return p;
}

/* Exits the way the compiler did: killed by signal `sig` (non-zero), die of the same signal
 * (no core file: the crash was the compiler's, not ours) so that make and the shell report it
 * the same way; signals that cannot kill us (stop/continue/ignore by default) and otherwise:
 * exit with `status`. */
_Noreturn static void exit_like(int status, int sig) {
    if (sig > 0 && sig <= (int)LTOC_MAX_SIGNAL && sig != SIGSTOP && sig != SIGTSTP &&
        sig != SIGTTIN && sig != SIGTTOU && sig != SIGCONT && sig != SIGCHLD && sig != SIGURG &&
        sig != SIGWINCH) {
        struct rlimit no_core = {0, 0};
        setrlimit(RLIMIT_CORE, &no_core);
        signal(sig, SIG_DFL);
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, sig);
        sigprocmask(SIG_UNBLOCK, &set, NULL);
        raise(sig);
    }
    exit(status);
}

/* Replays a well-formed 'R' payload: writes its stdout and stderr bytes and sets the exit
 * status and signal to use. Returns -1, having written nothing, if the payload is malformed
 * (then the caller falls back), else 0. Layout: 'R', i32 status (0..255), i32 signal
 * (0..MAX_SIGNAL), str stdout, str stderr, nothing else. */
static int replay_result(const unsigned char *p, uint32_t n, int *status, int *sig) {
    struct reply_result r;
    if (reply_parse_result(p, n, &r) != 0) return -1;
    int ok = write_all(1, r.out.p, r.out.len, 0) == 0;
    if (write_all(2, r.err.p, r.err.len, 0) != 0) ok = 0;
    /* Output we could not deliver must not look like success. */
    *status = ok || r.status != 0 || r.sig != 0 ? r.status : 1;
    *sig = r.sig;
    return 0;
}

/* One captured output stream of the compiler. Past MAX_OUTPUT_STREAM the bytes so far and all
 * that follow go straight to `fd` (our own stdout/stderr) and the run is not reported;
 * `lost` latches when such a write fails. */
struct capture {
    unsigned char *p;
    size_t len, cap;
    int fd, through, lost;
};

static void capture_add(struct capture *c, const unsigned char *d, size_t n) {
    if (!c->through && c->len + n <= LTOC_MAX_OUTPUT_STREAM) {
        if (c->len + n > c->cap) {
            size_t cap = c->cap ? c->cap : 4096;
            while (cap < c->len + n) cap *= 2;
            unsigned char *q = realloc(c->p, cap);
            if (q) {
                c->p = q;
                c->cap = cap;
            }
        }
        if (c->len + n <= c->cap) {
            memcpy(c->p + c->len, d, n);
            c->len += n;
            return;
        }
    }
    if (!c->through) {
        c->through = 1;
        if (write_all(c->fd, c->p, c->len, 0) != 0) c->lost = 1;
        c->len = 0;
    }
    if (!c->lost && write_all(c->fd, d, n, 0) != 0) c->lost = 1;
}

/* Termination signals a captured compiler gets from us too: a client killed while its compiler
 * runs would take the compiler along by PR_SET_PDEATHSIG's SIGKILL, leaving clang's temp file
 * behind. Only signals the client was not told to ignore: an ignored one stays ignored for both. */
static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT};
#define NFORWARDED (sizeof forwarded / sizeof forwarded[0])
static volatile sig_atomic_t compiler_pid, received_signal;
/* How long the compiler has to end after a signal passed on to it; then the client dies by the
 * signal and PR_SET_PDEATHSIG takes the compiler along (a wrapper script may defer the signal). */
#define FORWARD_GRACE_MS 1000

static void forward_signal(int s) {
    received_signal = s;
    if (compiler_pid > 0) kill((pid_t)compiler_pid, s);
}

/* After a signal was passed on: the grace period's end, set once; past it, die by the signal. */
static void check_grace(long long *deadline) {
    if (!received_signal) return;
    if (!*deadline) *deadline = now_ms() + FORWARD_GRACE_MS;
    if (now_ms() >= *deadline) exit_like(128 + received_signal, received_signal);
}

/* Runs the compiler as our child with stdout and stderr captured, and waits for it. Returns 0
 * with its exit status (128+N for signal N) and the signal that killed it (0 if none), or -1
 * if it could not be started (nothing ran). The forwarded signals reach it while it runs; the
 * child also dies with us (PR_SET_PDEATHSIG), so a client killed by SIGKILL takes it along.
 * With `hold` (returning 0), the signals of hold_signals stay blocked from the compiler's end on,
 * and *hold is the mask to restore: a temp the compiler wrote is ours to rename or remove first. */
static int run_captured(const struct job *j, struct capture *out, struct capture *err,
                        int *status, int *sig, sigset_t *hold) {
    int po[2], pe[2];
    if (pipe2(po, O_CLOEXEC) != 0) return -1;
    if (pipe2(pe, O_CLOEXEC) != 0) {
        close(po[0]);
        close(po[1]);
        return -1;
    }
    /* Blocked across fork until compiler_pid is set, so none arrives with nobody to pass it to;
     * the child unblocks them (exec resets our handlers to SIG_DFL). */
    struct sigaction fwd, saved[NFORWARDED];
    memset(&fwd, 0, sizeof fwd);
    fwd.sa_handler = forward_signal;
    sigemptyset(&fwd.sa_mask);
    sigset_t block, old_mask;
    sigemptyset(&block);
    for (size_t k = 0; k < NFORWARDED; k++) sigaddset(&block, forwarded[k]);
    sigprocmask(SIG_BLOCK, &block, &old_mask);
    int installed[NFORWARDED] = {0};
    for (size_t k = 0; k < NFORWARDED; k++) {
        if (sigaction(forwarded[k], NULL, &saved[k]) == 0 && saved[k].sa_handler == SIG_DFL &&
            !(saved[k].sa_flags & SA_SIGINFO))
            installed[k] = sigaction(forwarded[k], &fwd, NULL) == 0;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        for (size_t k = 0; k < NFORWARDED; k++)
            if (installed[k]) sigaction(forwarded[k], &saved[k], NULL);
        sigprocmask(SIG_SETMASK, &old_mask, NULL);
        close(po[0]); close(po[1]); close(pe[0]); close(pe[1]);
        return -1;
    }
    if (pid == 0) {
        sigprocmask(SIG_SETMASK, &old_mask, NULL);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(1);
        if (dup2(po[1], 1) < 0 || dup2(pe[1], 2) < 0) _exit(126);
        set_exec_guard(j->path);
        sigaction(SIGCHLD, &inherited_sigchld, NULL);
        execv(j->path, j->argv);
        int e = errno;
        fprintf(stderr, "ltocache: cannot execute '%s': %s\n", j->path, strerror(e));
        _exit(e == ENOENT ? 127 : 126);
    }
    compiler_pid = pid;
    sigprocmask(SIG_SETMASK, &old_mask, NULL);
    close(po[1]);
    close(pe[1]);
    struct pollfd fds[2] = {{po[0], POLLIN, 0}, {pe[0], POLLIN, 0}};
    struct capture *caps[2] = {out, err};
    int open_fds = 2;
    unsigned char chunk[65536];
    long long grace = 0;
    while (open_fds > 0) {
        check_grace(&grace);
        if (poll(fds, 2, grace ? (int)(grace - now_ms() > 0 ? grace - now_ms() : 0) : -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !fds[i].revents) continue;
            ssize_t r = read(fds[i].fd, chunk, sizeof chunk);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_fds--;
            } else {
                capture_add(caps[i], chunk, (size_t)r);
            }
        }
    }
    for (int i = 0; i < 2; i++)
        if (fds[i].fd >= 0) close(fds[i].fd);
    int st = 0;
    for (;;) {
        check_grace(&grace);
        pid_t w = waitpid(pid, &st, grace ? WNOHANG : 0);
        if (w == pid) break;
        if (w < 0 && errno != EINTR) { st = 1 << 8; break; }
        if (w == 0) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    sigprocmask(SIG_BLOCK, &block, NULL);
    compiler_pid = 0;
    for (size_t k = 0; k < NFORWARDED; k++)
        if (installed[k]) sigaction(forwarded[k], &saved[k], NULL);
    if (hold) {
        sigset_t blocked;
        hold_signals(&blocked);
        *hold = old_mask;
    } else {
        sigprocmask(SIG_SETMASK, &old_mask, NULL);
    }
    *sig = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : *sig ? 128 + *sig : 1;
    return 0;
}

/* Reports outputs stored by us after an 'S': u8 'E', u8 memo written, u32 n, n x (digest, u64
 * size). The daemon needs nothing more from us: no acknowledgement is awaited. */
static void report_stored(int fd, const struct stored_outputs *st) {
    struct buf b = {0};
    put_u32(&b, 0);
    put_u8(&b, LTOC_FRAME_STORED);
    put_u8(&b, st->memo_written ? 1 : 0);
    put_u32(&b, st->n);
    for (uint32_t i = 0; i < st->n; i++) {
        put(&b, st->digest[i], DIGEST_HEX_LEN);
        put_u32(&b, (uint32_t)st->size[i]);
        put_u32(&b, (uint32_t)(st->size[i] >> 32));
    }
    if (b.p && !b.failed) {
        uint32_t n = (uint32_t)(b.len - 4);
        for (int k = 0; k < 4; k++) b.p[k] = (unsigned char)(n >> (8 * k));
        write_all(fd, b.p, b.len, 1);
    }
    free(b.p);
}

/* The redirected temp that a termination signal removes before it ends us (ack_wait_begin). */
static const char *volatile dropped_on_signal;

static void drop_temp_and_die(int s) {
    const char *t = dropped_on_signal;
    if (t) unlink(t);
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    signal(s, SIG_DFL);
    raise(s); /* blocked while this runs: delivered, with the default action, on return */
}

static const int dropping[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
#define NDROPPING (sizeof dropping / sizeof *dropping)

struct ack_wait {
    struct sigaction saved[NDROPPING];
    int installed[NDROPPING];
};

/* Reporting 'D' and waiting for 'A' is a wait on the daemon, up to the silence timeout: the
 * termination signals are not held for it (a Ctrl-C would wait for a stuck daemon). One that
 * arrives (or was held since the compiler's end) removes the temp and ends us by it, as it ends
 * clang; whose disposition is not the default keeps it. `held` is the mask to wait under;
 * ack_wait_end holds them again, for the rename. */
static void ack_wait_begin(struct ack_wait *w, const char *temp, const sigset_t *held) {
    struct sigaction drop;
    memset(&drop, 0, sizeof drop);
    drop.sa_handler = drop_temp_and_die;
    sigemptyset(&drop.sa_mask);
    dropped_on_signal = temp;
    for (size_t k = 0; k < NDROPPING; k++) {
        w->installed[k] = sigaction(dropping[k], NULL, &w->saved[k]) == 0 &&
                          w->saved[k].sa_handler == SIG_DFL && !(w->saved[k].sa_flags & SA_SIGINFO) &&
                          sigaction(dropping[k], &drop, NULL) == 0;
    }
    sigprocmask(SIG_SETMASK, held, NULL);
}

static void ack_wait_end(struct ack_wait *w) {
    sigset_t ignored;
    hold_signals(&ignored);
    for (size_t k = 0; k < NDROPPING; k++)
        if (w->installed[k]) sigaction(dropping[k], &w->saved[k], NULL);
    dropped_on_signal = NULL;
}

/* Whether the captured stream shows `name`. */
static int mentions(const struct capture *c, const char *name) {
    return c->len && memmem(c->p, c->len, name, strlen(name)) != NULL;
}

/* Reports a compile with 'D' and waits for the daemon's 'A' (or its going away). */
static void report_done(int fd, const struct capture *out, const struct capture *err, int status,
                        int sig) {
    unsigned char hdr[4 + 1 + 4 + 4 + 4], mid[4];
    uint32_t total = (uint32_t)(LTOC_RESULT_OVERHEAD + out->len + err->len);
    uint32_t words[4] = {total, (uint32_t)status, (uint32_t)sig, (uint32_t)out->len};
    for (int wd = 0; wd < 4; wd++)
        for (int b = 0; b < 4; b++)
            hdr[(wd == 0 ? 0 : 1 + 4 * wd) + b] = (unsigned char)(words[wd] >> (8 * b));
    hdr[4] = LTOC_FRAME_DONE;
    for (int b = 0; b < 4; b++) mid[b] = (unsigned char)(err->len >> (8 * b));
    if (write_all(fd, hdr, sizeof hdr, 1) == 0 && write_all(fd, out->p, out->len, 1) == 0 &&
        write_all(fd, mid, 4, 1) == 0 && write_all(fd, err->p, err->len, 1) == 0) {
        uint32_t n = 0;
        free(read_reply(fd, &n)); /* 'A', or EOF if the daemon went away: either way, go on */
    }
}

/* A NUL-terminated copy of wire bytes (reply_parse_compile checked that they hold no NUL). */
static char *wire_str(struct memo_bytes b) {
    return strndup((const char *)b.p, b.len);
}

/* The daemon answered 'M' or 'S' (a miss, decoded in *rc): run the compiler here. After 'S'
 * (`cache` set, rc->memo its memo), a clean run with no output is stored by us (storeback.h)
 * and reported with 'E'; otherwise the status and output go back in a 'D' frame and we wait for
 * the daemon's acknowledgement (it reads the output files before it answers, so it stores
 * exactly what clang wrote). Then replay the output and exit like the compiler. A daemon gone
 * at any point changes nothing for the build.
 * With an output redirect (docs/protocol.md "Output redirect") argument rc->index is replaced, so
 * clang writes the object to a private temp: it is stored (or read by the daemon) from there and
 * only then renamed onto the output, so no other process's write to the output is what gets
 * stored. Termination signals are held while the temp stands, but for the wait on the daemon
 * after 'D' (ack_wait_begin). A redirected run that printed the temp's name is redone by
 * exec'ing the compiler as given, so the build sees clang's own message; any other failure or
 * signal death is clang's outcome as it is (what clang left at the temp goes to the output).
 * Never returns. */
_Noreturn static void compile_and_report(int fd, const struct job *j, const struct reply_compile *rc,
                                         const char *cache, const char *lookup) {
    struct capture out = {NULL, 0, 0, 1, 0, 0}, err = {NULL, 0, 0, 2, 0, 0};
    int status = 1, sig = 0;
    unsigned char *tmpl = cache ? (unsigned char *)rc->memo.p : NULL;
    size_t tlen = rc->memo.len;
    struct pinned pin = {0, NULL};
    if (tmpl && pin_content_files(tmpl, tlen, &pin) != 0) tmpl = NULL;
    struct written w = {NULL, NULL, {0, 0}};
    char *arg = NULL, *temp = NULL, *output = NULL;
    if (rc->redirect) {
        arg = wire_str(rc->arg);
        temp = wire_str(rc->temp);
        output = wire_str(rc->output);
        if (!arg || !temp || !output || rc->index >= (uint32_t)(j->argc - 1)) {
            close(fd);
            direct_exec(j);
        }
        /* Checked again here: the daemon checked with its own credentials, earlier. */
        if (!replaced_by_rename(output)) {
            close(fd);
            direct_exec(j);
        }
    }
    /* Told so, clang gets -fcolor-diagnostics first (its own later flags still win): it sees a
     * pipe where our stderr is a terminal. The daemon stores the diagnostics without colour. */
    char **argv = malloc(((size_t)j->argc + 2) * sizeof *argv);
    if (!argv) {
        close(fd);
        direct_exec(j);
    }
    int k = 0;
    argv[k++] = j->argv[0];
    if (rc->options & LTOC_COMPILE_OPTION_COLOUR) argv[k++] = (char *)"-fcolor-diagnostics";
    for (int i = 1; i <= j->argc; i++) /* argv[argc] is NULL */
        argv[k++] = arg && i == 1 + (int)rc->index ? arg : j->argv[i];
    struct job run = {j->path, argv, k - 1};
    sigset_t mask;
    if (run_captured(&run, &out, &err, &status, &sig, temp ? &mask : NULL) != 0) {
        close(fd);
        direct_exec(j);
    }
    clock_gettime(CLOCK_REALTIME, &w.ended);
    int clean = status == 0 && sig == 0;
    int shown = out.through || err.through; /* passed on already: cannot be redone */
    if (temp) {
        const char *name = strrchr(temp, '/') + 1;
        /* Only a run that names the temp is redone: any other failure is clang's outcome as it
         * is (redirectedRunOutcome in src/pipeline/outputRedirect.ts). */
        int named = mentions(&out, name) || mentions(&err, name);
        if (!received_signal && !shown && named) {
            unlink(temp);
            close(fd);
            sigprocmask(SIG_SETMASK, &mask, NULL);
            direct_exec(j);
        }
        if (clean) {
            w.temp = temp;
            w.output = output;
        } else {
            /* What clang left at the temp is the output's, as without the redirect. */
            if (place_redirected(temp, output) != 0) unlink(temp);
            sigprocmask(SIG_SETMASK, &mask, NULL);
            temp = NULL;
        }
    }
    struct stored_outputs st;
    if (tmpl && clean && !shown && out.len == 0 && err.len == 0 &&
        store_outputs(cache, lookup, tmpl, tlen, &pin, &w, &st) == 0) {
        report_stored(fd, &st);
        close(fd);
        if (temp) sigprocmask(SIG_SETMASK, &mask, NULL);
        exit_like(0, 0);
    }
    pinned_free(&pin);
    struct ack_wait aw;
    if (temp) ack_wait_begin(&aw, temp, &mask);
    if (!shown) report_done(fd, &out, &err, status, sig);
    if (temp) ack_wait_end(&aw);
    close(fd);
    if (temp) {
        /* The daemon has read the temp (or gone): the object takes the output's name. */
        int placed = place_redirected(temp, output) == 0;
        if (!placed) unlink(temp);
        sigprocmask(SIG_SETMASK, &mask, NULL);
        if (!placed) direct_exec(j);
    }
    int ok = !out.lost && !err.lost && write_all(1, out.p, out.len, 0) == 0;
    if (write_all(2, err.p, err.len, 0) != 0) ok = 0;
    /* Output we could not deliver must not look like success. */
    exit_like(ok || status != 0 || sig != 0 ? status : 1, sig);
}

/* getcwd into a malloc'd buffer of sufficient size (POSIX has no getcwd(NULL, 0)).
 * NULL if the directory is gone or unreachable: then we fall back. */
static char *current_dir(void) {
    for (size_t cap = 256; cap <= (1u << 20); cap *= 2) {
        char *b = malloc(cap);
        if (!b) return NULL;
        if (getcwd(b, cap)) return b;
        free(b);
        if (errno != ERANGE) return NULL;
    }
    return NULL;
}

/* Connects to the daemon (starting it if needed), sends the whole request (freed here) and reads
 * the first reply frame. Returns the malloc'd reply payload and its length, or NULL; `*fd` is the
 * open connection (the caller closes it), or -1. */
static unsigned char *send_request(struct buf *req, int *fd, uint32_t *n) {
    *fd = connect_daemon();
    if (*fd < 0) { free(req->p); return NULL; }
    errno = 0;
    int sent = write_all(*fd, req->p, req->len, 1) == 0;
    free(req->p);
    unsigned char *reply = sent ? read_reply(*fd, n) : NULL;
    if (!reply && (errno == EAGAIN || errno == EWOULDBLOCK))
        record_start_failure(silent.sock_dir, silent.marker);
    return reply;
}

/* Replays an 'R' reply and exits like it; returns (after freeing it) for anything else. */
static void replay_or_return(unsigned char *reply, uint32_t n) {
    if (!reply) return;
    int status = 0, sig = 0;
    int ok = replay_result(reply, n, &status, &sig) == 0;
    free(reply);
    if (ok) exit_like(status, sig);
}

/* A 'P' whose reason says the daemon does not know a flag bit we set (docs/protocol.md). */
static int unknown_flag_refusal(const unsigned char *reply, uint32_t n) {
    static const char reason[] = "malformed request: unknown flag bits";
    size_t k = sizeof reason - 1;
    return reply && n >= 5 + k && reply[0] == LTOC_FRAME_PASSTHROUGH && get_u32(reply + 1) == n - 5 &&
           memcmp(reply + 5, reason, k) == 0;
}

/* Hands a backend job to the daemon. Returns only when the caller must fall back. */
static void run_via_daemon(const struct job *j) {
    /* The daemon runs the compiler itself, from another cwd: send an absolute path. */
    char *cwd = current_dir();
    if (!cwd) return;
    char *abs = j->path[0] == '/' ? strdup(j->path) : concat3(cwd, "/", j->path);
    char *memo_cache = abs ? cache_dir() : NULL;
    char lookup[DIGEST_HEX_LEN + 1] = "";
    if (memo_cache) {
        memo_serve(memo_cache, abs, cwd, j->argc - 1, j->argv + 1);
        memo_lookup_digest(abs, cwd, j->argc - 1, j->argv + 1, lookup);
    }
    /* LTOCACHE_MEMO=0 (the daemon path, for benchmarks) also leaves storing to the daemon. */
    const char *memo_env = getenv("LTOCACHE_MEMO");
    int stores = memo_cache && !(memo_env && strcmp(memo_env, "0") == 0);
    struct buf req = {0};
    uint32_t flags = LTOC_FLAG_COMPILES_ON_MISS | LTOC_FLAG_COMPILE_OPTIONS |
                     LTOC_FLAG_REDIRECTS_OUTPUT | (stores ? LTOC_FLAG_STORES_ON_MISS : 0);
    int with_options = 1;
    int built = abs && build_request(&req, LTOC_FRAME_COMPILE, flags, abs, cwd, j->argv + 1,
                                     j->argc - 1) == 0;
    if (!built) { free(req.p); free(memo_cache); free(abs); free(cwd); return; }

    int fd = -1;
    uint32_t n = 0;
    unsigned char *reply = send_request(&req, &fd, &n);
    /* A daemon older than flag bits 2 and 3 (still running across an upgrade) refuses them by
     * name: ask again without them rather than lose the cache until that daemon exits. */
    if (unknown_flag_refusal(reply, n)) {
        free(reply);
        reply = NULL;
        close(fd);
        stores = 0;
        with_options = 0;
        req = (struct buf){0};
        if (build_request(&req, LTOC_FRAME_COMPILE, LTOC_FLAG_COMPILES_ON_MISS, abs, cwd,
                          j->argv + 1, j->argc - 1) == 0)
            reply = send_request(&req, &fd, &n);
        else {
            free(req.p);
            fd = -1;
        }
    }
    /* 'M' and 'S' carry a byte of LTOC_COMPILE_OPTION_* bits after the type when we set
     * LTOC_FLAG_COMPILE_OPTIONS (and an output redirect if it says so); then 'S' carries the
     * memo to store under (the memo file's bytes). */
    struct reply_compile rc;
    if (reply && reply_parse_compile(reply, n, with_options, &rc) == 0 &&
        (rc.type == LTOC_FRAME_COMPILE_YOURSELF || stores))
        compile_and_report(fd, j, &rc, rc.type == LTOC_FRAME_STORE_YOURSELF ? memo_cache : NULL,
                           lookup);
    /* 'H': a team-cache hit to store, then serve from the memo it carries; if that cannot be
     * done, the compiler runs (nothing was replaced). */
    if (reply && reply[0] == LTOC_FRAME_HIT_STORE && stores) {
        struct stored_outputs st;
        if (store_fetched(memo_cache, lookup, reply + 1, n - 1, &st) == 0) {
            report_stored(fd, &st);
            close(fd);
            memo_serve_counted(memo_cache, abs, cwd, j->argc - 1, j->argv + 1);
        }
        close(fd);
        direct_exec(j);
    }
    free(memo_cache);
    free(abs);
    free(cwd);
    if (fd >= 0) close(fd);
    replay_or_return(reply, n);
    /* 'P' (passthrough: the daemon asks us to run the compiler), or anything malformed or
     * unknown: fall back. The reason string of a 'P' is for the daemon's logs, not ours. */
}

/* `ltocache distribute ARGS...` (lld's DTLTO distributor): hands the whole distribution to the
 * daemon in one 'T' frame and replays its 'R' (the daemon reads the file and runs every job).
 * Returns only when the caller must fall back to the Node CLI: no daemon, 'P', anything else. */
static void distribute_via_daemon(int argc, char **argv) {
    char *cwd = current_dir();
    if (!cwd) return;
    struct buf req = {0};
    int built = build_request(&req, LTOC_FRAME_DISTRIBUTE, 0, "distribute", cwd, argv + 2,
                              argc - 2) == 0;
    free(cwd);
    if (!built) { free(req.p); return; }
    int fd = -1;
    uint32_t n = 0;
    unsigned char *reply = send_request(&req, &fd, &n);
    if (fd >= 0) close(fd);
    replay_or_return(reply, n);
}

/* `ltocache distribute FILE.json`: first the distribution memo (client/distmemo.c), under the
 * same cache dir as the job memos. Exits when it serves; returns for the daemon path. */
static void dist_memo_fast_path(const char *file_arg) {
    char *cwd = current_dir();
    char *cache = cwd ? cache_dir() : NULL;
    if (cache) dist_memo_serve(cache, cwd, file_arg);
    free(cache);
    free(cwd);
}

/* ---------------------------------------------------------------------------------------- */

static int is_cli_command(const char *a) {
    static const char *const cmds[] = {"stats", "daemon", "config", "clear", "serve",
                                       "explain", "trace", "report", "demo", "distribute", "help",
                                       "--help", "-h", "--version", "version",
                                       "build-client"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (strcmp(a, cmds[i]) == 0) return 1;
    return 0;
}

#ifndef LTOCACHE_VERSION
#define LTOCACHE_VERSION "unknown"
#endif

/* `ltocache --version`: our own version first (it needs no Node), then the CLI adds the
 * daemon's and the store layout's, comparing the daemon with LTOCACHE_CLIENT_VERSION. */
static void print_client_version(void) {
    char *self = self_path();
    printf("client  %s (protocol %u) %s\n", LTOCACHE_VERSION, LTOC_PROTOCOL_VERSION,
           self ? self : "");
    fflush(stdout);
    free(self);
    setenv("LTOCACHE_CLIENT_VERSION", LTOCACHE_VERSION, 1);
}

/* Prefix mode without a compiler: run the TypeScript CLI with our arguments. */
_Noreturn static void exec_cli(int argc, char **argv) {
    char *cli = cli_path();
    if (!cli) {
        fprintf(stderr, "ltocache: cannot locate own executable: %s\n", strerror(errno));
        exit(127);
    }
    char **args = calloc((size_t)argc + 2, sizeof *args);
    if (!args) exit(127);
    const char *node = node_binary();
    args[0] = (char *)node;
    args[1] = cli;
    for (int i = 1; i < argc; i++) args[i + 1] = argv[i];
    execvp(node, args);
    fprintf(stderr, "ltocache: cannot run '%s': %s\n", node, strerror(errno));
    exit(127);
}

/* Test hook (documented in docs/protocol.md): LTOCACHE_PRINT_SOCKET=1 prints the socket path
 * this client would use, so tests can check it agrees with the TypeScript computation. */
_Noreturn static void print_socket(void) {
    char sock_dir[64];
    struct sockaddr_un addr;
    if (socket_location(sock_dir, &addr) != 0) {
        fprintf(stderr, "ltocache: no absolute cache directory\n");
        exit(1);
    }
    printf("%s\n", addr.sun_path);
    exit(0);
}

/* A closed fd 0, 1 or 2 is opened on /dev/null, close-on-exec, before anything else: replaying
 * a diagnostic to a closed stderr then succeeds as clang's write does (LLVM reopens them on
 * /dev/null at start-up), no socket or pipe of ours can land on them, and a compiler exec'd
 * directly still finds them closed. */
static void open_std_fds(void) {
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) >= 0 || errno != EBADF) continue;
        int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (nul < 0) return;
        if (nul != fd) {
            /* Lower fds are open by now, so open() returned fd itself unless it failed. */
            close(nul);
            return;
        }
    }
}

/* Whether stdout or stderr is a pipe or socket nobody reads any more. clang writing a diagnostic
 * there ends with 74 (LLVM's EX_IOERR, or its SIGPIPE handler) and leaves no object, which a
 * replay after the outputs are placed cannot match: such a job runs clang itself. */
static int output_broken(void) {
    struct pollfd p[2] = {{.fd = 1, .events = POLLOUT}, {.fd = 2, .events = POLLOUT}};
    if (poll(p, 2, 0) <= 0) return 0;
    return ((p[0].revents | p[1].revents) & (POLLERR | POLLHUP)) != 0;
}

/* Whether the daemon may read the response file `path` as clang would: not something other than
 * a regular file (a named pipe's data belongs to its one reader, clang), and not named through
 * this process's descriptors (/dev/fd/N from `@<(gen-flags)`, /dev/stdin, /proc/...: in the
 * daemon they name its own). A missing file is the daemon's to report (clang then runs). */
static int daemon_can_read(const char *path) {
    static const char *const own[] = {"/dev/fd/", "/dev/stdin", "/dev/stdout", "/dev/stderr",
                                      "/proc/"};
    for (size_t k = 0; k < sizeof own / sizeof *own; k++)
        if (starts_with(path, own[k])) return 0;
    struct stat st;
    return stat(path, &st) != 0 || S_ISREG(st.st_mode);
}

int main(int argc, char **argv) {
    open_std_fds();
    const char *p = getenv("LTOCACHE_PRINT_SOCKET");
    if (p && strcmp(p, "1") == 0) print_socket();
    memo_print_digest_hook();

    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGCHLD, &dfl, &inherited_sigchld);
    if (argc > 0) argv0 = argv[0];
    find_self();

    const char *self_name = argc > 0 ? base_name(argv[0]) : "";
    struct job j;
    const char *given;  /* the compiler name as the user spelled it */
    int prefix = starts_with(self_name, "ltocache");
    if (prefix) {
        if (argc >= 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0))
            print_client_version();
        if (argc >= 2 && strcmp(argv[1], "distribute") == 0 && !skip.self_exec) {
            const char *off = env_nonempty("LTOCACHE_DISABLE");
            if (!(off && strcmp(off, "0") != 0)) {
                if (argc == 3) dist_memo_fast_path(argv[2]);
                distribute_via_daemon(argc, argv);
            }
        }
        if (argc < 2 || is_cli_command(argv[1])) exec_cli(argc, argv);
        given = argv[1];
        j.argv = argv + 1;
        j.argc = argc - 1;
    } else {
        given = self_name;  /* masquerade: argv[0] is the compiler name, keep it as given */
        j.argv = argv;
        j.argc = argc;
    }
    if (prefix && strchr(given, '/')) {
        j.path = given;  /* prefix mode with an explicit path: use it as is */
    } else {
        j.path = find_on_path(base_name(given));
        if (!j.path) {
            fprintf(stderr, "ltocache: cannot find compiler '%s' on PATH\n", given);
            return 127;
        }
    }

    /* Only a possible backend job is worth a socket round trip; a response file may hide
     * -fthinlto-index=, so "@..." goes to the daemon too (it reads the file), unless the daemon
     * cannot read it as clang will: then clang runs as is. */
    const char *disable = env_nonempty("LTOCACHE_DISABLE");
    int backend = 0, unreadable = 0;
    for (int i = 1; i < j.argc; i++) {
        if (starts_with(j.argv[i], "-fthinlto-index=")) backend = 1;
        if (j.argv[i][0] == '@') {
            backend = 1;
            if (!daemon_can_read(j.argv[i] + 1)) unreadable = 1;
        }
    }
    if (backend && !unreadable && !skip.self_exec && !(disable && strcmp(disable, "0") != 0) &&
        !output_broken())
        run_via_daemon(&j);
    direct_exec(&j);
}
