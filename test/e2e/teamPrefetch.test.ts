import assert from 'node:assert/strict';
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ThinBuild } from '../../src/demo/thinBuild.js';
import { CacheEnv, CLIENT, FIXTURE, tempDir } from '../support/env.js';
import { RedisNode } from '../support/redis.js';
import { ServerProcess, TOKENS } from '../support/server.js';
import { waitFor } from '../support/waitFor.js';

/**
 * Team prefetch (docs/team-cache.md "Prefetch") with real parts: a real `ltocache serve`, real
 * daemons with separate cache directories standing for two machines that build the same checkout
 * path (a CI fleet), real clang. The second machine's first job fetches the scope's team memos;
 * the rest of its build is served by the native client alone.
 */

function buildAll(b: ThinBuild, cache: CacheEnv, modules = b.modules): void {
  for (const m of modules) {
    const r = b.backend(m, { wrapper: [CLIENT], env: cache.env });
    assert.equal(r.status, 0, `backend ${m}: ${r.stderr}`);
  }
}

function assertMatchesDirect(b: ThinBuild): void {
  for (const m of b.modules) {
    const r = b.backend(m, { out: `${m}.direct.o` });
    assert.equal(r.status, 0, r.stderr);
    assert.ok(readFileSync(join(b.dir, `${m}.direct.o`)).equals(readFileSync(join(b.dir, `${m}.thinlto-native.o`))), `${m} differs from direct clang`);
  }
}

/**
 * One `ltocache serve` and a checkout built up to its thin link, for the describe that calls this
 * (started before its tests, stopped after them); `machine` starts a daemon of its own cache
 * directory that reaches the server, as a machine of the team would.
 */
function oneServerTeam(checkout: string) {
  const server = new ServerProcess();
  const caches: CacheEnv[] = [];
  let url = '';
  const team = {
    b: undefined as unknown as ThinBuild,
    machine(name: string, token: string = TOKENS.write, extra: Record<string, string> = {}): CacheEnv {
      const cache = new CacheEnv(name, { LTOCACHE_REMOTE: url, LTOCACHE_REMOTE_TOKEN: token, LTOCACHE_REMOTE_RETRY_MS: '300', ...extra });
      caches.push(cache);
      cache.start();
      return cache;
    },
  };
  before(async () => {
    url = await server.start();
    team.b = ThinBuild.fromFixture(FIXTURE, join(tempDir(checkout), 'linux'));
    team.b.frontEnd();
    team.b.thinLink();
  });
  after(async () => {
    for (const c of caches) c.destroy();
    await server.kill();
  });
  return team;
}

describe('team prefetch', () => {
  const team = oneServerTeam('prefetch-checkout');
  const machine = team.machine;

  test('a second machine on the same path: every job served through its team memo without keying, byte-identical; the rebuild needs no daemon', async () => {
    const n = team.b.modules.length;
    const first = machine('first');
    buildAll(team.b, first);
    await waitFor('uploads and team memos', () => {
      const s = first.stats();
      return s.uploads === n && s.team_memos_shared === n;
    });
    await waitFor('the server to hold the memos', () => (JSON.parse(first.cli(['stats', '--remote', '--json']).stdout) as Record<string, number>).memos_stored! >= n);
    team.b.thinLink();
    const second = machine('second');
    buildAll(team.b, second);
    let s = second.stats();
    assert.equal(s.misses, 0, JSON.stringify(s));
    assert.equal(s.hits, n);
    // The first job's team-cache hit has the rest fetched ahead into the team pack; a job that
    // reaches the daemon meanwhile waits for it and is handed its entry; the rest are served by
    // the native client from the pack.
    assert.equal(s.team_memo_hits + s.team_pack_hits, n, `every job was served through its team memo, without keying: ${JSON.stringify(s)}`);
    assert.equal(s.remote_hits, n, 'every entry came from the team cache, on demand or fetched ahead');
    assert.ok(s.team_pack_entries >= n - 2 && s.team_pack_hits >= n - 2, JSON.stringify(s));
    assert.equal(s.team_memos_unusable + s.team_memos_rejected, 0);
    assertMatchesDirect(team.b);
    await waitFor('the pack adopted once the build is quiet', () => second.stats().team_pack_adopted === s.team_pack_entries);
    s = second.stats();
    assert.equal(s.entries, n, 'every entry is in the local store');
    assert.ok(!existsSync(join(second.dir, 'memo', 'team.pack')), 'the pack is gone');
    // Each job has a memo file now (written by the client with the hit, or by the adoption): the
    // next build needs no daemon.
    team.b.thinLink();
    buildAll(team.b, second);
    const s2 = second.stats();
    assert.equal(s2.memo_hits - s.memo_hits, n, JSON.stringify(s2));
    assert.equal(s2.team_pack_hits, s.team_pack_hits);
    assertMatchesDirect(team.b);
  });

  test('a daemon stopped right after the build adopts the team pack first: the entries are in its store, the rebuild needs no daemon', async () => {
    const n = team.b.modules.length;
    team.b.thinLink();
    const m = machine('stopped-early');
    buildAll(team.b, m);
    // Within the quiet time before adoption (2 s): the pack is still there when the daemon stops.
    assert.ok(existsSync(join(m.dir, 'memo', 'team.pack')), 'the pack is written and not adopted yet');
    m.stop();
    assert.ok(!existsSync(join(m.dir, 'memo', 'team.pack')), 'the pack is gone');
    m.start();
    const s = m.stats();
    assert.ok(s.team_pack_entries >= n - 2, JSON.stringify(s));
    assert.equal(s.team_pack_adopted, s.team_pack_entries, `adopted at stop: ${JSON.stringify(s)}`);
    assert.equal(s.entries, n, 'every entry is in the local store');
    team.b.thinLink();
    buildAll(team.b, m);
    const s2 = m.stats();
    assert.equal(s2.memo_hits - s.memo_hits, n, `served from memo files alone: ${JSON.stringify(s2)}`);
    assert.equal(s2.misses, 0);
    assertMatchesDirect(team.b);
  });

  test('an input that differs here: its memo is not used, the job compiles, every object equals direct clang', async () => {
    const n = team.b.modules.length;
    const edited = 'mathx';
    appendFileSync(join(team.b.dir, `${edited}.c`), '\nint ltocache_prefetch_probe(int x) { return x * 7; }\n');
    team.b.frontEnd([edited]);
    team.b.thinLink();
    const third = machine('third');
    buildAll(team.b, third);
    const s = third.stats();
    assert.equal(s.hits + s.misses, n);
    assert.ok(s.misses >= 1, `the edited module compiles: ${JSON.stringify(s)}`);
    assert.ok(s.team_memos_unusable >= 1, `its team memo did not hold here: ${JSON.stringify(s)}`);
    assert.equal(s.team_memo_hits + s.team_pack_hits + s.team_memos_unusable, n, `each job claimed its memo once or was served from the pack: ${JSON.stringify(s)}`);
    assertMatchesDirect(team.b);
    await waitFor('uploads of the new misses', () => third.stats().uploads === s.misses);
  });

  test('a -march=native job is uploaded but its memo is not shared (it would not check the CPU)', async () => {
    const w = machine('native');
    const m = team.b.modules[0]!;
    const r = team.b.backend(m, { wrapper: [CLIENT], env: w.env, extra: ['-march=native'] });
    assert.equal(r.status, 0, r.stderr);
    const plain = team.b.backend(team.b.modules[1]!, { wrapper: [CLIENT], env: w.env, extra: ['-march=x86-64-v2'] });
    assert.equal(plain.status, 0, plain.stderr);
    await waitFor('both uploads', () => w.stats().uploads === 2);
    assert.equal(w.stats().team_memos_shared, 1, 'only the job without native shares its memo');
    // No local memo either (a cache directory shared by machines would serve it on another CPU):
    // the next run is a hit the daemon keys, CPU included.
    assert.equal(w.stats().memos_written, 1);
    const before = w.stats();
    assert.equal(team.b.backend(m, { wrapper: [CLIENT], env: w.env, extra: ['-march=native'] }).status, 0);
    const after = w.stats();
    assert.equal(after.hits - before.hits, 1);
    assert.equal(after.memo_hits - before.memo_hits, 0);
  });

  test('prefetch off: no team memo is fetched', async () => {
    const n = team.b.modules.length;
    team.b.thinLink();
    const off = machine('off', TOKENS.write, { LTOCACHE_REMOTE_PREFETCH: 'off' });
    buildAll(team.b, off);
    const s = off.stats();
    assert.equal(s.team_memo_hits, 0);
    assert.equal(s.remote_hits, n, 'served as team-cache hits, each keyed here');
    assertMatchesDirect(team.b);
  });
});

describe('a team cache that holds entries without their team memos', () => {
  const team = oneServerTeam('prefetch-memoless');
  const machine = (name: string, extra: Record<string, string> = {}) => team.machine(name, TOKENS.write, extra);
  const memosStored = (c: CacheEnv) => (JSON.parse(c.cli(['stats', '--remote', '--json']).stdout) as Record<string, number>).memos_stored!;

  // As after an upgrade that changed KEY_RULES_EPOCH: the entries' keys are the same, the memos
  // are named under a scope no one has shared into, and no machine compiles (every job is a
  // team-cache hit), so nothing would ever share them again.
  test('the first machine that keys its team-cache hits shares their memos; the next is served through them', async () => {
    const n = team.b.modules.length;
    const writer = machine('memoless-writer', { LTOCACHE_REMOTE_PREFETCH: 'off' });
    buildAll(team.b, writer);
    await waitFor('uploads', () => writer.stats().uploads === n);
    assert.equal(writer.stats().team_memos_shared, 0);
    assert.equal(memosStored(writer), 0, 'the team cache holds entries and no memo');

    team.b.thinLink();
    const first = machine('memoless-first');
    buildAll(team.b, first);
    const s1 = first.stats();
    assert.equal(s1.remote_hits, n, JSON.stringify(s1));
    assert.equal(s1.team_memo_hits, 0);
    await waitFor('the memos of the keyed team-cache hits shared', () => first.stats().team_memos_shared === n && memosStored(first) >= n);

    team.b.thinLink();
    const second = machine('memoless-second');
    buildAll(team.b, second);
    const s2 = second.stats();
    assert.equal(s2.misses, 0);
    assert.equal(s2.team_memo_hits + s2.team_pack_hits, n, `served through the shared memos, without keying: ${JSON.stringify(s2)}`);
    assertMatchesDirect(team.b);
    // The second machine claimed memos that exist: it shares none again.
    assert.equal(second.stats().team_memos_shared, 0);
  });
});

describe('team prefetch through Redis, with planted garbage and a lost entry', () => {
  const redis = new RedisNode();
  let server: ServerProcess;
  const caches: CacheEnv[] = [];
  before(async () => {
    await redis.start();
    server = new ServerProcess([], redis.url);
    await server.start();
  });
  after(async () => {
    for (const c of caches) c.destroy();
    await server.kill();
    await redis.stop();
  });

  test('garbage memos are rejected and counted, a memo whose entry is gone is unusable; every object equals direct clang', async () => {
    const b = ThinBuild.fromFixture(FIXTURE, join(tempDir('prefetch-redis'), 'linux'));
    b.frontEnd();
    b.thinLink();
    const n = b.modules.length;
    const machine = (name: string) => {
      const cache = new CacheEnv(name, { LTOCACHE_REMOTE: server.url, LTOCACHE_REMOTE_TOKEN: TOKENS.write, LTOCACHE_REMOTE_RETRY_MS: '300' });
      caches.push(cache);
      cache.start();
      return cache;
    };
    const writer = machine('redis-writer');
    buildAll(b, writer);
    await waitFor('uploads and team memos', () => {
      const s = writer.stats();
      return s.uploads === n && s.team_memos_shared === n;
    });
    // One build, one scope: the only memo hash in this Redis.
    const scopes = () => redis.cli('--scan', '--pattern', 'ltocache:m:*').split('\n').filter(Boolean);
    await waitFor('the memos in Redis', () => scopes().length === 1 && Number(redis.cli('hlen', scopes()[0]!)) === n);
    const hash = scopes()[0]!;
    // A value too short to name a memo, and a job's memo replaced by one that names its lookup but is no valid memo.
    redis.cli('hset', hash, 'f'.repeat(32), 'garbage');
    const victim = redis
      .cli('hkeys', hash)
      .split('\n')
      .filter(Boolean)
      .find((f) => f !== 'f'.repeat(32))!;
    redis.cli('hset', hash, victim, `LTOTEAM\x01${victim}${'junk'.repeat(20)}`);
    // One entry lost (evicted): its memo is still there.
    const entryKey = redis.cli('--scan', '--pattern', 'ltocache:e:*').split('\n').filter(Boolean)[0]!;
    redis.cli('del', entryKey);
    b.thinLink();
    const reader = machine('redis-reader');
    buildAll(b, reader);
    const s = reader.stats();
    assert.equal(s.hits + s.misses, n, JSON.stringify(s));
    assert.equal(s.misses, 1, 'the job whose entry was lost compiles');
    assert.equal(s.team_memos_rejected, 2, JSON.stringify(s));
    // Every other job claimed a valid memo: served through it, or (the lost entry, unless it is the
    // rejected memo's) unusable.
    assert.equal(s.team_memo_hits + s.team_pack_hits + s.team_memos_unusable, n - 1, JSON.stringify(s));
    assert.ok(s.team_memos_unusable <= 1 && s.team_memo_hits + s.team_pack_hits >= n - 2, JSON.stringify(s));
    assert.equal(s.errors, 0);
    assertMatchesDirect(b);
  });
});
