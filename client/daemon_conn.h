/*
 * The daemon as the client reaches it: the cache directory and the socket named after it
 * (mirrored by src/config/cacheDir.ts and socketPathFor() in src/protocol/clientFrames.ts), the
 * CLI that starts it, and one request sent over a fresh connection.
 */
#ifndef LTOCACHE_DAEMON_CONN_H
#define LTOCACHE_DAEMON_CONN_H

#include <stdint.h>
#include <sys/un.h>

struct buf;

/* Cache dir: $LTOCACHE_DIR, else $XDG_CACHE_HOME/ltocache if that is absolute, else
 * $HOME/.cache/ltocache; trailing slashes stripped (keeping a lone "/"). Returns a malloc'd
 * string, or NULL if there is no usable *absolute* directory (then: direct exec). */
char *cache_dir(void);

/* Fills sock_dir ("/tmp/ltocache-<uid>") and addr ("<sock_dir>/<fnv hex>.sock").
 * Returns 0 on success, -1 if there is no usable cache dir. */
int socket_location(char sock_dir[64], struct sockaddr_un *addr);

/* Path of the TypeScript CLI entry point, relative to the real location of this executable:
 * <dir of self_path()>/../dist/src/cli/main.js (bin/ltocache in a checkout, prebuilt/ltocache in
 * the package), else <dir>/../../dist/src/cli/main.js (prebuilt/<platform>/ltocache run as is).
 * Malloc'd, NULL on failure. */
char *cli_path(void);

/* The node to run the CLI with: $LTOCACHE_NODE, else "node" (looked up on PATH). */
const char *node_binary(void);

/* Connects to the daemon (starting it if needed), sends the whole request (freed here) and reads
 * the first reply frame. Returns the malloc'd reply payload and its length, or NULL; `*fd` is the
 * open connection (the caller closes it), or -1.
 * Bounded: it never waits longer than the start timeout for a daemon to come up, and not at all
 * when the daemon reports a failed start or one failed recently; the connection gets send and
 * receive timeouts of LTOCACHE_SILENCE_TIMEOUT_MS. A daemon silent that long is remembered (the
 * ".silent" marker) so that the jobs of the next START_FAILURE_MEMORY_S seconds do not ask it. */
unsigned char *send_request(struct buf *req, int *fd, uint32_t *n);

#endif
