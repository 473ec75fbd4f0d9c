import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { ThinBuild } from '../../src/demo/thinBuild.js';
import { parseJob } from '../../src/key/parseJob.js';
import { FIXTURE, tempDir } from '../support/env.js';

/**
 * The documented drop list (docs/key.md): flags left out of the key. Each must leave a backend
 * object byte-identical, shown here against real clang 19 for every entry.
 */
const DROPPED: string[][] = [
  ['-DFOO=1'],
  ['-D', 'BAR'],
  ['-UFOO'],
  ['-U', 'BAZ'],
  ['-Iinc'],
  ['-I', 'inc'],
  ['-include', 'prog.h'],
  ['-imacros', 'prog.h'],
  ['-isystem', 'inc'],
  ['-iquote', 'inc'],
  ['-idirafter', 'inc'],
  ['-Wp,-MMD,dep.d'],
  ['-Wp,-MD,dep.d'],
  ['-MD'],
  ['-MMD'],
  ['-MP'],
  ['-MF', 'dep.d'],
  ['-MT', 'target'],
  ['-MQ', 'target'],
  ['-std=gnu11'],
  ['-nostdinc'],
];

test('every flag on the drop list leaves the backend object unchanged and is dropped by the parser', async () => {
  const b = ThinBuild.fromFixture(FIXTURE, join(tempDir('drop'), 'src'));
  mkdirSync(join(b.dir, 'inc'));
  writeFileSync(join(b.dir, 'inc', 'x.h'), '#define X 1\n');
  b.frontEnd();
  b.thinLink();
  for (const m of ['main', 'table']) {
    const base = b.backend(m, { out: `${m}.base.o` });
    assert.equal(base.status, 0, base.stderr);
    const baseBytes = readFileSync(join(b.dir, `${m}.base.o`));
    for (const flags of DROPPED) {
      const r = b.backend(m, { extra: flags, out: `${m}.drop.o` });
      assert.equal(r.status, 0, `${flags.join(' ')}: ${r.stderr}`);
      assert.ok(readFileSync(join(b.dir, `${m}.drop.o`)).equals(baseBytes), `${flags.join(' ')} changed ${m}'s object`);
      const parsed = await parseJob(b.backendArgs(m, flags), b.dir);
      assert.equal(parsed.kind, 'job');
      if (parsed.kind !== 'job') continue;
      const dropped = parsed.job.tokens.filter((t) => t.t === 'dropped').map((t) => t.v);
      assert.deepEqual(dropped, [flags.join(' ')], `${flags.join(' ')} should be dropped`);
    }
  }
});
