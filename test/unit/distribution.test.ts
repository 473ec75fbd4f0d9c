import assert from 'node:assert/strict';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { DistributeError, planDistribution, within } from '../../src/dtlto/distribution.js';
import { tempDir } from '../support/env.js';

test('within: a name that starts with two dots is inside; .. and its descendants are not', () => {
  assert.equal(within('/b/out', '/b/out/..m.1.7.native.o'), true);
  assert.equal(within('/b/out', '/b/out/sub/x.o'), true);
  assert.equal(within('/b/out', '/b/out'), false);
  assert.equal(within('/b/out', '/b'), false);
  assert.equal(within('/b/out', '/b/other/x.o'), false);
  assert.equal(within('/b/out', '/elsewhere/x.o'), false);
});

test('planDistribution: an empty compiler (lld run without --thinlto-remote-compiler) is refused with the option to give', async () => {
  const dir = tempDir('dist');
  try {
    writeFileSync(join(dir, 'm.o'), '');
    const file = join(dir, 'prog.1.dist-file.json');
    writeFileSync(
      file,
      JSON.stringify({ common: { linker_output: 'prog', args: ['', '-O2'] }, jobs: [{ args: ['m.o', '-o', 'm.1.native.o'], inputs: ['m.o'], outputs: ['m.1.native.o'] }] }),
    );
    await assert.rejects(
      planDistribution(file, dir, process.env),
      (e: Error) => e instanceof DistributeError && /--thinlto-remote-compiler/.test(e.message) && !/compiler {2}/.test(e.message),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
