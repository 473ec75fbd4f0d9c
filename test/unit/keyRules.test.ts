import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { KEY_RULES_EPOCH } from '../../src/protocol/limits.js';

const KEY_SOURCES = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'src', 'key');

/** src/key as of KEY_RULES_EPOCH's last bump. */
const RECORDED = { epoch: 5, sha256: '5a8715d505684f22207b8462d14c9e3359f3531018fbd083798ebc5095066045' };

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
