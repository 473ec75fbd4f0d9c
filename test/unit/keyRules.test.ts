import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { KEY_RULES_EPOCH } from '../../src/protocol/limits.js';

const KEY_SOURCES = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'src', 'key');

/** src/key as of KEY_RULES_EPOCH's last bump. */
const RECORDED = { epoch: 5, sha256: 'b3162948134b2eea60f2f6ce8138bb368f20a47c2415ff75be4ac647a760785d' };

test('src/key is as it was when KEY_RULES_EPOCH was last set (memos of older rules must go unused)', () => {
  const h = createHash('sha256');
  for (const name of readdirSync(KEY_SOURCES).sort())
    h.update(`${name}\0`)
      .update(readFileSync(join(KEY_SOURCES, name)))
      .update('\0');
  assert.deepEqual(
    { epoch: KEY_RULES_EPOCH, sha256: h.digest('hex') },
    RECORDED,
    'src/key changed. If what the key reads changed, bump KEY_RULES_EPOCH in src/protocol/limits.ts (memos written under the old rules are then never found); either way, record the new epoch and digest here.',
  );
});
