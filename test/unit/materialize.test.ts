import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { materialize } from '../../src/pipeline/materialize.js';
import { tempDir } from '../support/env.js';

const dir = tempDir('materialize');
after(() => rmSync(dir, { recursive: true, force: true }));
const data = Buffer.from('object bytes');

test('an output is put in place atomically with the mode clang would give it', async () => {
  await materialize(dir, [{ path: 'a.o', data }], 0o022);
  assert.deepEqual(readFileSync(join(dir, 'a.o')), data);
  assert.equal(statSync(join(dir, 'a.o')).mode & 0o777, 0o644);
  assert.deepEqual(
    readdirSync(dir).filter((f) => f.includes('.ltocache-')),
    [],
  );
});

test('an existing output that is not a regular file is refused and left as it is (clang writes into it)', async () => {
  execFileSync('mkfifo', [join(dir, 'fifo.o')]);
  symlinkSync('/dev/null', join(dir, 'null.o'));
  for (const name of ['fifo.o', 'null.o']) {
    await assert.rejects(materialize(dir, [{ path: name, data }], 0o022), /not a regular file/);
  }
  assert.ok(statSync(join(dir, 'fifo.o')).isFIFO());
  assert.ok(statSync(join(dir, 'null.o')).isCharacterDevice());
  // A symbolic link to a regular file is replaced, as clang's rename replaces it.
  writeFileSync(join(dir, 'real.o'), 'old');
  symlinkSync('real.o', join(dir, 'link.o'));
  await materialize(dir, [{ path: 'link.o', data }], 0o022);
  assert.deepEqual(readFileSync(join(dir, 'link.o')), data);
  assert.equal(readFileSync(join(dir, 'real.o'), 'utf8'), 'old');
  assert.deepEqual(
    readdirSync(dir).filter((f) => f.includes('.ltocache-')),
    [],
  );
});
