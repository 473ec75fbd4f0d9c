/* XXH64 written from the algorithm's description: four accumulators over 32-byte stripes,
 * merged, then the tail in 8/4/1-byte steps, then the avalanche. Little-endian input reads are
 * done bytewise so the result does not depend on host byte order or alignment. */
#include "xxh64.h"

#include <string.h>

#define P1 0x9E3779B185EBCA87ull
#define P2 0xC2B2AE3D27D4EB4Full
#define P3 0x165667B19E3779F9ull
#define P4 0x85EBCA77C2B2AE63ull
#define P5 0x27D4EB2F165667C5ull

static uint64_t rotl(uint64_t x, unsigned r) {
    return (x << r) | (x >> (64 - r));
}

static uint64_t le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t round64(uint64_t acc, uint64_t lane) {
    acc += lane * P2;
    acc = rotl(acc, 31);
    return acc * P1;
}

static uint64_t merge(uint64_t h, uint64_t acc) {
    h ^= round64(0, acc);
    return h * P1 + P4;
}

static void stripe(uint64_t acc[4], const unsigned char *p) {
    for (int i = 0; i < 4; i++) acc[i] = round64(acc[i], le64(p + 8 * i));
}

void xxh64_init(struct xxh64 *s, uint64_t seed) {
    s->seed = seed;
    s->acc[0] = seed + P1 + P2;
    s->acc[1] = seed + P2;
    s->acc[2] = seed;
    s->acc[3] = seed - P1;
    s->total = 0;
    s->buffered = 0;
}

void xxh64_update(struct xxh64 *s, const void *data, size_t len) {
    const unsigned char *p = data;
    s->total += len;
    if (s->buffered) {
        size_t take = 32 - s->buffered;
        if (take > len) take = len;
        memcpy(s->buf + s->buffered, p, take);
        s->buffered += take;
        p += take;
        len -= take;
        if (s->buffered < 32) return;
        stripe(s->acc, s->buf);
        s->buffered = 0;
    }
    while (len >= 32) {
        stripe(s->acc, p);
        p += 32;
        len -= 32;
    }
    if (len) {
        memcpy(s->buf, p, len);
        s->buffered = len;
    }
}

uint64_t xxh64_final(const struct xxh64 *s) {
    uint64_t h;
    if (s->total >= 32) {
        const uint64_t *a = s->acc;
        h = rotl(a[0], 1) + rotl(a[1], 7) + rotl(a[2], 12) + rotl(a[3], 18);
        for (int i = 0; i < 4; i++) h = merge(h, a[i]);
    } else {
        h = s->seed + P5;
    }
    h += s->total;
    const unsigned char *p = s->buf;
    size_t n = s->buffered;
    for (; n >= 8; p += 8, n -= 8) {
        h ^= round64(0, le64(p));
        h = rotl(h, 27) * P1 + P4;
    }
    if (n >= 4) {
        h ^= (uint64_t)le32(p) * P1;
        h = rotl(h, 23) * P2 + P3;
        p += 4;
        n -= 4;
    }
    for (; n; p++, n--) {
        h ^= *p * P5;
        h = rotl(h, 11) * P1;
    }
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

uint64_t xxh64(const void *data, size_t len, uint64_t seed) {
    struct xxh64 s;
    xxh64_init(&s, seed);
    xxh64_update(&s, data, len);
    return xxh64_final(&s);
}

void digest128_init(struct digest128 *d) {
    xxh64_init(&d->a, 0);
    xxh64_init(&d->b, DIGEST_SEED_B);
}

void digest128_update(struct digest128 *d, const void *data, size_t len) {
    xxh64_update(&d->a, data, len);
    xxh64_update(&d->b, data, len);
}

static void hex16(uint64_t v, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--) {
        out[i] = digits[v & 15];
        v >>= 4;
    }
}

void digest128_hex(const struct digest128 *d, char out[DIGEST_HEX_LEN + 1]) {
    hex16(xxh64_final(&d->a), out);
    hex16(xxh64_final(&d->b), out + 16);
    out[DIGEST_HEX_LEN] = '\0';
}

void digest128_bytes_hex(const void *data, size_t len, char out[DIGEST_HEX_LEN + 1]) {
    struct digest128 d;
    digest128_init(&d);
    digest128_update(&d, data, len);
    digest128_hex(&d, out);
}
