/**
 * Builds the libFuzzer target of the C memo parsers, team pack reader and reply decoders (client/fuzz/memo_fuzz.c:
 * memo_parse, dist_memo_parse, pack_read_memo/pack_find_blob, reply_parse_result, reply_parse_hit, reply_parse_compile) and runs client/fuzz/run.sh: every saved regression, then a short bounded
 * fuzzing run. Skipped, saying so, only when clang-19 or its fuzzer runtime is missing.
 * LTOCACHE_MEMO_FUZZ_SECONDS sets the fuzzing time (default 5). The committed seeds must be what
 * test/support/memoSeeds.ts generates.
 */

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { initHash } from '../../src/key/hash.js';
import { TOP, tempDir } from '../support/env.js';
import { memoSeeds } from '../support/memoSeeds.js';

function fuzzerMissing(): string | false {
  const dir = tempDir('fuzz-probe');
  try {
    const src = path.join(dir, 'probe.c');
    fs.writeFileSync(src, '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n');
    const r = spawnSync(process.env.FUZZ_CC ?? 'clang-19', ['-fsanitize=fuzzer,address', '-o', path.join(dir, 'probe'), src], { encoding: 'utf8' });
    if (r.error) return `clang-19 not runnable (${r.error.message})`;
    if (r.status !== 0) return `clang-19 cannot link a libFuzzer target: ${r.stderr.trim().split('\n').slice(-1)[0]}`;
    return false;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const missing = fuzzerMissing();

test('the committed seeds are what memoSeeds generates (node dist/test/support/memoSeeds.js client/fuzz/seeds)', async () => {
  await initHash();
  const dir = path.join(TOP, 'client', 'fuzz', 'seeds');
  const want = new Map(memoSeeds());
  assert.deepEqual(fs.readdirSync(dir).sort(), [...want.keys()].sort());
  for (const [name, b] of want) assert.ok(fs.readFileSync(path.join(dir, name)).equals(b), name);
});

test('memo_parse, dist_memo_parse and reply decoder fuzzing: regressions replay and a bounded run finds nothing', { skip: missing || false }, () => {
  const seconds = process.env.LTOCACHE_MEMO_FUZZ_SECONDS ?? '5';
  const r = spawnSync('sh', [path.join(TOP, 'client', 'fuzz', 'run.sh'), seconds], { encoding: 'utf8', maxBuffer: 64 << 20 });
  const tail = `${r.stdout}\n${r.stderr}`.split('\n').slice(-40).join('\n');
  assert.equal(r.status, 0, tail);
  assert.match(r.stdout, /replaying regressions/, 'the regressions directory was replayed');
  assert.match(r.stderr, /Done \d+ runs/, tail);
});
