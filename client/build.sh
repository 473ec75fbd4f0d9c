#!/bin/sh
# Builds the native compile client with a C compiler and libc only: every client/*.c (not
# client/fuzz/) into one executable.
#   CC_FOR_CLIENT         compiler; a cross compiler builds a prebuilt client. Default: musl-gcc
#                         when installed (Debian musl-tools), else cc. Every job execs the client,
#                         and glibc's start-up probes the CPU's caches with CPUID, which traps to
#                         the hypervisor on a virtual machine: 0.57 ms of CPU per exec on the
#                         benchmark machine, against 0.05 ms for a static musl executable
#                         (docs/benchmarks.md, "Client start-up").
#   LTOCACHE_CLIENT_OUT   output path (default bin/ltocache); replaced atomically
#   LTOCACHE_CLIENT_LDFLAGS  link flags; unset: -static when the C library allows it (a static
#                            client skips the dynamic loader), else none (build:prebuilt passes
#                            -static -s)
#   LTOCACHE_CLIENT_CFLAGS   extra compile flags (bench/hitPath.ts passes -DLTOCACHE_MEMO_TIMING)
# The client's version (LTOCACHE_VERSION) is package.json's "version".
set -e
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
out=${LTOCACHE_CLIENT_OUT:-$top/bin/ltocache}
version=$(sed -n 's/^  "version": *"\([^"]*\)".*/\1/p' "$top/package.json")
mkdir -p "$(dirname "$out")"
# shellcheck disable=SC2086 # LTOCACHE_CLIENT_CFLAGS and LTOCACHE_CLIENT_LDFLAGS are lists of flags
if [ -z "${CC_FOR_CLIENT:-}" ]; then
  if command -v musl-gcc >/dev/null 2>&1; then CC_FOR_CLIENT=musl-gcc; else CC_FOR_CLIENT=cc; fi
fi
compile() {
  ${CC_FOR_CLIENT} -std=c11 -O2 -Wall -Wextra -Werror -D_GNU_SOURCE ${LTOCACHE_CLIENT_CFLAGS:-} \
      -DLTOCACHE_VERSION="\"${version:-unknown}\"" \
      -o "$out.tmp" "$here"/*.c "$@"
}
if [ "${LTOCACHE_CLIENT_LDFLAGS+set}" = set ]; then
  compile ${LTOCACHE_CLIENT_LDFLAGS}
elif ! compile -static 2>/dev/null; then
  # No static C library here (libc.a): a dynamic client works the same, a little slower to start.
  compile
fi
mv -f "$out.tmp" "$out"
