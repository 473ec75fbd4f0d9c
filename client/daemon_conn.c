/*
 * Where the daemon's socket is, and reaching the daemon there: starting it when nobody listens,
 * remembering failed starts and silent daemons (daemon_conn.h).
 */
#include "daemon_conn.h"

#include "compiler_path.h"
#include "frames.h"
#include "helpers.h"
#include "io.h"
#include "limits.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CONNECT_RETRY_NS (10L * 1000 * 1000)
/* After a daemon we started found the store held by another (its answer 'L'): how long the
 * holder gets to be found listening on our socket. */
#define LOST_START_WAIT_MS 250

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

char *cache_dir(void) {
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

int socket_location(char sock_dir[64], struct sockaddr_un *addr) {
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

char *cli_path(void) {
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

const char *node_binary(void) {
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

/* The marker "<sock_dir>/<hash><suffix>" beside the socket at `addr`. */
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
    /* "<sock_dir>/<hash>.startfail": its mtime is the last failed daemon start for this cache
     * dir; within START_FAILURE_MEMORY_S of it, jobs do not spawn a daemon. */
    char *sock_dir = silent.sock_dir, marker[sizeof ((struct sockaddr_un *)0)->sun_path + 16];
    struct sockaddr_un addr;
    if (socket_location(sock_dir, &addr) != 0) return -1;
    start_marker(&addr, marker, LTOC_START_FAILURE_MARKER_SUFFIX);
    start_marker(&addr, silent.marker, LTOC_SILENT_MARKER_SUFFIX);
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

unsigned char *send_request(struct buf *req, int *fd, uint32_t *n) {
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
