#include "io.h"

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

int write_all(int fd, const unsigned char *p, size_t n, int is_socket) {
    while (n > 0) {
        ssize_t w = is_socket ? send(fd, p, n, MSG_NOSIGNAL) : write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}
