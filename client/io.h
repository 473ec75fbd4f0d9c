/* Small I/O helpers shared by the client's translation units. */
#ifndef LTOCACHE_IO_H
#define LTOCACHE_IO_H

#include <stddef.h>

/* Writes all n bytes, retrying on EINTR, and on another fd waiting out EAGAIN (a non-blocking
 * pipe). On a socket (is_socket) it sends with MSG_NOSIGNAL, so a vanished peer is an EPIPE, not
 * a SIGPIPE death, and EAGAIN (the send timeout) is an error. Returns 0, or -1 on error. */
int write_all(int fd, const unsigned char *p, size_t n, int is_socket);

#endif
