import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

/**
 * The key tests (manifest.test.ts, clang 19 by default) once more against clang 22 and lld 22:
 * toolchain identification (libLLVM.so.22, its config directories), module tables of clang 22
 * indexes, names that do not change the bytes.
 */
const SKIP = existsSync('/usr/bin/clang-22') && existsSync('/usr/bin/ld.lld-22') ? false : 'clang-22 / ld.lld-22 not installed';

test('manifest tests on clang 22', { skip: SKIP, timeout: 300_000 }, () => {
  const file = join(dirname(fileURLToPath(import.meta.url)), 'manifest.test.js');
  // A test run of its own, not a subtest of this one: without the runner's context variable.
  const { NODE_TEST_CONTEXT: _context, ...env } = process.env;
  const r = spawnSync(process.execPath, ['--test', '--test-concurrency=1', '--test-reporter=tap', file], {
    env: { ...env, LTOCACHE_TEST_CLANG: 'clang-22', LTOCACHE_TEST_LLD: 'ld.lld-22' },
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  });
  assert.equal(
    r.status,
    0,
    `${r.stdout
      .split('\n')
      .filter((l) => /not ok|error|expected|actual/.test(l))
      .join('\n')}\n${r.stderr}`,
  );
  assert.match(r.stdout, /# fail 0/);
});
