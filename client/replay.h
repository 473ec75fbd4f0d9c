/*
 * Ending this process the way the compiler ended, whether it ran here or in the daemon.
 */
#ifndef LTOCACHE_REPLAY_H
#define LTOCACHE_REPLAY_H

#include <stdint.h>

/* Exits the way the compiler did: killed by signal `sig` (non-zero), die of the same signal
 * (no core file: the crash was the compiler's, not ours) so that make and the shell report it
 * the same way; signals that cannot kill us (stop/continue/ignore by default) and otherwise:
 * exit with `status`. */
_Noreturn void exit_like(int status, int sig);

/* Replays an 'R' reply and exits like it; returns (after freeing it) for anything else. */
void replay_or_return(unsigned char *reply, uint32_t n);

#endif
