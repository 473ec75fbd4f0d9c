#!/bin/sh
# `npm run build:prebuilt` (also run by prepack): the native clients shipped in the package,
# static and stripped so they run on any Linux of their architecture, plus the launcher that is
# the package's `ltocache` until its first run (client/launcher.sh):
#   prebuilt/linux-x64/ltocache    CC_LINUX_X64   (default musl-gcc on an x86-64 machine that has it,
#                                  the client's start-up is then ~0.5 ms cheaper per job (build.sh);
#                                  else x86_64-linux-gnu-gcc)
#   prebuilt/linux-arm64/ltocache  CC_LINUX_ARM64 (default aarch64-linux-gnu-gcc; Debian package
#                                  gcc-aarch64-linux-gnu)
#   prebuilt/ltocache              the launcher
set -e
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
build() {
  CC_FOR_CLIENT=$1 LTOCACHE_CLIENT_OUT="$top/prebuilt/$2/ltocache" LTOCACHE_CLIENT_LDFLAGS="-static -s" \
    sh "$here/build.sh"
}
x64=x86_64-linux-gnu-gcc
if [ "$(uname -m)" = x86_64 ] && command -v musl-gcc >/dev/null 2>&1; then x64=musl-gcc; fi
build "${CC_LINUX_X64:-$x64}" linux-x64
build "${CC_LINUX_ARM64:-aarch64-linux-gnu-gcc}" linux-arm64
cp "$here/launcher.sh" "$top/prebuilt/ltocache.tmp"
chmod 755 "$top/prebuilt/ltocache.tmp"
mv -f "$top/prebuilt/ltocache.tmp" "$top/prebuilt/ltocache"
