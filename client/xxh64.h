/*
 * XXH64 (the published xxHash 64-bit algorithm), streaming, and the content digest used across
 * ltocache: "xxh64x2-128" = hex(xxh64 seed 0) + hex(xxh64 seed DIGEST_SEED_B) over the same
 * bytes, 32 lowercase hex digits (src/key/hash.ts).
 */
#ifndef LTOCACHE_XXH64_H
#define LTOCACHE_XXH64_H

#include <stddef.h>
#include <stdint.h>

#define DIGEST_SEED_B 0x9e3779b97f4a7c15ull
#define DIGEST_HEX_LEN 32

struct xxh64 {
    uint64_t acc[4];
    uint64_t seed;
    uint64_t total;
    unsigned char buf[32];
    size_t buffered;
};

void xxh64_init(struct xxh64 *s, uint64_t seed);
void xxh64_update(struct xxh64 *s, const void *data, size_t len);
/* Does not modify the state: more data may follow. */
uint64_t xxh64_final(const struct xxh64 *s);
uint64_t xxh64(const void *data, size_t len, uint64_t seed);

/* The two streams of one content digest. */
struct digest128 {
    struct xxh64 a, b;
};

void digest128_init(struct digest128 *d);
void digest128_update(struct digest128 *d, const void *data, size_t len);
/* Writes 32 lowercase hex digits and a NUL into out. */
void digest128_hex(const struct digest128 *d, char out[DIGEST_HEX_LEN + 1]);
void digest128_bytes_hex(const void *data, size_t len, char out[DIGEST_HEX_LEN + 1]);

#endif
