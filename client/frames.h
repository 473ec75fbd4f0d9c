/*
 * The client's side of the wire (docs/protocol.md, mirrored in src/protocol/clientFrames.ts):
 * the frames it sends and the reply frames it reads, within the limits of limits.h.
 */
#ifndef LTOCACHE_FRAMES_H
#define LTOCACHE_FRAMES_H

#include <stddef.h>
#include <stdint.h>

struct stored_outputs;

/* Growable byte buffer for the request. `failed` latches on OOM or size overflow. */
struct buf {
    unsigned char *p;
    size_t len, cap;
    int failed;
};

/* Builds a whole request frame (length prefix included): 'C' for a compile, 'T' for a DTLTO
 * distribution (same layout; `compiler` is then "distribute"). Returns 0, or -1 (fall back). */
int build_request(struct buf *b, unsigned type, uint32_t flags, const char *compiler,
                  const char *cwd, char **args, int nargs);

/* Reads one complete reply frame, skipping keepalives ('W'). Returns a malloc'd payload and
 * its length, or NULL (EOF, error, or the socket's receive timeout: a silent daemon). */
unsigned char *read_reply(int fd, uint32_t *len);

/* Sends a compile's outcome as 'D': u32 status, u32 signal (0 if none), then stdout and stderr,
 * each as u32 length and bytes (each at most LTOC_MAX_OUTPUT_STREAM). The streams are written
 * from where they are, not copied. Returns 0 when the whole frame went out, else -1. */
int send_done(int fd, uint32_t status, uint32_t sig, const unsigned char *out, size_t out_len,
              const unsigned char *err, size_t err_len);

/* Reports outputs stored by us after an 'S': u8 'E', u8 memo written, u32 n, n x (digest, u64
 * size). The daemon needs nothing more from us: no acknowledgement is awaited. */
void report_stored(int fd, const struct stored_outputs *st);

#endif
