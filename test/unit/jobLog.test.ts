import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { type TestContext, test } from 'node:test';
import { JobLog, PRUNE_QUIET_MS } from '../../src/jobLog/jobLog.js';
import { hashBytes, initHash } from '../../src/key/hash.js';
import type { Manifest } from '../../src/key/manifest.js';
import { LocalStore } from '../../src/store/localStore.js';
import { tempDir } from '../support/env.js';

await initHash();

/** A store in a temp directory, closed and removed after the test. */
async function scratchStore(t: TestContext): Promise<LocalStore> {
  const dir = tempDir('joblog');
  const store = await LocalStore.open({ dir, sweepOnOpen: false, durable: false });
  t.after(async () => {
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return store;
}

test('the job log stays bounded across daemon lives shorter than a prune period: log, output histories and manifests', async (t) => {
  const store = await scratchStore(t);
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

test('job log records are read back whether stored as JSON text or, as earlier versions wrote them, as a JSON string', async (t) => {
  const store = await scratchStore(t);
  const t0 = Date.parse('2026-01-01T00:00:00Z');
  const old = { output: '/tree/a.native.o', cwd: '/tree', key: hashBytes('old'), result: 'miss', startedAt: t0, endedAt: t0 + 5 };
  // The earlier encoding: the record's JSON text, JSON-encoded once more by the sublevel.
  // As earlier versions wrote it: the job before `last` stored whole as `previous`.
  const older = { ...old, key: hashBytes('older'), startedAt: t0 - 5000, endedAt: t0 - 4995 };
  await store.sublevel<string>('outputs').put('/tree/a.native.o', JSON.stringify({ last: { ...old, prevKey: older.key }, previous: older }));
  await store.sublevel<string>('log').put(`${String(t0).padStart(15, '0')}-000000000`, JSON.stringify(old));
  /** A hit of a.o's job at `at`, as a drained notice records it. */
  const hit = (log: JobLog, at: number, key: string, savedMs?: number) =>
    log.record({
      req: { cwd: '/tree', args: ['-c', '-o', 'a.native.o', 'a.o'] },
      startedAt: at,
      endedAt: at + 2,
      result: 'hit',
      key,
      input: 'a.o',
      ...(savedMs ? { savedMs } : {}),
    });
  const log = new JobLog(store);
  await hit(log, t0 + 1000, hashBytes('new'), 40);
  await log.flush();
  const last = await log.lastJobFor('/tree/a.native.o');
  assert.deepEqual(last, {
    output: '/tree/a.native.o',
    cwd: '/tree',
    key: hashBytes('new'),
    result: 'hit',
    startedAt: t0 + 1000,
    endedAt: t0 + 1002,
    savedMs: 40,
    prevKey: hashBytes('old'),
  });
  assert.deepEqual(await log.lastJobFor('/tree/a.o'), last, 'the input history names the same record');
  const raw = await store.sublevel<unknown>('outputs').get('/tree/a.native.o');
  assert.deepEqual(raw, { last }, 'stored as JSON, once; the previous job named by its key only');
  const build = await log.lastBuild();
  assert.deepEqual(
    build.map((r) => r.key),
    [hashBytes('old'), hashBytes('new')],
  );
  // A new daemon reads the history written above (not from memory) for the next record's previous key.
  const again = new JobLog(store);
  await hit(again, t0 + 2000, hashBytes('third'));
  assert.equal((await again.lastJobFor('/tree/a.native.o'))?.prevKey, hashBytes('new'));
});
