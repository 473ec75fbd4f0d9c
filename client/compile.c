/*
 * A miss compiled here: the compiler run with its output captured, its outcome stored or
 * reported to the daemon, then replayed (compile.h).
 */
#include "compile.h"

#include "compiler_path.h"
#include "frames.h"
#include "helpers.h"
#include "io.h"
#include "limits.h"
#include "memo_internal.h"
#include "replay.h"
#include "reply.h"
#include "storeback.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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
        _exit(exec_compiler(j));
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
    if (send_done(fd, (uint32_t)status, (uint32_t)sig, out->p, out->len, err->p, err->len) == 0) {
        uint32_t n = 0;
        free(read_reply(fd, &n)); /* 'A', or EOF if the daemon went away: either way, go on */
    }
}

/* A NUL-terminated copy of wire bytes (reply_parse_compile checked that they hold no NUL). */
static char *wire_str(struct memo_bytes b) {
    return strndup((const char *)b.p, b.len);
}

_Noreturn void compile_and_report(int fd, const struct job *j, const struct reply_compile *rc,
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
    deliver_and_exit(out.p, out.len, err.p, err.len, out.lost || err.lost, status, sig);
}
