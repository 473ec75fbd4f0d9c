#!/bin/sh
# Builds the native compile client bin/ltocache with the system C compiler and libc only.
set -e
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
mkdir -p "$top/bin"
${CC_FOR_CLIENT:-cc} -std=c11 -O2 -Wall -Wextra -Werror -D_GNU_SOURCE -o "$top/bin/ltocache.tmp" "$here/ltocache.c" \
  "$here/memo.c" "$here/xxh64.c"
mv "$top/bin/ltocache.tmp" "$top/bin/ltocache"
