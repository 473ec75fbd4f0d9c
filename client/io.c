#include "io.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

int write_all(int fd, const unsigned char *p, size_t n, int is_socket) {
    while (n > 0) {
        ssize_t w = is_socket ? send(fd, p, n, MSG_NOSIGNAL) : write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        /* stdout/stderr may be a non-blocking pipe that a parent (a Node-based driver, `| tee`)
         * left so: wait until it takes more, as clang's own output does (LLVM's raw_fd_ostream
         * retries on EAGAIN). On the daemon's socket EAGAIN is its send timeout, an error. */
        if (w < 0 && !is_socket && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            if (poll(&pfd, 1, -1) < 0 && errno != EINTR) return -1;
            continue;
        }
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}
