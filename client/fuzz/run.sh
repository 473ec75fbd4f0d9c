#!/bin/sh
# Bounded libFuzzer run of memo_parse, dist_memo_parse, the team pack reader and the reply decoders
# (client/fuzz/memo_fuzz.c says which input goes where).
#   client/fuzz/run.sh [seconds]    default 20
# Builds the target under client/fuzz/build/, replays every file in client/fuzz/regressions/
# (each must pass), then fuzzes for the given time from client/fuzz/seeds/ plus a scratch
# corpus. A crasher is kept in regressions/ and the script exits non-zero.
# Environment: FUZZ_CC (default clang-19).
set -e
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-20}
cc=${FUZZ_CC:-clang-19}
build="$here/build"
mkdir -p "$build" "$here/regressions"
"$cc" -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE \
  -o "$build/memo_fuzz" "$here/memo_fuzz.c" "$here/../memo.c" "$here/../pack.c" "$here/../distmemo.c" "$here/../reply.c" "$here/../io.c" "$here/../verifyconf.c" "$here/../xxh64.c"

if [ -n "$(ls -A "$here/regressions" 2>/dev/null | grep -v '^README')" ]; then
  echo "memo_fuzz: replaying regressions/"
  for f in "$here/regressions"/*; do
    case "$(basename "$f")" in README*) continue ;; esac
    "$build/memo_fuzz" -runs=1 "$f" >/dev/null 2>"$build/replay.log" || {
      cat "$build/replay.log" >&2
      echo "memo_fuzz: regression $f fails" >&2
      exit 1
    }
  done
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/memo-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "memo_fuzz: fuzzing for ${secs}s"
"$build/memo_fuzz" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
  -print_final_stats=1 -artifact_prefix="$here/regressions/" "$work" "$here/seeds"
