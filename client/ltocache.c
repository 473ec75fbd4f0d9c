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
 * starting Node alone costs ~90 ms. So the client parses no compiler flags and holds no cache
 * knowledge beyond its memo fast paths; it only moves bytes. All other knowledge lives in the
 * TypeScript daemon. The wire format is described in docs/protocol.md and mirrored in
 * src/protocol/clientFrames.ts.
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
 * (ours: see set_exec_guard() in compiler_path.c), and LTOCACHE_PRINT_SOCKET=1 (tests only: print
 * the socket path and exit 0). The memo fast paths read LTOCACHE_MEMO (0: off, and no store-back),
 * LTOCACHE_CONFIG and LTOCACHE_VERIFY (verifyconf.c), and the test hooks LTOCACHE_PRINT_DIGEST and
 * LTOCACHE_PRINT_LOOKUP (memo.c, docs/protocol.md).
 *
 * Limits, frame types and the protocol version come from limits.h, generated from
 * src/protocol/limits.ts.
 *
 * This file holds main and the mode dispatch. The rest, by job:
 *   compiler_path.c  finding the compiler on PATH past every link to us, exec'ing it (exec guard)
 *   daemon_conn.c    cache dir and socket location, starting and connecting to the daemon
 *   frames.c         request frames built and reply frames read (the wire)
 *   compile.c        a miss compiled here: captured run, signal forwarding, redirect, 'D' or 'E'
 *   replay.c         exiting like the compiler, replaying an 'R'
 *   helpers.c        small string, environment and clock helpers
 *   memo.c, distmemo.c, pack.c, storeback.c, reply.c, ...  the fast paths and what they share
 *                    (README.md "Layout")
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "limits.h"
#include "compile.h"
#include "compiler_path.h"
#include "daemon_conn.h"
#include "distmemo.h"
#include "frames.h"
#include "helpers.h"
#include "memo.h"
#include "replay.h"
#include "reply.h"
#include "storeback.h"

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static int starts_with(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
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
    if (reply_is_unknown_flag_refusal(reply, n)) {
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

    default_sigchld();
    int self_exec = find_self(argc > 0 ? argv[0] : "");

    const char *self_name = argc > 0 ? base_name(argv[0]) : "";
    struct job j;
    const char *given;  /* the compiler name as the user spelled it */
    int prefix = starts_with(self_name, "ltocache");
    if (prefix) {
        if (argc >= 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0))
            print_client_version();
        if (argc >= 2 && strcmp(argv[1], "distribute") == 0 && !self_exec) {
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
    if (backend && !unreadable && !self_exec && !(disable && strcmp(disable, "0") != 0) &&
        !output_broken())
        run_via_daemon(&j);
    direct_exec(&j);
}
