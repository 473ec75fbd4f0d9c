/*
 * Ending this process the way the compiler ended, whether it ran here or in the daemon.
 */
#ifndef LTOCACHE_REPLAY_H
#define LTOCACHE_REPLAY_H

#include <stddef.h>
#include <stdint.h>

/* Exits the way the compiler did: killed by signal `sig` (non-zero), die of the same signal
 * (no core file: the crash was the compiler's, not ours) so that make and the shell report it
 * the same way; signals that cannot kill us (stop/continue/ignore by default) and otherwise:
 * exit with `status`. */
_Noreturn void exit_like(int status, int sig);

/* Writes the compiler's stdout and stderr and exits like it (exit_like). Output that was `lost`
 * (not all captured) or could not be written turns a success into status 1: a build must not take
 * a missing diagnostic or a truncated stdout for success. A lost capture writes no stdout. */
_Noreturn void deliver_and_exit(const unsigned char *out, size_t out_len, const unsigned char *err,
                                size_t err_len, int lost, int status, int sig);

/* Replays an 'R' reply and exits like it; returns (after freeing it) for anything else. */
void replay_or_return(unsigned char *reply, uint32_t n);

#endif
