import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ThinBuild } from '../../src/demo/thinBuild.js';
import type { JobExplanation } from '../../src/explain/explainJobs.js';
import { hashBytes, initHash } from '../../src/key/hash.js';
import { LocalStore } from '../../src/store/localStore.js';
import { CacheEnv, CLIENT, FIXTURE, tempDir } from '../support/env.js';
import { ServerProcess, TOKENS } from '../support/server.js';
import { waitFor } from '../support/waitFor.js';

/** The stale-hit audit (`verify`): background recompiles of hits, byte comparison, purge on mismatch. */

describe('verify = all', () => {
  let cache: CacheEnv;
  let b: ThinBuild;
  before(async () => {
    await initHash();
    cache = new CacheEnv('verify', { LTOCACHE_VERIFY: 'all' });
    cache.start();
    b = ThinBuild.fromFixture(FIXTURE, join(tempDir('verify'), 'src'));
    b.frontEnd();
  });
  after(() => cache.destroy());

  const buildAll = () => {
    b.thinLink();
    for (const m of b.modules) {
      const r = b.backend(m, { wrapper: [CLIENT], env: cache.env });
      assert.equal(r.status, 0, r.stderr);
    }
  };

  test('every hit is recompiled in the background and matches', async () => {
    buildAll();
    buildAll();
    await waitFor('verification runs', () => cache.stats().verify_runs === b.modules.length);
    const s = cache.stats();
    assert.equal(s.verify_mismatches, 0);
    assert.equal(s.hits, b.modules.length);
  });

  test('a poisoned entry is detected, logged with its manifests, purged, and then recompiled', async () => {
    const explained = JSON.parse(cache.cli(['explain', join(b.dir, 'lonely.thinlto-native.o'), '--json']).stdout) as JobExplanation;
    assert.match(explained.key ?? '', /^[0-9a-f]{32}$/);
    const wrong = readFileSync(join(b.dir, 'strx.thinlto-native.o'));
    cache.stop();
    const store = await LocalStore.open({ dir: join(cache.dir, 'store') });
    const put = await store.put(explained.key!, {
      record: { v: 1, outputs: [{ name: 'obj', digest: hashBytes(wrong), size: wrong.length }], stdout: '', stderr: '', exitCode: 0, compileMs: 1, createdAt: Date.now() },
      files: new Map([['obj', wrong]]),
    });
    assert.equal(put.kind, 'stored');
    await store.close();
    cache.start();
    const before = cache.stats();
    b.thinLink();
    const r = b.backend('lonely', { wrapper: [CLIENT], env: cache.env });
    assert.equal(r.status, 0);
    assert.ok(readFileSync(join(b.dir, 'lonely.thinlto-native.o')).equals(wrong), 'the poisoned entry was served (the audit runs after the hit)');
    await waitFor('the mismatch', () => cache.stats().verify_mismatches === before.verify_mismatches + 1);
    const log = readFileSync(join(cache.dir, 'daemon.log'), 'utf8');
    const line = log.split('\n').find((l) => l.includes('verify: a served object differs'));
    assert.ok(line, 'mismatch logged');
    const rec = JSON.parse(line) as { key: string; storedManifest: unknown; currentManifest: { input: { path: string } } };
    assert.equal(rec.key, explained.key);
    assert.equal(rec.currentManifest.input.path, 'lonely.o');
    assert.match(cache.cli(['stats']).stdout, /WARNING: 1 served object\(s\) differed/);
    const again = cache.stats();
    const r2 = b.backend('lonely', { wrapper: [CLIENT], env: cache.env });
    assert.equal(r2.status, 0);
    assert.equal(cache.stats().misses, again.misses + 1, 'the purged entry is compiled again');
    const direct = b.backend('lonely', { out: 'lonely.direct.o' });
    assert.equal(direct.status, 0);
    assert.ok(readFileSync(join(b.dir, 'lonely.thinlto-native.o')).equals(readFileSync(join(b.dir, 'lonely.direct.o'))));
  });
});

describe('verify = all with a team cache', () => {
  const server = new ServerProcess();
  const caches: CacheEnv[] = [];
  let url = '';
  before(async () => {
    await initHash();
    url = await server.start();
  });
  after(async () => {
    for (const c of caches) c.destroy();
    await server.kill();
  });

  const teammate = (name: string, verify: string): { cache: CacheEnv; b: ThinBuild } => {
    const cache = new CacheEnv(name, { LTOCACHE_REMOTE: url, LTOCACHE_REMOTE_TOKEN: TOKENS.write, LTOCACHE_REMOTE_RETRY_MS: '300', LTOCACHE_VERIFY: verify });
    caches.push(cache);
    cache.start();
    const b = ThinBuild.fromFixture(FIXTURE, join(tempDir(`checkout-${name}`), name, 'src'));
    b.frontEnd();
    b.thinLink();
    return { cache, b };
  };
  const lonely = (t: { cache: CacheEnv; b: ThinBuild }): Buffer => {
    const r = t.b.backend('lonely', { wrapper: [CLIENT], env: t.cache.env });
    assert.equal(r.status, 0, r.stderr);
    return readFileSync(join(t.b.dir, 'lonely.thinlto-native.o'));
  };

  test('a wrong team entry found by verify is deleted on the server and never served again from the team tier', async () => {
    const ann = teammate('ann', 'off');
    for (const m of ann.b.modules) assert.equal(ann.b.backend(m, { wrapper: [CLIENT], env: ann.cache.env }).status, 0);
    await waitFor('uploads', () => ann.cache.stats().uploads === ann.b.modules.length);
    const explained = JSON.parse(ann.cache.cli(['explain', join(ann.b.dir, 'lonely.thinlto-native.o'), '--json']).stdout) as JobExplanation;
    const right = readFileSync(join(ann.b.dir, 'lonely.thinlto-native.o'));
    const wrong = readFileSync(join(ann.b.dir, 'strx.thinlto-native.o'));

    // Poison the team entry (server stopped: the store has one writer).
    await server.kill();
    const store = await LocalStore.open({ dir: join(server.dir, 'data') });
    const put = await store.put(explained.key!, {
      record: { v: 1, outputs: [{ name: 'obj', digest: hashBytes(wrong), size: wrong.length }], stdout: '', stderr: '', exitCode: 0, compileMs: 1, createdAt: Date.now() },
      files: new Map([['obj', wrong]]),
    });
    assert.equal(put.kind, 'stored');
    await store.close();
    url = await server.start(server.port);

    const ben = teammate('ben', 'all');
    assert.ok(lonely(ben).equals(wrong), 'the poisoned team entry was served (the audit runs after the hit)');
    assert.equal(ben.cache.stats().remote_hits, 1);
    await waitFor('the purge', () => readFileSync(join(ben.cache.dir, 'daemon.log'), 'utf8').includes('verify: a served object differs'));
    const line = readFileSync(join(ben.cache.dir, 'daemon.log'), 'utf8')
      .split('\n')
      .find((l) => l.includes('verify: a served object differs'))!;
    assert.deepEqual((JSON.parse(line) as { delete: unknown }).delete, { kind: 'deleted' });

    // Another teammate, who does not verify, is no longer served the wrong object by the team cache.
    const cid = teammate('cid', 'off');
    assert.ok(lonely(cid).equals(right), 'the server deleted the entry ben reported');
    assert.equal(cid.cache.stats().remote_hits, 0);

    // ben compiles it again (denied locally and remotely), and only then is it served again.
    const before = ben.cache.stats();
    assert.ok(lonely(ben).equals(right));
    const after1 = ben.cache.stats();
    assert.equal(after1.misses, before.misses + 1, 'the denied key is compiled');
    assert.equal(after1.remote_hits, before.remote_hits, 'the team tier is not asked for a denied key');
    await waitFor('the fresh entry stored', () => ben.cache.stats().bytes_written > before.bytes_written);
    assert.ok(lonely(ben).equals(right));
    assert.equal(ben.cache.stats().hits, after1.hits + 1, 'served again once a fresh compile is stored');
  });
});

describe('LTOCACHE_VERIFY set for a build while a daemon without it runs', () => {
  test('the daemon says once in its log that it does not audit, and how to get one that does', async () => {
    const cache = new CacheEnv('verify-late');
    try {
      cache.start();
      const b = ThinBuild.fromFixture(FIXTURE, join(tempDir('verify-late'), 'src'));
      b.frontEnd();
      b.thinLink();
      for (const round of [1, 2])
        for (const m of b.modules) {
          const r = b.backend(m, { wrapper: [CLIENT], env: { ...cache.env, LTOCACHE_VERIFY: 'all' } });
          assert.equal(r.status, 0, `${round} ${r.stderr}`);
        }
      assert.equal(cache.stats().verify_runs, 0);
      const warnings = readFileSync(join(cache.dir, 'daemon.log'), 'utf8')
        .split('\n')
        .filter((l) => l.includes('a job sets LTOCACHE_VERIFY'));
      assert.equal(warnings.length, 1, warnings.join('\n'));
      assert.match(warnings[0]!, /ltocache daemon stop.*"job_verify":"all","verify":"off"/);
    } finally {
      cache.destroy();
    }
  });
});
