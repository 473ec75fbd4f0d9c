/*
 * The compiler this program stands in front of: finding it on PATH while skipping every link to
 * this program, and exec'ing it with exactly what we inherited.
 */
#ifndef LTOCACHE_COMPILER_PATH_H
#define LTOCACHE_COMPILER_PATH_H

/* The compiler to run: `path` is what execv gets (resolved, possibly relative), `argv` is the
 * argument vector as the user gave it (argv[0] = compiler name as given), `argc` its length. */
struct job {
    const char *path;
    char **argv;
    int argc;
};

/* Sets SIGCHLD to SIG_DFL, keeping the inherited disposition. We need SIG_DFL for our own
 * waitpid (an inherited SIG_IGN makes children vanish unreaped: ECHILD); every exec restores the
 * inherited one (exec_compiler) so the compiler starts with exactly what we were given. */
void default_sigchld(void);

/* Fills the list of executables known to be this program (skipped on PATH) with this program's
 * identity: from /proc/self/exe when it is mounted; otherwise from `argv0` ("" if there is none)
 * resolved the way execvp found it, or, in a process that exec'd itself by mistake, from
 * LTOCACHE_EXEC_GUARD. Returns 1 for such a mistaken exec of itself (it talks to no daemon: its
 * parent image already did), else 0. `argv0` must outlive every later call. */
int find_self(const char *argv0);

/* First executable regular file called `name` on PATH that is not skipped. Returns a malloc'd
 * path (relative if PATH has relative entries) or NULL. An empty PATH entry means the current
 * directory, as for execvp. */
char *find_on_path(const char *name);

/* Real path of this executable (malloc'd, NULL if unknown): /proc/self/exe, else argv[0]
 * resolved as execvp would have (as given if it has a '/', else the first match on PATH). */
char *self_path(void);

/* Execs the compiler (same args, env and stdio): without an exact self identity it first
 * records LTOCACHE_EXEC_GUARD (the candidate may be this program again) and restores the
 * inherited SIGCHLD disposition. Returns only if the exec failed, having said why on stderr,
 * with the status to exit with: 127 when the compiler is not found, else 126 (as a shell). */
int exec_compiler(const struct job *j);

/* Replace this process with the real compiler, same args/env/stdio. Never returns. The socket
 * (if any) is SOCK_CLOEXEC, SIGPIPE was never touched (we use MSG_NOSIGNAL) and SIGCHLD is
 * restored, so the compiler inherits exactly what we inherited. */
_Noreturn void direct_exec(const struct job *j);

#endif
