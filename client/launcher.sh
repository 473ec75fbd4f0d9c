#!/bin/sh
# The package's `ltocache` (package.json bin) until its first run. That run replaces this file
# with a hard link to (else a copy of) prebuilt/<os>-<arch>/ltocache, the native client for this
# machine, so every later run execs the client directly: no shell, no Node, no extra exec.
# When this file cannot be replaced (a package directory the user cannot write), each run execs
# the client through this script instead (one `sh` start more per run; masquerading as a
# compiler then needs the replacement, see the message below).
self=$(readlink -f -- "$0" 2>/dev/null) || self=$0
dir=${self%/*}
case $(uname -s) in
  Linux) os=linux ;;
  *) os=$(uname -s | tr '[:upper:]' '[:lower:]') ;;
esac
case $(uname -m) in
  x86_64 | amd64) arch=x64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) arch=$(uname -m) ;;
esac
client=$dir/$os-$arch/ltocache
if [ ! -f "$client" ]; then
  echo "ltocache: no prebuilt native client for $os-$arch in this package ($dir)." >&2
  echo "ltocache: build one from the packaged source with a C compiler: ltocache-cli build-client" >&2
  exit 127
fi
tmp=$dir/.ltocache.$$
if { ln -f -- "$client" "$tmp" || cp -- "$client" "$tmp"; } 2>/dev/null && mv -f -- "$tmp" "$self" 2>/dev/null; then
  exec "$0" "$@"
fi
rm -f -- "$tmp" 2>/dev/null
case ${0##*/} in
  ltocache*) exec "$client" "$@" ;;
esac
echo "ltocache: cannot install the native client over $self (not writable), so it cannot run as '${0##*/}'." >&2
echo "ltocache: run 'ltocache --version' once as the owner of $dir, or 'ltocache-cli build-client'." >&2
exit 127
