/** Units of the shared team cache: storage URLs, remote URL lists and their order, the daemon's Prometheus text, team memos in a `--dir` storage. */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { describe, test } from 'node:test';
import * as tar from 'tar-stream';
import { loadConfig } from '../../src/config/config.js';
import { hashBytes, initHash } from '../../src/key/hash.js';
import { packBundle, packedBytes, unpackBundle } from '../../src/remote/bundle.js';
import { parseRemoteUrls, RemoteBackend } from '../../src/remote/remoteBackend.js';
import type { StorageErrorKind } from '../../src/remote/server/serverStorage.js';
import { DirStorage } from '../../src/remote/storage/dirStorage.js';
import { EvictionCount, parseRedisUrl, redact } from '../../src/remote/storage/redisStorage.js';
import { Counters } from '../../src/stats/counters.js';
import { formatPrometheus } from '../../src/stats/prometheus.js';
import { LocalStore } from '../../src/store/localStore.js';
import type { EntryRecord } from '../../src/store/record.js';
import { tempDir } from '../support/env.js';

describe('storage URLs', () => {
  test('standalone, TLS, database, credentials, cluster', () => {
    assert.deepEqual(parseRedisUrl('redis://127.0.0.1:6380/2'), { mode: 'standalone', tls: false, nodes: [{ host: '127.0.0.1', port: 6380 }], db: 2 });
    assert.deepEqual(parseRedisUrl('rediss://u:p%40ss@cache.example:6379'), {
      mode: 'standalone',
      tls: true,
      nodes: [{ host: 'cache.example', port: 6379 }],
      db: 0,
      username: 'u',
      password: 'p@ss',
    });
    assert.deepEqual(parseRedisUrl('redis://:secret@h').password, 'secret');
    assert.equal(parseRedisUrl('redis+cluster://a:7000,b:7001,[::1]:7002').nodes.length, 3);
    assert.equal(parseRedisUrl('rediss+cluster://a:7000').tls, true);
  });
  test('malformed URLs are refused without echoing a password', () => {
    for (const u of ['http://h:1', 'redis://a:1,b:2', 'redis+cluster://a:1/3', 'redis://h:99999', 'redis://', 'redis://u:hunter2@h:1/x']) {
      assert.throws(
        () => parseRedisUrl(u),
        (e: Error) => !e.message.includes('hunter2'),
        u,
      );
    }
    assert.equal(redact('redis://u:hunter2@h:1'), 'redis://u:***@h:1');
  });
});

describe('remote URL lists', () => {
  test('comma- or space-separated, each validated, no duplicates', () => {
    assert.deepEqual(parseRemoteUrls('ws://a:1, ws://b:2  wss://c:3'), ['ws://a:1', 'ws://b:2', 'wss://c:3']);
    assert.throws(() => parseRemoteUrls('ws://a:1,http://b'), /http:\/\/b/);
    assert.throws(() => parseRemoteUrls('ws://a:1 ws://a:1'), /twice/);
    const dir = tempDir('urls');
    assert.equal(loadConfig({ LTOCACHE_DIR: dir, LTOCACHE_REMOTE: 'ws://a:1,ws://b:2' }).config.remote, 'ws://a:1,ws://b:2');
    assert.throws(() => loadConfig({ LTOCACHE_DIR: dir, LTOCACHE_REMOTE: 'ws://a:1 ftp://b' }), /ftp:\/\/b/);
  });
  test('rendezvous order: every server first for about its share of keys, stable per key', () => {
    const r = new RemoteBackend({ url: 'ws://a:1,ws://b:2,ws://c:3', token: 't' });
    const first = new Map<unknown, number>();
    for (let i = 0; i < 3000; i++) {
      const o = r.order(`key-${i}`);
      assert.equal(new Set(o).size, 3);
      assert.equal(r.order(`key-${i}`)[0], o[0]);
      first.set(o[0], (first.get(o[0]) ?? 0) + 1);
    }
    for (const n of first.values()) assert.ok(n > 800 && n < 1200, `share ${n}/3000`);
    r.close();
  });
});

test('stats --prometheus: parseable text carrying the counters', () => {
  const c = new Counters();
  c.add('hits', 7);
  c.add('remote_hits', 3);
  c.uncacheableFor('no-output "x"');
  c.error('store_read');
  const text = formatPrometheus(c.view({ entries: 4, store_bytes: 1000, max_bytes: 2000, daemon_running: true }));
  for (const line of text.trimEnd().split('\n')) {
    if (line.startsWith('# ')) assert.match(line, /^# (HELP|TYPE) ltocache_daemon_[a-z_]+ /);
    else assert.match(line, /^ltocache_daemon_[a-z_]+(\{[a-z]+="(?:[^"\\]|\\.)*"\})? \d+$/);
  }
  assert.match(text, /^ltocache_daemon_hits_total 7$/m);
  assert.match(text, /^ltocache_daemon_remote_hits_total 3$/m);
  assert.match(text, /^ltocache_daemon_uncacheable_by_reason_total\{reason="no-output \\"x\\""\} 1$/m);
  assert.match(text, /^ltocache_daemon_errors_by_kind_total\{kind="store_read"\} 1$/m);
  assert.match(text, /^ltocache_daemon_store_entries 4$/m);
});

describe('bundles', () => {
  test('packBundle writes the bytes tar-stream writes; unpackBundle reads them back as views', async () => {
    await initHash();
    for (const sizes of [[0], [1, 511, 512, 513], [100_000, 3]]) {
      const files = new Map(sizes.map((n, i) => [`out${i}.o`, randomBytes(n)]));
      const record: EntryRecord = {
        v: 1,
        outputs: [...files].map(([name, d]) => ({ name, digest: hashBytes(d), size: d.length })),
        stdout: '',
        stderr: '',
        exitCode: 0,
        compileMs: 1,
        createdAt: 0,
      };
      const pack = tar.pack();
      const done = packedBytes(pack);
      for (const [name, d] of files)
        await new Promise<void>((res, rej) => pack.entry({ name, size: d.length, mode: 0o644, mtime: new Date(0), type: 'file' }, d, (e) => (e ? rej(e) : res())));
      pack.finalize();
      const ours = await packBundle(record, files);
      assert.ok(ours.equals(await done), `sizes ${sizes}`);
      const u = await unpackBundle(record, ours, { maxBundleBytes: 1 << 30, maxEntries: 16 });
      assert.equal(u.kind, 'ok');
      if (u.kind === 'ok') for (const [n, d] of files) assert.ok(u.files.get(n)!.equals(d) && u.files.get(n)!.buffer === ours.buffer);
    }
  });
});

describe('team memos in a --dir storage', () => {
  const digest = (n: string) => hashBytes(`team-memo-storage-${n}`);
  const sorted = (bs: Buffer[]) => bs.map((b) => b.toString('hex')).sort();

  test('putMemo / scopeMemos: byte-identical, newest per lookup, scopes apart, max, kept across reopen, cleared', async () => {
    await initHash();
    const dir = tempDir('team-memos');
    const errors: StorageErrorKind[] = [];
    let s = await DirStorage.open(dir, 1 << 30, (k) => errors.push(k));
    try {
      // Adjacent scopes: a range that overran its scope would pick up the other's memos.
      const a = `${'0'.repeat(31)}1`;
      const b = `${'0'.repeat(31)}2`;
      const [l1, l2, l3] = [digest('l1'), digest('l2'), digest('l3')];
      const m = (n: number) => Buffer.concat([Buffer.from([0, 255, n]), randomBytes(100 + n)]);
      const [a1, a2, a1b, b1] = [m(1), m(2), m(3), m(4)];
      for (const [scope, lookup, memo] of [
        [a, l1, a1],
        [a, l2, a2],
        [b, l1, b1],
        [a, l1, a1b],
      ] as const)
        assert.deepEqual(await s.putMemo(scope, lookup, memo), { kind: 'stored' });
      const got = await s.scopeMemos(a, 100);
      assert.equal(got.kind, 'memos');
      if (got.kind === 'memos') assert.deepEqual(sorted(got.memos), sorted([a1b, a2]), 'the newer memo of l1 replaced the older');
      assert.deepEqual(await s.scopeMemos(b, 100), { kind: 'memos', memos: [b1] });
      assert.deepEqual(await s.scopeMemos(digest('unknown'), 100), { kind: 'memos', memos: [] });
      assert.deepEqual(await s.scopeMemos(a, 0), { kind: 'memos', memos: [] });

      const c = digest('c');
      const many = Array.from({ length: 7 }, (_, i) => m(10 + i));
      for (const [i, memo] of many.entries()) assert.equal((await s.putMemo(c, digest(`c-${i}`), memo)).kind, 'stored');
      const three = await s.scopeMemos(c, 3);
      assert.equal(three.kind, 'memos');
      if (three.kind === 'memos') {
        assert.equal(three.memos.length, 3);
        for (const x of three.memos) assert.ok(many.some((y) => y.equals(x)));
      }
      assert.equal(((await s.scopeMemos(c, 20_000)) as { memos: Buffer[] }).memos.length, 7);

      assert.equal((await s.putMemo('not-a-digest', l1, a1)).kind, 'error');
      assert.equal((await s.scopeMemos('NOT-A-DIGEST', 1)).kind, 'error');

      await s.close();
      s = await DirStorage.open(dir, 1 << 30, (k) => errors.push(k));
      assert.deepEqual(await s.scopeMemos(b, 100), { kind: 'memos', memos: [b1] });
      await s.clear();
      for (const scope of [a, b, c]) assert.deepEqual(await s.scopeMemos(scope, 100), { kind: 'memos', memos: [] });
      assert.equal((await s.putMemo(a, l3, a1)).kind, 'stored');
      assert.deepEqual(await s.scopeMemos(a, 100), { kind: 'memos', memos: [a1] });
      assert.deepEqual(errors, []);
    } finally {
      await s.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
  test('memos beyond their budget (1/8 of --max-size, at least 4 MiB): the least recently used scopes go whole; the accounting survives a restart and counts memos kept before it', async () => {
    await initHash();
    const dir = tempDir('team-memo-budget');
    const MiB = 1 << 20;
    const memo = (n: number) => Buffer.alloc(MiB, n);
    const [a, b, c, d, old] = ['a', 'b', 'c', 'd', 'old'].map(digest) as [string, string, string, string, string];
    const count = async (st: DirStorage, scope: string) => ((await st.scopeMemos(scope, 100)) as { memos: Buffer[] }).memos.length;
    const tick = () => new Promise((r) => setTimeout(r, 5));
    // A memo kept by a server from before scopes were accounted.
    const raw = await LocalStore.open({ dir, maxBytes: 1 << 20 });
    await raw.sublevel<Buffer>('team-memos').put(`${old}${digest('old-1')}`, memo(9), { valueEncoding: 'buffer' });
    await raw.close();
    let s = await DirStorage.open(dir, 1 << 20, () => {});
    try {
      assert.equal(s.memoBudget, 4 * MiB);
      // Reading a scope's memos counts as using it: only empty scopes are read until the end of a phase.
      await tick();
      for (const [scope, n] of [
        [a, 1],
        [a, 2],
        [b, 3],
        [c, 4],
      ] as const) {
        assert.equal((await s.putMemo(scope, digest(`${scope}-${n}`), memo(n))).kind, 'stored');
        await tick();
      }
      assert.equal(await count(s, old), 0, '5 MiB: the oldest scope went first');
      await s.scopeMemos(a, 100);
      await tick();
      assert.equal((await s.putMemo(d, digest('d-1'), memo(5))).kind, 'stored');
      assert.equal(await count(s, b), 0, 'then b: a was read since it was written');
      assert.equal(await count(s, a), 2);
      await s.close();
      s = await DirStorage.open(dir, 1 << 20, () => {});
      await tick();
      assert.equal((await s.putMemo(d, digest('d-2'), memo(6))).kind, 'stored');
      assert.equal(await count(s, c), 0, 'after a restart, c: used before a and d');
      assert.equal(await count(s, a), 2);
      assert.equal(await count(s, d), 2);
      // Replacing a memo counts its new size only: nothing goes.
      assert.equal((await s.putMemo(d, digest('d-2'), memo(7))).kind, 'stored');
      assert.equal(await count(s, a), 2);
      assert.equal(await count(s, d), 2);
      assert.equal((await s.putMemo(a, digest('huge'), Buffer.alloc(5 * MiB))).kind, 'error', 'a memo larger than the budget');
    } finally {
      await s.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

test("Redis evictions: counted from each master's first sighting; a count that went down was reset and counts again from zero", () => {
  const c = new EvictionCount();
  c.update('a:1', 1_000_000); // evicted before this process started: not ours
  c.update('b:2', 5);
  assert.equal(c.total, 0);
  c.update('a:1', 1_000_010);
  c.update('b:2', 7);
  assert.equal(c.total, 12);
  // a:1 restarted (or a replica took over under the same address): its count starts from 0.
  c.update('a:1', 3);
  assert.equal(c.total, 15);
  c.update('a:1', 4);
  c.update('c:3', 100); // a new master: from its first sighting on
  c.update('c:3', 101);
  assert.equal(c.total, 17);
});
