import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { LAYOUT_FILE } from '../../src/store/layout.js';
import { CacheEnv } from '../support/env.js';

const cache = new CacheEnv('layout');
after(() => cache.destroy());

test('a store the daemon cannot open (a LAYOUT it does not know): `daemon start` fails, and daemon.log says why', () => {
  const store = join(cache.dir, 'store');
  mkdirSync(store, { recursive: true });
  writeFileSync(join(store, LAYOUT_FILE), 'not a layout\n');
  const r = cache.cli(['daemon', 'start']);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /daemon did not start; see .*daemon\.log/);
  const log = readFileSync(join(cache.dir, 'daemon.log'), 'utf8');
  assert.match(log, /"msg":"cannot open the store; the daemon does not start"/);
  assert.match(log, /LAYOUT/);
});
