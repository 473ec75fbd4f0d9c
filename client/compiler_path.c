/*
 * Finding the compiler and this program, and exec'ing the compiler (compiler_path.h).
 */
#include "compiler_path.h"

#include "helpers.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

int exec_compiler(const struct job *j) {
    set_exec_guard(j->path);
    sigaction(SIGCHLD, &inherited_sigchld, NULL);
    execv(j->path, j->argv);
    int e = errno;
    fprintf(stderr, "ltocache: cannot execute '%s': %s\n", j->path, strerror(e));
    return e == ENOENT ? 127 : 126;
}

void default_sigchld(void) {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGCHLD, &dfl, &inherited_sigchld);
}

_Noreturn void direct_exec(const struct job *j) {
    exit(exec_compiler(j));
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

char *find_on_path(const char *name) {
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

char *self_path(void) {
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

int find_self(const char *given_argv0) {
    struct stat st;
    argv0 = given_argv0;
    if (self_exec_guard()) {
        skip.self_exec = 1;
        return 1;
    }
    if (stat("/proc/self/exe", &st) == 0) {
        skip.exact = 1;
        add_skip(st.st_dev, st.st_ino);
        return 0;
    }
    char *self = self_path();
    if (self && stat(self, &st) == 0) add_skip(st.st_dev, st.st_ino);
    free(self);
    return 0;
}
