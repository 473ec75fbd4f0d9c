/*
 * Whether the stale-hit audit (`verify`, README "Configuration") is, or may be, on for a cache.
 */
#ifndef LTOCACHE_VERIFYCONF_H
#define LTOCACHE_VERIFYCONF_H

/* 1 when `verify` is on or cannot be ruled out for the cache in cache_dir, else 0. While it is on
 * every hit must reach the daemon to be audited, so the memo fast paths serve nothing. */
int verify_configured(const char *cache_dir);

#endif
