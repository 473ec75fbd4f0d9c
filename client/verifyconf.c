/*
 * verify_configured (verifyconf.h), read the way src/config/config.ts reads `verify`:
 * LTOCACHE_VERIFY when set and non-empty; else the last `verify = …` line of the config file
 * (LTOCACHE_CONFIG when set and non-empty, else <cache dir>/ltocache.conf), `#` comments and
 * CRLF endings as there, a value in double quotes unquoted; else off. Only "off" is off. Any doubt
 * counts as on, and the daemon path decides: a file that cannot be read or is over
 * VERIFY_CONFIG_MAX bytes, LTOCACHE_CONFIG naming a missing file (the daemon refuses to start),
 * a line that starts with `verify` and is not `verify = VALUE` nor another key.
 */
#include "verifyconf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define VERIFY_CONFIG_MAX (64 * 1024)

static int space(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

static int is_off(const char *v, size_t n) {
    return n == 3 && memcmp(v, "off", 3) == 0;
}

/* The verdict of one line [p, end): -1 not about verify, 0 off, 1 on or in doubt. */
static int line_verdict(const char *p, const char *end) {
    /* A comment starts at a '#' at the start of the line or after white space. */
    for (const char *c = p; c < end; c++)
        if (*c == '#' && (c == p || space(c[-1]))) {
            end = c;
            break;
        }
    while (p < end && space(*p)) p++;
    while (end > p && space(end[-1])) end--;
    static const char key[] = "verify";
    size_t k = sizeof key - 1;
    if ((size_t)(end - p) < k || memcmp(p, key, k) != 0) return -1;
    p += k;
    if (p < end && ((*p >= 'a' && *p <= 'z') || *p == '_')) return -1; /* another key */
    while (p < end && space(*p)) p++;
    if (p == end || *p != '=') return 1;
    p++;
    while (p < end && space(*p)) p++;
    size_t n = (size_t)(end - p);
    if (n >= 2 && p[0] == '"' && p[n - 1] == '"') {
        p++;
        n -= 2;
    }
    return is_off(p, n) ? 0 : 1;
}

int verify_configured(const char *cache_dir) {
    const char *env = getenv("LTOCACHE_VERIFY");
    if (env && *env) return is_off(env, strlen(env)) ? 0 : 1;
    const char *named = getenv("LTOCACHE_CONFIG");
    int fd;
    if (named && *named) fd = open(named, O_RDONLY | O_CLOEXEC);
    else {
        static const char tail[] = "/ltocache.conf";
        size_t d = strlen(cache_dir);
        char *path = malloc(d + sizeof tail);
        if (!path) return 1;
        memcpy(path, cache_dir, d);
        memcpy(path + d, tail, sizeof tail);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        free(path);
    }
    if (fd < 0) return errno == ENOENT && !(named && *named) ? 0 : 1;
    char *buf = malloc(VERIFY_CONFIG_MAX + 1);
    size_t len = 0;
    int failed = !buf;
    while (!failed && len <= VERIFY_CONFIG_MAX) {
        ssize_t r = read(fd, buf + len, VERIFY_CONFIG_MAX + 1 - len);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) failed = 1;
        if (r <= 0) break;
        len += (size_t)r;
    }
    close(fd);
    int on = 0;
    if (failed || len > VERIFY_CONFIG_MAX) on = 1;
    else
        for (const char *p = buf, *end = buf + len; p < end;) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            const char *stop = nl ? nl : end;
            int v = line_verdict(p, stop);
            if (v >= 0) on = v; /* the last setting wins */
            p = nl ? nl + 1 : end;
        }
    free(buf);
    return on;
}
