/*
 * Ending this process the way the compiler ended (replay.h).
 */
#include "replay.h"

#include "io.h"
#include "limits.h"
#include "reply.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>

_Noreturn void exit_like(int status, int sig) {
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

void replay_or_return(unsigned char *reply, uint32_t n) {
    if (!reply) return;
    int status = 0, sig = 0;
    int ok = replay_result(reply, n, &status, &sig) == 0;
    free(reply);
    if (ok) exit_like(status, sig);
}
