import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ThinBuild } from '../../src/demo/thinBuild.js';
import type { StatsView } from '../../src/stats/counters.js';
import { CacheEnv, CLIENT, FIXTURE, runAsync, tempDir } from '../support/env.js';
import { ServerProcess, TOKENS } from '../support/server.js';
import { waitFor } from '../support/waitFor.js';

/**
 * Two teammates sharing a real `ltocache serve` on loopback, each with a real daemon, a separate
 * LTOCACHE_DIR and a checkout in a different directory.
 */

function buildAll(b: ThinBuild, cache: CacheEnv, extra: string[] = []): void {
  for (const m of b.modules) {
    const r = b.backend(m, { wrapper: [CLIENT], extra, env: cache.env });
    assert.equal(r.status, 0, `backend ${m}: ${r.stderr}`);
  }
}

function assertMatchesDirect(b: ThinBuild, extra: string[] = []): void {
  for (const m of b.modules) {
    const r = b.backend(m, { extra, out: `${m}.direct.o` });
    assert.equal(r.status, 0, r.stderr);
    assert.ok(readFileSync(join(b.dir, `${m}.direct.o`)).equals(readFileSync(join(b.dir, `${m}.thinlto-native.o`))), `${m} differs from direct clang`);
  }
}

function teammate(name: string, url: string, token: string, extra: Record<string, string> = {}): { cache: CacheEnv; b: ThinBuild } {
  const cache = new CacheEnv(name, { LTOCACHE_REMOTE: url, LTOCACHE_REMOTE_TOKEN: token, LTOCACHE_REMOTE_RETRY_MS: '300', ...extra });
  cache.start();
  const b = ThinBuild.fromFixture(FIXTURE, join(tempDir(`checkout-${name}`), name, 'linux'));
  b.frontEnd();
  b.thinLink();
  return { cache, b };
}

describe('team cache', () => {
  const server = new ServerProcess();
  const caches: CacheEnv[] = [];
  let url = '';
  before(async () => {
    url = await server.start();
  });
  after(async () => {
    for (const c of caches) c.destroy();
    await server.kill();
  });

  test('A uploads; B with an empty cache in another directory gets all remote hits, byte-identical; B rebuilds from local', async () => {
    const a = teammate('alice', url, TOKENS.write);
    const bob = teammate('bob', url, TOKENS.write);
    caches.push(a.cache, bob.cache);
    buildAll(a.b, a.cache);
    await waitFor('uploads', () => a.cache.stats().uploads === a.b.modules.length);
    buildAll(bob.b, bob.cache);
    let s: StatsView = bob.cache.stats();
    assert.equal(s.remote_hits, bob.b.modules.length);
    assert.equal(s.hits, bob.b.modules.length);
    assert.equal(s.misses, 0);
    assertMatchesDirect(bob.b);
    bob.b.thinLink();
    buildAll(bob.b, bob.cache);
    s = bob.cache.stats();
    assert.equal(s.hits, 2 * bob.b.modules.length);
    assert.equal(s.remote_hits, bob.b.modules.length, 'the rebuild is served locally');
    assert.equal(s.memo_hits, bob.b.modules.length, "the rebuild is served by the memos the client wrote for the team-cache hits ('H')");
    assert.equal(s.entries, bob.b.modules.length, 'each team-cache hit is in the local store');
    assertMatchesDirect(bob.b);
    const remote = JSON.parse(bob.cache.cli(['stats', '--remote', '--json']).stdout) as Record<string, number>;
    assert.ok(remote.entries! >= a.b.modules.length);
    assert.ok(remote.hits! >= bob.b.modules.length);
    assert.equal(typeof remote.connected_clients, 'number');
  });

  test('a read token gets hits but never uploads; read-only mode never uploads', async () => {
    const reader = teammate('carol', url, TOKENS.read);
    caches.push(reader.cache);
    buildAll(reader.b, reader.cache, ['-O1']);
    await waitFor('refused uploads', () => reader.cache.stats().uploads_refused >= 1);
    const s = reader.cache.stats();
    assert.equal(s.uploads, 0);
    assert.equal(s.misses, reader.b.modules.length);
    const ro = teammate('dave', url, TOKENS.write, { LTOCACHE_REMOTE_MODE: 'read-only' });
    caches.push(ro.cache);
    buildAll(ro.b, ro.cache);
    assert.equal(ro.cache.stats().remote_hits, ro.b.modules.length);
    buildAll(ro.b, ro.cache, ['-O1']);
    await new Promise((r) => setTimeout(r, 300));
    const s2 = ro.cache.stats();
    assert.equal(s2.uploads + s2.uploads_refused, 0);
  });

  test('the server killed mid-build: the build completes correctly in bounded time; after a restart uploads resume', async () => {
    const erin = teammate('erin', url, TOKENS.write);
    caches.push(erin.cache);
    const extra = ['-O3'];
    const jobs = erin.b.modules.map((m) => runAsync(CLIENT, [erin.b.clang, ...erin.b.backendArgs(m, extra)], { cwd: erin.b.dir, env: erin.cache.env }));
    await new Promise((r) => setTimeout(r, 50));
    const port = server.port;
    await server.kill('SIGKILL');
    const t0 = performance.now();
    for (const r of await Promise.all(jobs)) assert.equal(r.status, 0, r.stderr);
    assertMatchesDirect(erin.b, extra);
    // With the server gone, a whole rebuild of new jobs pays at most a few remote timeouts.
    erin.b.thinLink();
    const t1 = performance.now();
    buildAll(erin.b, erin.cache, ['-O1', '-march=x86-64-v2']);
    const downMs = performance.now() - t1;
    assertMatchesDirect(erin.b, ['-O1', '-march=x86-64-v2']);
    assert.ok(downMs < 10_000, `build with the server down took ${downMs} ms`);
    void t0;
    await server.start(port);
    await new Promise((r) => setTimeout(r, 700));
    const before = erin.cache.stats().uploads;
    buildAll(erin.b, erin.cache, ['-O2', '-march=x86-64-v3']);
    await waitFor('uploads after restart', () => erin.cache.stats().uploads > before);
    // A fresh teammate gets those from the restarted server, byte-identical.
    const frank = teammate('frank', url, TOKENS.write);
    caches.push(frank.cache);
    await waitFor('all uploads', () => erin.cache.stats().uploads - before === erin.b.modules.length);
    buildAll(frank.b, frank.cache, ['-O2', '-march=x86-64-v3']);
    assert.equal(frank.cache.stats().remote_hits, frank.b.modules.length);
    assertMatchesDirect(frank.b, ['-O2', '-march=x86-64-v3']);
  });
});
