#!/bin/sh
# `npm run build:prebuilt` (also run by prepack): the native clients shipped in the package,
# static and stripped so they run on any Linux of their architecture, plus the launcher that is
# the package's `ltocache` until its first run (client/launcher.sh):
#   prebuilt/linux-x64/ltocache    CC_LINUX_X64   (default x86_64-linux-gnu-gcc)
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
build "${CC_LINUX_X64:-x86_64-linux-gnu-gcc}" linux-x64
build "${CC_LINUX_ARM64:-aarch64-linux-gnu-gcc}" linux-arm64
cp "$here/launcher.sh" "$top/prebuilt/ltocache.tmp"
chmod 755 "$top/prebuilt/ltocache.tmp"
mv -f "$top/prebuilt/ltocache.tmp" "$top/prebuilt/ltocache"
