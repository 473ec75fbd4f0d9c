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

_Noreturn void deliver_and_exit(const unsigned char *out, size_t out_len, const unsigned char *err,
                                size_t err_len, int lost, int status, int sig) {
    int ok = !lost && write_all(1, out, out_len, 0) == 0;
    if (write_all(2, err, err_len, 0) != 0) ok = 0;
    exit_like(ok || status != 0 || sig != 0 ? status : 1, sig);
}

/* An 'R' payload: 'R', i32 status (0..255), i32 signal (0..MAX_SIGNAL), str stdout, str stderr,
 * nothing else (reply_parse_result). A malformed one is not replayed: the caller falls back. */
void replay_or_return(unsigned char *reply, uint32_t n) {
    if (!reply) return;
    struct reply_result r;
    if (reply_parse_result(reply, n, &r) != 0) {
        free(reply);
        return;
    }
    deliver_and_exit(r.out.p, r.out.len, r.err.p, r.err.len, 0, r.status, r.sig);
}
