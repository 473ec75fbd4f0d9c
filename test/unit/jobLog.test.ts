import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { JobLog, PRUNE_QUIET_MS } from '../../src/jobLog/jobLog.js';
import { hashBytes, initHash } from '../../src/key/hash.js';
import type { Manifest } from '../../src/key/manifest.js';
import { LocalStore } from '../../src/store/localStore.js';

await initHash();

test('the job log stays bounded across daemon lives shorter than a prune period: log, output histories and manifests', async (t) => {
  const dir = fs.mkdtempSync(join(tmpdir(), 'ltocache-joblog-'));
  const store = await LocalStore.open({ dir, sweepOnOpen: false, durable: false });
  t.after(async () => {
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const t0 = Date.parse('2026-01-01T00:00:00Z');
  let log!: JobLog;
  // Five daemon lives of 300 jobs each, every output named anew (as DTLTO names them), the log
  // keeping 500 records.
  for (let life = 0; life < 5; life++) {
    log = new JobLog(store, 10_000, 500);
    for (let i = 0; i < 300; i++) {
      const at = t0 + (life * 300 + i) * 1000;
      const output = `m${i}.${life}.native.o`;
      await log.record({
        req: { cwd: '/tree', args: ['-c', '-o', output, `m${i}.o`] },
        startedAt: at,
        endedAt: at + 10,
        result: 'miss',
        key: hashBytes(`key ${life} ${i}`),
        manifest: { input: { path: `m${i}.o` } } as unknown as Manifest,
        output,
      });
    }
    await log.flush();
    // A build in progress is not pruned.
    await log.pruneIfDue(Date.now());
    if (life === 0) assert.equal(await log.count('log'), 300);
    await log.pruneIfDue(Date.now() + PRUNE_QUIET_MS + 1);
  }
  assert.equal(await log.count('log'), 500);
  // Histories of outputs older than the oldest kept record go: 200 of the fourth life, 300 of the last.
  assert.equal(await log.count('outputs'), 500);
  assert.equal(await log.count('inputs'), 300);
  // Manifests: those the kept records and histories name (their keys and previous keys), not all 1,500.
  const manifests = await log.count('manifests');
  assert.ok(manifests >= 500 && manifests <= 800, `${manifests} manifests`);
  const last = await log.lastJobFor('/tree/m7.4.native.o');
  assert.equal(last?.key, hashBytes('key 4 7'));
  assert.equal(last?.prevKey, hashBytes('key 3 7'), 'the previous job of the same input is still known');
});
