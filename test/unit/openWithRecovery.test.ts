import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { initHash } from '../../src/key/hash.js';
import { LocalStore } from '../../src/store/localStore.js';
import { openStoreWithRecovery } from '../../src/store/openWithRecovery.js';
import type { StoreOptionsInput } from '../../src/store/storeOptions.js';
import { tempDir } from '../support/env.js';

await initHash();

/** A store made and closed, and an open that fails once with `error`, then opens for real. */
async function setup(error: Error) {
  const dir = tempDir('recovery');
  await (await LocalStore.open({ dir, sweepOnOpen: false })).close();
  let failed = false;
  const open = async (o: StoreOptionsInput) => {
    if (!failed) {
      failed = true;
      throw error;
    }
    return LocalStore.open(o);
  };
  const logged: string[] = [];
  return { dir, v1: join(dir, 'v1'), open, log: { error: (m: string) => logged.push(m) }, logged };
}

test('a machine error on open (no space, no file descriptors, no permission) leaves the metadata alone', async () => {
  for (const e of [
    Object.assign(new Error('Database failed to open'), { code: 'LEVEL_DATABASE_NOT_OPEN', cause: new Error('IO error: /x/LOCK: No space left on device') }),
    Object.assign(new Error('EMFILE: too many open files, scandir'), { code: 'EMFILE' }),
    Object.assign(new Error('EACCES: permission denied, scandir /x/v1/tmp'), { code: 'EACCES' }),
  ]) {
    const s = await setup(e);
    try {
      await assert.rejects(openStoreWithRecovery({ dir: s.dir, sweepOnOpen: false }, s.log, s.open), (x) => x === e);
      assert.ok(fs.existsSync(join(s.v1, 'meta')), 'meta/ is where it was');
      assert.deepEqual(
        fs.readdirSync(s.v1).filter((n) => n.startsWith('meta.corrupt-')),
        [],
      );
      assert.deepEqual(s.logged, []);
    } finally {
      fs.rmSync(s.dir, { recursive: true, force: true });
    }
  }
});

test('corrupt metadata is moved aside, keeping only the newest copy, and the store opens empty', async () => {
  const corrupt = Object.assign(new Error('Database failed to open'), { code: 'LEVEL_DATABASE_NOT_OPEN', cause: new Error('Corruption: CURRENT file does not end with newline') });
  const s = await setup(corrupt);
  try {
    fs.mkdirSync(join(s.v1, 'meta.corrupt-1'));
    const store = await openStoreWithRecovery({ dir: s.dir, sweepOnOpen: false }, s.log, s.open);
    await store.close();
    const aside = fs.readdirSync(s.v1).filter((n) => n.startsWith('meta.corrupt-'));
    assert.equal(aside.length, 1);
    assert.notEqual(aside[0], 'meta.corrupt-1', 'the older copy is removed');
    assert.ok(fs.existsSync(join(s.v1, 'meta')), 'a new, empty metadata store');
    assert.equal(s.logged.length, 1);
  } finally {
    fs.rmSync(s.dir, { recursive: true, force: true });
  }
});
