/* Small helpers shared by the front end's files. */
#ifndef LTOCACHE_HELPERS_H
#define LTOCACHE_HELPERS_H

/* getenv(name) when it is non-NULL and non-empty, else NULL. */
const char *env_nonempty(const char *name);

/* Malloc'd concatenation of up to three strings; NULL on OOM. */
char *concat3(const char *a, const char *b, const char *c);

/* CLOCK_MONOTONIC in milliseconds. */
long long now_ms(void);

#endif
