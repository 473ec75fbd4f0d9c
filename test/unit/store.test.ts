import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { basename, join } from 'node:path';
import { after, type TestContext, test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Level } from 'level';
import { hashBytes, initHash } from '../../src/key/hash.js';
import type { StoredEntry } from '../../src/store/backend.js';
import { LAYOUT_FILE, LayoutError, layoutPaths, prepareLayout, SUBLEVELS } from '../../src/store/layout.js';
import { LocalStore } from '../../src/store/localStore.js';
import { StoreLockedError } from '../../src/store/metaDb.js';
import { EntryRecord } from '../../src/store/record.js';
import { nodeFs, type StoreFs, StoreOptionsError, type StoreOptionsInput, SYNC_READ_MAX } from '../../src/store/storeOptions.js';
import { tempDir as envTempDir } from '../support/env.js';

await initHash();

const dirs: string[] = [];
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = envTempDir('store');
  dirs.push(d);
  return d;
}

async function openStore(t: TestContext, opts: StoreOptionsInput): Promise<LocalStore> {
  const s = await LocalStore.open(opts);
  t.after(() => s.close());
  return s;
}

const key = (n: string | number): string => hashBytes(`key-${n}`);

function entry(outputs: Record<string, Buffer>, stderr = ''): StoredEntry {
  const record: EntryRecord = {
    v: 1,
    outputs: Object.entries(outputs).map(([name, data]) => ({ name, digest: hashBytes(data), size: data.length })),
    stdout: '',
    stderr,
    exitCode: 0,
    compileMs: 12,
    createdAt: 1_700_000_000_000,
  };
  return { record, files: new Map(Object.entries(outputs)) };
}

/** What the store accounts for a record (its JSON as stored). */
const recordBytes = (e: StoredEntry): number => Buffer.byteLength(JSON.stringify(EntryRecord.parse(e.record)));

function blobPath(dir: string, data: Buffer | string): string {
  const d = hashBytes(data);
  return join(layoutPaths(dir).blobs, d.slice(0, 2), d.slice(2));
}

function listBlobs(dir: string): string[] {
  const root = layoutPaths(dir).blobs;
  return fs
    .readdirSync(root)
    .flatMap((shard) => fs.readdirSync(join(root, shard)).map((f) => shard + f))
    .sort();
}

function assertHit(r: Awaited<ReturnType<LocalStore['get']>>, e: StoredEntry): void {
  assert.equal(r.kind, 'hit');
  if (r.kind !== 'hit') return;
  assert.deepEqual(r.entry.record, e.record);
  assert.deepEqual([...r.entry.files.keys()].sort(), [...e.files.keys()].sort());
  for (const [n, data] of e.files) assert.ok(r.entry.files.get(n)?.equals(data), `file ${n} differs`);
}

const fill = (n: number, byte: number): Buffer => Buffer.alloc(n, byte);

/** Whether a record is stored for the key, without get's blob checks and LRU touch. */
async function hasRecord(s: LocalStore, k: string): Promise<boolean> {
  const entries = (s as unknown as { index: { entries: { get(k: string): Promise<string | undefined> } } }).index.entries;
  return (await entries.get(k)) !== undefined;
}

test('put/get round trip, delete, summary and layout on disk', async (t) => {
  const dir = tempDir();
  const s = await openStore(t, { dir });
  const e = entry({ obj: fill(3000, 7), dwo: Buffer.from('dwarf') }, Buffer.from('warning: x\n').toString('base64'));
  assert.deepEqual(await s.get(key(1)), { kind: 'miss' });
  assert.deepEqual(await s.delete(key(1)), { kind: 'absent' });
  assert.deepEqual(await s.put(key(1), e), { kind: 'stored' });
  assertHit(await s.get(key(1)), e);
  assert.deepEqual(s.summary(), { entries: 1, bytes: 3000 + 5 + recordBytes(e) });
  assert.equal(fs.readFileSync(join(dir, LAYOUT_FILE), 'utf8'), '1\n');
  assert.deepEqual(listBlobs(dir), [hashBytes(fill(3000, 7)), hashBytes('dwarf')].sort());
  assert.deepEqual(fs.readdirSync(layoutPaths(dir).tmp), []);
});

test('every directory the store makes is private, whatever the umask (the cache directory may be shared by mistake)', async (t) => {
  const dir = join(tempDir(), 'store');
  const old = process.umask(0);
  try {
    const s = await openStore(t, { dir });
    assert.deepEqual(await s.put(key('private'), entry({ obj: fill(100, 3) })), { kind: 'stored' });
  } finally {
    process.umask(old);
  }
  const p = layoutPaths(dir);
  const shard = join(p.blobs, hashBytes(fill(100, 3)).slice(0, 2));
  for (const d of [dir, p.blobs, p.tmp, p.meta, shard]) assert.equal(fs.statSync(d).mode & 0o777, 0o700, d);
});

test('adopt: an entry whose blobs a writer already stored is committed without rewriting them; a missing or short blob is refused', async (t) => {
  const dir = tempDir();
  const s = await openStore(t, { dir });
  // Blobs planted before the start-up sweep has run are orphans it may remove (as it would a
  // client's blob not adopted yet: the adoption is then refused).
  await s.sweepDone;
  const e = entry({ obj: fill(3000, 9) });
  const writeBlob = (data: Buffer, name = data) => {
    const p = blobPath(dir, name);
    fs.mkdirSync(join(p, '..'), { recursive: true });
    fs.writeFileSync(p, data);
  };
  assert.deepEqual(await s.adopt(key('a'), e.record), { kind: 'refused', reason: `blob ${e.record.outputs[0]!.digest} is not in the store with 3000 bytes` });
  writeBlob(fill(2999, 9), fill(3000, 9));
  assert.equal((await s.adopt(key('a'), e.record)).kind, 'refused', 'a blob of the wrong size');
  assert.equal(await hasRecord(s, key('a')), false);
  writeBlob(fill(3000, 9));
  const inode = fs.statSync(blobPath(dir, fill(3000, 9))).ino;
  assert.deepEqual(await s.adopt(key('a'), e.record), { kind: 'stored' });
  assert.equal(fs.statSync(blobPath(dir, fill(3000, 9))).ino, inode, 'the blob file is the one the writer made');
  assertHit(await s.get(key('a')), e);
  assert.deepEqual(s.summary(), { entries: 1, bytes: 3000 + recordBytes(e) });
  // Accounted like a put: the blob goes with its last entry.
  assert.deepEqual(await s.delete(key('a')), { kind: 'deleted' });
  assert.deepEqual(listBlobs(dir), []);
  assert.equal((await s.adopt('ABC', e.record)).kind, 'refused');
  assert.equal((await s.adopt(key('b'), { ...e.record, exitCode: 1 } as unknown as EntryRecord)).kind, 'refused');
});

test('malformed keys and inconsistent entries are refused with a reason', async (t) => {
  const dir = tempDir();
  const s = await openStore(t, { dir, maxBytes: 10_000 });
  const g = await s.get('ABC');
  assert.equal(g.kind, 'error');
  assert.match(g.kind === 'error' ? g.error : '', /malformed cache key/);
  assert.equal(g.kind === 'error' && g.corrupt, false);
  const p = await s.put('abc', entry({ obj: fill(10, 1) }));
  assert.equal(p.kind, 'refused');
  assert.equal((await s.delete('../../etc')).kind, 'refused');

  const wrong = entry({ obj: fill(10, 1) });
  wrong.files.set('obj', fill(10, 2));
  const r = await s.put(key(1), wrong);
  assert.equal(r.kind, 'refused');
  assert.match(r.kind === 'refused' ? r.reason : '', /does not hash to its record digest/);

  const big = await s.put(key(2), entry({ obj: fill(9_500, 1) }));
  assert.equal(big.kind, 'refused');
  assert.match(big.kind === 'refused' ? big.reason : '', /exceeds 90% of the cache size/);
  assert.deepEqual(s.summary(), { entries: 0, bytes: 0 });
  assert.deepEqual(listBlobs(dir), []);
});

test('invalid options are refused at construction', async () => {
  await assert.rejects(LocalStore.open({ dir: 'relative/dir' }), (e: unknown) => {
    assert.ok(e instanceof StoreOptionsError);
    assert.match(e.message, /absolute path/);
    return true;
  });
  await assert.rejects(LocalStore.open({ dir: tempDir(), maxBytes: -1 }), StoreOptionsError);
});

test('dedup: entries with identical outputs share one blob; eviction frees it with the last reference', async (t) => {
  const dir = tempDir();
  let now = 1_000;
  const maxBytes = 8_000;
  const s = await openStore(t, { dir, maxBytes, now: () => now });
  const X = fill(1000, 1);
  const A = entry({ obj: X }, 'a'.repeat(3000));
  const B = entry({ obj: X }, 'b'.repeat(3000));
  const C = entry({ obj: fill(1000, 2) });
  const D = entry({ obj: fill(1000, 3) }, 'd'.repeat(3000));
  const [rA, rB, rC, rD] = [A, B, C, D].map(recordBytes) as [number, number, number, number];

  assert.equal((await s.put(key('A'), A)).kind, 'stored');
  now = 2_000;
  assert.equal((await s.put(key('B'), B)).kind, 'stored');
  assert.deepEqual(listBlobs(dir), [hashBytes(X)]);
  assert.deepEqual(s.summary(), { entries: 2, bytes: 1000 + rA + rB });

  // C pushes the total over maxBytes; dropping A alone gets back under 90%.
  const afterC = 2000 + rA + rB + rC;
  assert.ok(afterC > maxBytes && afterC - rA <= maxBytes * 0.9, 'test sizes precondition');
  now = 3_000;
  assert.equal((await s.put(key('C'), C)).kind, 'stored');
  assert.deepEqual(await Promise.all(['A', 'B', 'C'].map((k) => hasRecord(s, key(k)))), [false, true, true]);
  assert.ok(fs.existsSync(blobPath(dir, X)), 'shared blob survives while B references it');
  assertHit(await s.get(key('B')), B);
  assert.deepEqual(s.summary(), { entries: 2, bytes: afterC - rA });

  now = 4_000;
  assert.equal((await s.put(key('D'), D)).kind, 'stored');
  assert.equal(await hasRecord(s, key('B')), false);
  assert.equal(fs.existsSync(blobPath(dir, X)), false, 'last reference gone → blob deleted');
  assert.deepEqual(listBlobs(dir), [hashBytes(fill(1000, 2)), hashBytes(fill(1000, 3))].sort());
  assert.deepEqual(s.summary(), { entries: 2, bytes: 2000 + rC + rD });
  assert.equal(s.counters.evictions, 2);
  assert.equal(s.counters.evictedBytes, 1000 + rA + rB);
});

test('LRU eviction follows last use; touches are throttled to one per interval', async (t) => {
  const dir = tempDir();
  let now = 0;
  const mk = (i: number) => entry({ obj: fill(1000, i) });
  const S = 1000 + recordBytes(mk(1));
  const maxBytes = Math.floor(3.5 * S); // 3 entries fit; a 4th evicts exactly one
  const s = await openStore(t, { dir, maxBytes, now: () => now, touchIntervalMs: 60_000 });
  const put = async (name: string, i: number, at: number) => {
    now = at;
    assert.equal((await s.put(key(name), mk(i))).kind, 'stored');
  };
  const present = async () => {
    const names = ['A', 'B', 'C', 'D', 'E', 'F'];
    const has = await Promise.all(names.map((n) => hasRecord(s, key(n))));
    return names.filter((_, i) => has[i]).join('');
  };

  await put('A', 1, 1_000);
  await put('B', 2, 2_000);
  await put('C', 3, 3_000);
  now = 100_000;
  assertHit(await s.get(key('A')), mk(1)); // moves A behind C
  await put('D', 4, 100_001);
  assert.equal(await present(), 'ACD');
  await put('E', 5, 130_000);
  assert.equal(await present(), 'ADE');
  now = 140_000;
  assertHit(await s.get(key('A')), mk(1)); // 40 s after its last touch: not recorded
  await put('F', 6, 150_000);
  assert.equal(await present(), 'DEF');
  assert.equal(s.counters.evictions, 3);
  assert.deepEqual(s.summary(), { entries: 3, bytes: 3 * S });
  assert.equal(listBlobs(dir).length, 3);
});

test('touch records an access like a hit does: the touched entry survives eviction', async (t) => {
  const dir = tempDir();
  let now = 0;
  const mk = (i: number) => entry({ obj: fill(1000, i) });
  const S = 1000 + recordBytes(mk(1));
  const s = await openStore(t, { dir, maxBytes: Math.floor(3.5 * S), now: () => now, touchIntervalMs: 0 });
  for (const [i, n] of ['A', 'B', 'C'].entries()) {
    now = 1_000 * (i + 1);
    assert.equal((await s.put(key(n), mk(i))).kind, 'stored');
  }
  now = 10_000;
  await s.touch(key('A'));
  await s.touch(key('absent'));
  await s.touch('not a key');
  now = 11_000;
  assert.equal((await s.put(key('D'), mk(4))).kind, 'stored');
  assert.deepEqual(await Promise.all(['A', 'B', 'C', 'D'].map((n) => hasRecord(s, key(n)))), [true, false, true, true]);
});

test('a blob with a flipped byte → corrupt error, entry and blobs dropped, then a miss', async (t) => {
  const dir = tempDir();
  const s = await openStore(t, { dir });
  const obj = Buffer.from(Array.from({ length: 4096 }, (_, i) => i % 251));
  const e = entry({ obj, dwo: fill(100, 9) });
  assert.equal((await s.put(key(1), e)).kind, 'stored');
  const p = blobPath(dir, obj);
  const bytes = fs.readFileSync(p);
  bytes[1234] = (bytes[1234] ?? 0) ^ 0xff;
  fs.writeFileSync(p, bytes);

  const r = await s.get(key(1));
  assert.equal(r.kind, 'error');
  assert.equal(r.kind === 'error' && r.corrupt, true);
  assert.match(r.kind === 'error' ? r.error : '', new RegExp(`blob ${hashBytes(obj)} hashes to`));
  assert.equal(s.counters.corruptBlobs, 1);
  assert.equal(await hasRecord(s, key(1)), false);
  assert.deepEqual(await s.get(key(1)), { kind: 'miss' });
  assert.deepEqual(listBlobs(dir), []);
  assert.deepEqual(s.summary(), { entries: 0, bytes: 0 });
  // The next put of the same content starts from a clean blob.
  assert.equal((await s.put(key(1), e)).kind, 'stored');
  assertHit(await s.get(key(1)), e);
});

test('a truncated or missing blob → corrupt error; the other entry sharing it fails on its own read', async (t) => {
  const dir = tempDir();
  const s = await openStore(t, { dir });
  const obj = fill(5000, 4);
  const e1 = entry({ obj }, 'one');
  const e2 = entry({ obj }, 'two');
  await s.put(key(1), e1);
  await s.put(key(2), e2);
  fs.truncateSync(blobPath(dir, obj), 2500);

  const r = await s.get(key(1));
  assert.equal(r.kind, 'error');
  assert.equal(r.kind === 'error' && r.corrupt, true);
  assert.match(r.kind === 'error' ? r.error : '', /has 2500 bytes, expected 5000/);
  assert.equal(fs.existsSync(blobPath(dir, obj)), false, 'a bad blob file is removed at once');
  const r2 = await s.get(key(2));
  assert.equal(r2.kind === 'error' && r2.corrupt, true);
  assert.match(r2.kind === 'error' ? r2.error : '', /is missing/);
  assert.equal(s.counters.corruptBlobs, 2);
  assert.deepEqual(s.summary(), { entries: 0, bytes: 0 });
});

test('an invalid record in the db → corrupt error, entry and its blobs dropped', async (t) => {
  const dir = tempDir();
  const first = await LocalStore.open({ dir });
  await first.put(key(1), entry({ obj: fill(100, 1) }));
  await first.put(key(2), entry({ obj: fill(100, 2) }));
  await first.close();
  const db = new Level<string, string>(layoutPaths(dir).meta);
  const entries = db.sublevel<string, string>(SUBLEVELS.entries, { valueEncoding: 'utf8' });
  await entries.put(key(1), '{"v":1,"outputs":[');
  await entries.put(key(2), JSON.stringify({ v: 2, outputs: [] }));
  await db.close();

  const s = await openStore(t, { dir, sweepOnOpen: false });
  const r1 = await s.get(key(1));
  assert.equal(r1.kind === 'error' && r1.corrupt, true);
  assert.match(r1.kind === 'error' ? r1.error : '', /not JSON/);
  const r2 = await s.get(key(2));
  assert.equal(r2.kind === 'error' && r2.corrupt, true);
  assert.match(r2.kind === 'error' ? r2.error : '', /is invalid/);
  assert.equal(s.counters.corruptRecords, 2);
  assert.deepEqual(await s.get(key(1)), { kind: 'miss' });
  assert.deepEqual(listBlobs(dir), []);
  assert.deepEqual(s.summary(), { entries: 0, bytes: 0 });
});

test('open empties tmp/ of half-written files', async (t) => {
  const dir = tempDir();
  await (await LocalStore.open({ dir })).close();
  const tmp = layoutPaths(dir).tmp;
  fs.writeFileSync(join(tmp, `${hashBytes('x')}.deadbeef`), 'half a blob');
  fs.writeFileSync(join(tmp, 'other'), '');
  const s = await openStore(t, { dir });
  assert.deepEqual(fs.readdirSync(tmp), []);
  assert.equal(s.counters.tmpSwept, 2);
});

test('the background sweep removes orphan blobs and entries whose blobs are missing', async (t) => {
  const dir = tempDir();
  const first = await LocalStore.open({ dir });
  const e1 = entry({ obj: fill(1000, 1) });
  await first.put(key(1), e1);
  await first.put(key(2), entry({ obj: fill(1000, 2) }));
  await first.close();
  fs.unlinkSync(blobPath(dir, fill(1000, 2)));
  const orphan = blobPath(dir, 'orphan');
  fs.mkdirSync(join(orphan, '..'), { recursive: true });
  fs.writeFileSync(orphan, 'orphan');
  const hourAgo = new Date(Date.now() - 3600_000);
  fs.utimesSync(orphan, hourAgo, hourAgo);
  const stray = join(layoutPaths(dir).blobs, 'README');
  fs.writeFileSync(stray, 'not a blob');
  // Unreferenced and written a minute before the sweep: a client's blob whose adoption is on its
  // way (renamed from its temp file, it keeps the temp's mtime). It stays.
  const fresh = blobPath(dir, 'fresh');
  fs.mkdirSync(join(fresh, '..'), { recursive: true });
  fs.writeFileSync(fresh, 'fresh');
  const minuteAgo = new Date(Date.now() - 60_000);
  fs.utimesSync(fresh, minuteAgo, minuteAgo);

  const s = await openStore(t, { dir });
  assert.deepEqual(await s.sweepDone, { orphanBlobs: 1, brokenEntries: 1 });
  assert.equal(fs.existsSync(orphan), false);
  assert.equal(fs.existsSync(fresh), true, 'a blob younger than ORPHAN_GRACE_MS is left for its adoption');
  assert.equal(fs.existsSync(stray), true, 'files not named like blobs are left alone');
  assert.equal(await hasRecord(s, key(2)), false);
  assertHit(await s.get(key(1)), e1);
  assert.deepEqual(s.summary(), { entries: 1, bytes: 1000 + recordBytes(e1) });
  assert.deepEqual(s.counters.orphanBlobsSwept + s.counters.brokenEntriesSwept, 2);
});

test('ENOSPC while writing a blob → error result, no leftovers, store still usable; EIO on read is not corruption', async (t) => {
  const dir = tempDir();
  const tmp = layoutPaths(dir).tmp;
  const objA = fill(2000, 1);
  const objB = fill(2000, 2);
  let failPrefix: string | undefined;
  let failReads = false;
  const errno = (code: string) => Object.assign(new Error(`${code}: injected`), { code });
  const seam: Partial<StoreFs> = {
    async open(path, flags) {
      const h = await nodeFs.open(path, flags);
      if (!failPrefix || !path.startsWith(tmp) || !basename(path).startsWith(failPrefix)) return h;
      return {
        write: async () => {
          throw errno('ENOSPC');
        },
        sync: () => h.sync(),
        stat: () => h.stat(),
        close: () => h.close(),
      };
    },
    async readFile(path) {
      if (failReads) throw errno('EIO');
      return nodeFs.readFile(path);
    },
  };
  const s = await openStore(t, { dir, fs: seam });
  const e = entry({ a: objA, b: objB });

  failPrefix = hashBytes(objB); // the first blob lands, the second fails
  const r = await s.put(key(1), e);
  assert.equal(r.kind, 'error');
  assert.match(r.kind === 'error' ? r.error : '', /ENOSPC/);
  assert.deepEqual(fs.readdirSync(tmp), []);
  assert.deepEqual(listBlobs(dir), [], 'the blob written before the failure is not left behind');
  assert.equal(await hasRecord(s, key(1)), false);
  assert.equal(s.counters.putErrors, 1);
  assert.deepEqual(s.summary(), { entries: 0, bytes: 0 });

  failPrefix = undefined;
  assert.deepEqual(await s.put(key(1), e), { kind: 'stored' });
  failReads = true;
  const g = await s.get(key(1));
  assert.equal(g.kind, 'error');
  assert.equal(g.kind === 'error' && g.corrupt, false);
  assert.equal(await hasRecord(s, key(1)), true, 'an I/O error does not drop the entry');
  failReads = false;
  assertHit(await s.get(key(1)), e);
});

test('after a failed metadata write (a full disk) the store refuses every write until it is reopened, and says so once', async (t) => {
  // LevelDB's log writer goes on misaligned after a failed append: what it acknowledged after
  // that was dropped at the next open (tmpfs repro: every entry stored after the disk was freed).
  const dir = tempDir();
  const proto = Level.prototype as unknown as Record<'_batch' | '_put', (...a: unknown[]) => Promise<unknown>>;
  const real = { _batch: proto._batch, _put: proto._put };
  let full = false;
  const failing = (name: '_batch' | '_put') =>
    function (this: unknown, ...a: unknown[]) {
      if (full) return Promise.reject(Object.assign(new Error('IO error: 000003.log: No space left on device'), { code: 'LEVEL_IO_ERROR' }));
      return real[name].apply(this, a);
    };
  proto._batch = failing('_batch');
  proto._put = failing('_put');
  t.after(() => Object.assign(proto, real));
  const s = await LocalStore.open({ dir });
  const reported: string[] = [];
  s.onMetadataWriteError = (e) => reported.push(e.message);
  const a = entry({ obj: fill(500, 1) });
  const b = entry({ obj: fill(500, 2) });
  const c = entry({ obj: fill(500, 3) });
  assert.deepEqual(await s.put(key(1), a), { kind: 'stored' });
  full = true;
  assert.equal((await s.put(key(2), b)).kind, 'error');
  full = false;
  const r = await s.put(key(3), c);
  assert.equal(r.kind, 'error', 'no write is acknowledged after a failed one');
  await assert.rejects(s.sublevel<number>('stats').put('n', 1), /no writes until it is reopened/);
  assert.equal(reported.length, 1);
  assert.match(reported[0]!, /No space left/);
  assertHit(await s.get(key(1)), a);
  await s.close();

  const again = await openStore(t, { dir });
  assertHit(await again.get(key(1)), a);
  assert.deepEqual(await again.put(key(3), c), { kind: 'stored' }, 'a reopened store takes writes again');
  assertHit(await again.get(key(3)), c);
});

test('a second process cannot open the store: StoreLockedError', async (t) => {
  const dir = tempDir();
  const mod = pathToFileURL(join(fileURLToPath(import.meta.url), '../../../src/store/localStore.js')).href;
  const script = `
    const { LocalStore } = await import(process.env.STORE_MODULE);
    const s = await LocalStore.open({ dir: process.env.STORE_DIR });
    process.stdout.write('ready\\n');
    process.stdin.resume();
    process.stdin.on('end', async () => { await s.close(); process.exit(0); });
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
    env: { ...process.env, STORE_MODULE: mod, STORE_DIR: dir },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
  t.after(() => {
    if (child.exitCode === null) child.kill();
  });
  await new Promise<void>((res, rej) => {
    child.stdout.on('data', (d: Buffer) => d.toString().includes('ready') && res());
    child.on('exit', (code) => rej(new Error(`child exited early (${code})`)));
  });

  await assert.rejects(LocalStore.open({ dir }), (e: unknown) => {
    assert.ok(e instanceof StoreLockedError, `got ${String(e)}`);
    assert.equal(e.dir, dir);
    assert.match(e.message, /in use by another process/);
    return true;
  });
  child.stdin.end();
  assert.equal(await exited, 0);
  const s = await openStore(t, { dir });
  assert.deepEqual(s.summary(), { entries: 0, bytes: 0 });
});

test('layout: a newer version is refused and nothing is touched; garbage and foreign dirs are refused', async () => {
  const newer = tempDir();
  fs.writeFileSync(join(newer, LAYOUT_FILE), '2\n');
  fs.mkdirSync(join(newer, 'v2'));
  fs.writeFileSync(join(newer, 'v2', 'data'), 'precious');
  await assert.rejects(LocalStore.open({ dir: newer }), (e: unknown) => {
    assert.ok(e instanceof LayoutError);
    assert.match(e.message, /has layout 2, written by a newer ltocache; this build supports layout 1/);
    return true;
  });
  assert.deepEqual(fs.readdirSync(newer).sort(), [LAYOUT_FILE, 'v2']);
  assert.equal(fs.readFileSync(join(newer, LAYOUT_FILE), 'utf8'), '2\n');
  assert.equal(fs.readFileSync(join(newer, 'v2', 'data'), 'utf8'), 'precious');

  const garbage = tempDir();
  fs.writeFileSync(join(garbage, LAYOUT_FILE), 'hello world');
  await assert.rejects(LocalStore.open({ dir: garbage }), /LAYOUT is not a layout version/);

  const foreign = tempDir();
  fs.writeFileSync(join(foreign, 'notes.txt'), 'mine');
  await assert.rejects(LocalStore.open({ dir: foreign }), /has no LAYOUT file but is not empty/);
  assert.deepEqual(fs.readdirSync(foreign), ['notes.txt']);

  const fresh = join(tempDir(), 'does', 'not', 'exist');
  await (await LocalStore.open({ dir: fresh })).close();
  assert.equal(fs.readFileSync(join(fresh, LAYOUT_FILE), 'utf8'), '1\n');
});

test('layout: older versions run the migration chain in order; a gap is an error', async () => {
  const dir = tempDir();
  fs.writeFileSync(join(dir, LAYOUT_FILE), '1\n');
  const ran: string[] = [];
  const migrations = [2, 1].map((from) => ({
    from,
    run: async (d: string) => {
      ran.push(`${from}:${fs.readFileSync(join(d, LAYOUT_FILE), 'utf8').trim()}`);
    },
  }));
  await prepareLayout(dir, { fs: nodeFs, version: 3, migrations });
  assert.deepEqual(ran, ['1:1', '2:2']);
  assert.equal(fs.readFileSync(join(dir, LAYOUT_FILE), 'utf8'), '3\n');
  await assert.rejects(prepareLayout(dir, { fs: nodeFs, version: 5, migrations }), /layout 3, and no migration from it/);
});

test('reopen after close keeps entries, totals and sublevel data', async (t) => {
  const dir = tempDir();
  const e1 = entry({ obj: fill(700, 1) }, 'c3RkZXJy');
  const e2 = entry({ obj: fill(800, 2), dwo: fill(10, 3) });
  const first = await LocalStore.open({ dir });
  await first.put(key(1), e1);
  await first.put(key(2), e2);
  await first.sublevel<{ hits: number }>('stats').put('today', { hits: 42 });
  const before = first.summary();
  await first.close();
  assert.deepEqual(await first.get(key(1)).then((r) => r.kind), 'error', 'a closed store answers with errors');

  const s = await openStore(t, { dir });
  assert.deepEqual(s.summary(), before);
  assert.deepEqual(before, { entries: 2, bytes: 1510 + recordBytes(e1) + recordBytes(e2) });
  assertHit(await s.get(key(1)), e1);
  assertHit(await s.get(key(2)), e2);
  assert.deepEqual(await s.sublevel<{ hits: number }>('stats').get('today'), { hits: 42 });
  assert.deepEqual(await s.sweepDone, { orphanBlobs: 0, brokenEntries: 0 });
});

test('clear empties the cache but keeps the layout and sublevel data; an interrupted clear finishes at open', async (t) => {
  const dir = tempDir();
  const s = await LocalStore.open({ dir });
  await s.put(key(1), entry({ obj: fill(100, 1) }));
  await s.put(key(2), entry({ obj: fill(100, 2) }));
  await s.sublevel<string>('manifests').put('m', 'kept');
  await s.clear();
  assert.deepEqual(s.summary(), { entries: 0, bytes: 0 });
  assert.deepEqual(await s.get(key(1)), { kind: 'miss' });
  assert.deepEqual(listBlobs(dir), []);
  assert.equal(fs.readFileSync(join(dir, LAYOUT_FILE), 'utf8'), '1\n');
  assert.equal(await s.sublevel<string>('manifests').get('m'), 'kept');
  const e3 = entry({ obj: fill(100, 3) });
  assert.equal((await s.put(key(3), e3)).kind, 'stored');
  await s.close();

  const db = new Level<string, string>(layoutPaths(dir).meta);
  await db.sublevel<string, string>(SUBLEVELS.meta, { valueEncoding: 'utf8' }).put('clearing', '1');
  await db.close();
  const again = await openStore(t, { dir });
  assert.deepEqual(again.summary(), { entries: 0, bytes: 0 });
  assert.equal(await hasRecord(again, key(3)), false);
  assert.deepEqual(listBlobs(dir), []);
});

test('concurrent puts, gets and deletes keep reference counts and totals exact', async (t) => {
  const dir = tempDir();
  const s = await openStore(t, { dir });
  const shared = fill(5000, 0xaa);
  const es = Array.from({ length: 30 }, (_, i) => entry({ obj: shared, dwo: fill(100 + i, i) }));
  const results = await Promise.all([
    ...es.map((e, i) => s.put(key(i), e)),
    ...es.map((e, i) => s.put(key(i), e)), // same keys again: replaced, not doubled
    ...es.map((_, i) => s.get(key(i))),
  ]);
  assert.ok(results.slice(0, 60).every((r) => r.kind === 'stored'));
  const expected = 5000 + es.reduce((n, e, i) => n + 100 + i + recordBytes(e), 0);
  assert.deepEqual(s.summary(), { entries: 30, bytes: expected });
  assert.equal(listBlobs(dir).length, 31);
  for (const [i, e] of es.entries()) assertHit(await s.get(key(i)), e);

  const deleted = await Promise.all(es.map((_, i) => s.delete(key(i))));
  assert.ok(deleted.every((d) => d.kind === 'deleted'));
  assert.deepEqual(s.summary(), { entries: 0, bytes: 0 });
  assert.deepEqual(listBlobs(dir), []);
});

test('a blob shard directory removed behind the store is made again on the next put', async (t) => {
  const dir = tempDir();
  const s = await openStore(t, { dir, sweepOnOpen: false, durable: false });
  const a = entry({ obj: Buffer.from('first blob') });
  assert.equal((await s.put(key('shard-1'), a)).kind, 'stored');
  fs.rmSync(join(blobPath(dir, 'first blob'), '..'), { recursive: true, force: true });
  const b = entry({ obj: Buffer.from('first blob') });
  b.record.compileMs = 13;
  assert.equal((await s.put(key('shard-2'), b)).kind, 'stored');
  const got = await s.get(key('shard-2'));
  assert.equal(got.kind, 'hit');
  assert.deepEqual(got.kind === 'hit' && got.entry.files.get('obj'), Buffer.from('first blob'));
});

test('a put of shared blobs keeps reference counts right when both entries are written at once', async (t) => {
  const dir = tempDir();
  const s = await openStore(t, { dir, sweepOnOpen: false, durable: false });
  const shared = Buffer.from('shared blob');
  const [r1, r2] = await Promise.all([
    s.put(key('ref-1'), entry({ obj: shared }), { verified: true, parsed: true }),
    s.put(key('ref-2'), entry({ obj: shared, dwo: Buffer.from('own') }), { verified: true, parsed: true }),
  ]);
  assert.equal(r1.kind, 'stored');
  assert.equal(r2.kind, 'stored');
  assert.equal((await s.delete(key('ref-1'))).kind, 'deleted');
  assert.ok(fs.existsSync(blobPath(dir, shared)), 'still referenced by ref-2');
  assert.equal((await s.delete(key('ref-2'))).kind, 'deleted');
  assert.ok(!fs.existsSync(blobPath(dir, shared)));
  assert.deepEqual(s.summary(), { entries: 0, bytes: 0 });
});

test('a put replacing an entry that shares a blob with it moves each count once: shared kept, old-only freed, new-only added', async (t) => {
  const dir = tempDir();
  const s = await openStore(t, { dir, sweepOnOpen: false, durable: false });
  const shared = fill(3000, 0x5a);
  const k = key('replace-shared');
  // A lookup finds the key absent, then another put of it commits before the write-back: the
  // write-back's commit must see that entry and release its references.
  assert.deepEqual(await s.get(k), { kind: 'miss' });
  const old = entry({ obj: shared, dwo: fill(200, 1) });
  assert.equal((await s.put(k, old)).kind, 'stored');
  const next = entry({ obj: shared, dwo: fill(300, 2) });
  assert.equal((await s.put(k, next, { verified: true, parsed: true })).kind, 'stored');
  assert.deepEqual(s.summary(), { entries: 1, bytes: 3000 + 300 + recordBytes(next) });
  assert.ok(!fs.existsSync(blobPath(dir, fill(200, 1))), 'the old entry alone referenced it');
  assertHit(await s.get(k), next);
  // Both at once, then a third: the totals end as if they ran one after another.
  const [a, b] = await Promise.all([s.put(k, old, { verified: true, parsed: true }), s.put(k, next, { verified: true, parsed: true })]);
  assert.equal(a.kind, 'stored');
  assert.equal(b.kind, 'stored');
  const got = await s.get(k);
  const last = got.kind === 'hit' && got.entry.files.get('dwo')!.length === 200 ? old : next;
  assertHit(got, last);
  assert.deepEqual(s.summary(), { entries: 1, bytes: 3000 + last.files.get('dwo')!.length + recordBytes(last) });
  assert.equal(listBlobs(dir).length, 2);
  assert.equal((await s.delete(k)).kind, 'deleted');
  assert.deepEqual(s.summary(), { entries: 0, bytes: 0 });
  assert.deepEqual(listBlobs(dir), []);
});

test('clear keeps the blob shard directories and removes anything else in blobs/; puts after it store as before', async (t) => {
  const dir = tempDir();
  const s = await openStore(t, { dir, sweepOnOpen: false, durable: false });
  const e1 = entry({ obj: Buffer.from('before the clear') });
  assert.equal((await s.put(key('c-1'), e1)).kind, 'stored');
  const shard = join(blobPath(dir, 'before the clear'), '..');
  const stray = join(layoutPaths(dir).blobs, 'not-a-shard');
  fs.mkdirSync(join(stray, 'inner'), { recursive: true });
  await s.clear();
  assert.deepEqual(fs.readdirSync(shard), [], 'the shard directory stays, empty');
  assert.ok(!fs.existsSync(stray));
  assert.deepEqual(await s.get(key('c-1')), { kind: 'miss' });
  assert.equal((await s.put(key('c-1'), e1)).kind, 'stored');
  assertHit(await s.get(key('c-1')), e1);
  // A shard directory removed after the clear is made again.
  await s.clear();
  fs.rmSync(shard, { recursive: true, force: true });
  assert.equal((await s.put(key('c-2'), e1)).kind, 'stored');
  assertHit(await s.get(key('c-2')), e1);
});

test('a put racing a clear commits its entry with its blob', async (t) => {
  const dir = tempDir();
  // Removing a file takes 20 ms: the clear is under way for a while.
  const seam: Partial<StoreFs> = {
    async rm(path, opts) {
      await new Promise((r) => setTimeout(r, 20));
      return nodeFs.rm(path, opts);
    },
  };
  const s = await openStore(t, { dir, fs: seam, sweepOnOpen: false, durable: false });
  const shared = fill(1500, 7);
  for (let i = 0; i < 20; i++) assert.equal((await s.put(key(`c-${i}`), entry({ obj: i === 0 ? shared : fill(1500, 100 + i) }))).kind, 'stored');
  const clearing = s.clear();
  await new Promise((r) => setTimeout(r, 5));
  // The same bytes as a blob the clear is about to remove: found present, not written again.
  const e = entry({ obj: shared });
  const put = s.put(key('during'), e);
  await clearing;
  assert.equal((await put).kind, 'stored');
  assertHit(await s.get(key('during')), e);
  assert.deepEqual(s.summary(), { entries: 1, bytes: 1500 + recordBytes(e) });
});

test('a clear that fails to remove files leaves no totals behind: later puts are not evicted for them', async (t) => {
  const dir = tempDir();
  let failOnce = false;
  const seam: Partial<StoreFs> = {
    async rm(path, opts) {
      if (failOnce) {
        failOnce = false;
        throw Object.assign(new Error('EACCES: injected'), { code: 'EACCES' });
      }
      return nodeFs.rm(path, opts);
    },
  };
  const s = await openStore(t, { dir, fs: seam, sweepOnOpen: false, durable: false, maxBytes: 8000 });
  for (let i = 0; i < 3; i++) assert.equal((await s.put(key(`f-${i}`), entry({ obj: fill(2000, 10 + i) }))).kind, 'stored');
  failOnce = true;
  await assert.rejects(s.clear(), /EACCES/);
  assert.deepEqual(s.summary(), { entries: 0, bytes: 0 });
  const a = entry({ obj: fill(2000, 20) });
  const b = entry({ obj: fill(2000, 21) });
  assert.equal((await s.put(key('after-a'), a)).kind, 'stored');
  assert.equal((await s.put(key('after-b'), b)).kind, 'stored');
  assertHit(await s.get(key('after-a')), a);
  assertHit(await s.get(key('after-b')), b);
});

test('sublevel() hands out one object per name', async (t) => {
  const s = await openStore(t, { dir: tempDir(), sweepOnOpen: false });
  assert.equal(s.sublevel('stats'), s.sublevel('stats'));
  assert.notEqual(s.sublevel('stats'), s.sublevel('log'));
  assert.throws(() => s.sublevel('../x'), /invalid sublevel name/);
});

test('nodeFs.readFile: files up to SYNC_READ_MAX and larger ones read whole; a missing file is ENOENT, an empty one empty', async () => {
  const dir = tempDir();
  for (const size of [0, 11_000, SYNC_READ_MAX, SYNC_READ_MAX + 1, 3 * SYNC_READ_MAX]) {
    const data = Buffer.alloc(size);
    for (let i = 0; i < size; i += 4096) data[i] = (i / 4096) & 0xff;
    const p = join(dir, `f${size}`);
    fs.writeFileSync(p, data);
    assert.ok((await nodeFs.readFile(p)).equals(data), `a file of ${size} bytes`);
  }
  await assert.rejects(nodeFs.readFile(join(dir, 'absent')), (e: NodeJS.ErrnoException) => e.code === 'ENOENT');
  await assert.rejects(nodeFs.readFile(dir), (e: NodeJS.ErrnoException) => e.code === 'EISDIR');
});
