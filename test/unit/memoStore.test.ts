import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { dirname, join } from 'node:path';
import { after, test } from 'node:test';
import { hashBytes, initHash } from '../../src/key/hash.js';
import { decodeDistMemo } from '../../src/memo/distMemo.js';
import { decodeMemo, encodeMemo, type Memo, memoPath, noticeLogPath } from '../../src/memo/memoFormat.js';
import { MemoStore } from '../../src/memo/memoStore.js';
import { decodeTeamPack, encodeTeamPack, teamPackPath } from '../../src/memo/teamPack.js';
import { tempDir } from '../support/env.js';

await initHash();

const dirs: string[] = [];
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

/** A cache directory with one stored blob, and a memo that names it. */
function setup(): { dir: string; store: () => MemoStore; memo: Memo; lookup: string } {
  const dir = tempDir('memostore');
  dirs.push(dir);
  const blobs = join(dir, 'blobs');
  fs.mkdirSync(blobs);
  const obj = Buffer.from('object bytes');
  const digest = hashBytes(obj);
  fs.writeFileSync(join(blobs, digest), obj);
  const memo: Memo = {
    key: hashBytes(Buffer.from('a key')),
    checks: [{ kind: 'env', name: 'LTOCACHE_TEST', value: null }],
    outputs: [{ path: join(dir, 'out.o'), digest, size: obj.length }],
    stdout: Buffer.alloc(0),
    stderr: Buffer.from('warning\n'),
  };
  return { dir, store: () => new MemoStore(dir, (d) => join(blobs, d)), memo, lookup: hashBytes(Buffer.from('a command')) };
}

test('a memo already on disk with the same bytes is not written again by a restarted daemon', async () => {
  const { dir, store, memo, lookup } = setup();
  assert.equal(await store().write(lookup, memo), 'written');
  const before = fs.statSync(memoPath(dir, lookup));
  // A new MemoStore is a daemon after a restart: it has no memory of what it wrote.
  const again = store();
  assert.equal(await again.write(lookup, memo), 'unchanged');
  const after = fs.statSync(memoPath(dir, lookup));
  assert.equal(after.ino, before.ino, 'the memo file was replaced');
  // It still knows the memo belongs to the key: removing the key removes it.
  await again.removeKey(memo.key);
  assert.equal(fs.existsSync(memoPath(dir, lookup)), false);
});

test('a memo on disk with other bytes, another mode or a symlink in its place is written again', async () => {
  const { dir, store, memo, lookup } = setup();
  const s = store();
  assert.equal(await s.write(lookup, memo), 'written');
  const path = memoPath(dir, lookup);

  const other = { ...memo, stderr: Buffer.from('another warning\n') };
  assert.equal(await store().write(lookup, other), 'written');
  assert.equal(await store().write(lookup, memo), 'written');

  fs.chmodSync(path, 0o644);
  assert.equal(await store().write(lookup, memo), 'written');
  assert.equal(fs.statSync(path).mode & 0o777, 0o600);

  const target = join(dir, 'elsewhere');
  fs.copyFileSync(path, target);
  fs.chmodSync(target, 0o600);
  fs.rmSync(path);
  fs.symlinkSync(target, path);
  assert.equal(await store().write(lookup, memo), 'written');
  assert.equal(fs.lstatSync(path).isFile(), true);
});

test('a memo file written after a given time is not replaced by an older memo (a team pack adopted late)', async () => {
  const { dir, store, memo, lookup } = setup();
  const packedAt = Date.now() - 60_000;
  const newer = { ...memo, stderr: Buffer.from('compiled anew\n') };
  assert.equal(await store().write(lookup, newer), 'written');
  assert.equal(await store().write(lookup, memo, packedAt), 'newer');
  assert.equal(decodeMemo(fs.readFileSync(memoPath(dir, lookup))).stderr.toString(), 'compiled anew\n');
  // A memo file from before the pack is replaced.
  const old = new Date(packedAt - 60_000);
  fs.utimesSync(memoPath(dir, lookup), old, old);
  assert.equal(await store().write(lookup, memo, packedAt), 'written');
});

test('no memo is written while a blob it names is not stored', async () => {
  const { dir, store, memo, lookup } = setup();
  const missing = { ...memo, outputs: [{ ...memo.outputs[0]!, digest: hashBytes(Buffer.from('not stored')) }] };
  assert.equal(await store().write(lookup, missing), 'no-blob');
  assert.equal(fs.existsSync(memoPath(dir, lookup)), false);
});

test('a memo larger than the encoder first reserves round-trips field for field', () => {
  const { memo } = setup();
  const checks: Memo['checks'] = [];
  for (let i = 0; i < 200; i++) {
    checks.push({
      kind: 'stat',
      path: `/some/long/path/to/an/imported/module/number/${i}.o`,
      dev: 2049n,
      ino: BigInt(1000 + i),
      size: 123456n,
      mtimeNs: 1_700_000_000_123_456_789n,
      ctimeNs: 1_700_000_000_987_654_321n,
    });
    checks.push({ kind: 'content', path: `/idx/${i}.thinlto.bc`, size: i, digest: hashBytes(Buffer.from(String(i))) });
  }
  checks.push(
    { kind: 'env', name: 'CCC_OVERRIDE_OPTIONS', value: 'ünïcode value' },
    { kind: 'absent', path: '/etc/clang' },
    { kind: 'dir', path: '/usr/bin', dev: 1n, ino: 2n, mtimeNs: 3n, ctimeNs: 4n },
  );
  const big: Memo = { ...memo, checks, stderr: Buffer.alloc(9000, 0x41) };
  const bytes = encodeMemo(big);
  assert.ok(bytes.length > 4096 * 4);
  const back = decodeMemo(bytes);
  assert.deepEqual(back, big);
});

test('a distribution memo is removed with any of its jobs keys, and not written while a blob is missing', async () => {
  const { dir, store, memo } = setup();
  const s = store();
  const lookup = hashBytes(Buffer.from('a distribution'));
  const job = (key: string) => ({ key, lookup: hashBytes(Buffer.from(`job ${key}`)), outputs: memo.outputs, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) });
  const k1 = hashBytes(Buffer.from('key one'));
  const k2 = hashBytes(Buffer.from('key two'));
  const dist = { checks: memo.checks, jobs: [job(k1), job(k2)] };
  assert.equal(await s.writeDist(lookup, dist), 'written');
  assert.deepEqual(decodeDistMemo(fs.readFileSync(memoPath(dir, lookup))), dist);
  await s.removeKey(k2);
  assert.equal(fs.existsSync(memoPath(dir, lookup)), false, 'evicting one job removes the whole distribution memo');
  const missing = { ...dist, jobs: [job(k1), { ...job(k2), outputs: [{ ...memo.outputs[0]!, digest: hashBytes(Buffer.from('not stored')) }] }] };
  assert.equal(await s.writeDist(lookup, missing), 'no-blob');
  assert.equal(fs.existsSync(memoPath(dir, lookup)), false);
});

test('drain parses P lines (served from the team pack) as well as H lines', async () => {
  const { dir, store } = setup();
  const s = store();
  fs.mkdirSync(join(dir, 'memo'), { mode: 0o700 });
  const k = 'ab'.repeat(16);
  const l = 'cd'.repeat(16);
  fs.writeFileSync(noticeLogPath(dir), `H ${k} ${l} 1 2\nP ${k} ${l} 3 4\nQ ${k} ${l} 5 6\nP ${k} ${l} 7\n`);
  assert.deepEqual(await s.drain(), [
    { key: k, lookup: l, startMs: 1, endMs: 2, pack: false },
    { key: k, lookup: l, startMs: 3, endMs: 4, pack: true },
  ]);
});

test('writePack writes the team pack 0600, replaces it whole, and removePack and clear remove it', async () => {
  const { dir, store, memo, lookup } = setup();
  const s = store();
  const path = teamPackPath(dir);
  const blob = Buffer.from('object bytes');
  const first = encodeTeamPack([{ lookup, memo: encodeMemo(memo) }], [{ digest: hashBytes(blob), bytes: blob }]);
  await s.writePack(first);
  assert.equal(fs.statSync(join(dir, 'memo')).mode & 0o777, 0o700);
  assert.equal(fs.statSync(path).mode & 0o777, 0o600);
  assert.deepEqual(fs.readFileSync(path), Buffer.concat(first));
  assert.equal(decodeTeamPack(fs.readFileSync(path)).memos.size, 1);

  const before = fs.statSync(path).ino;
  const second = encodeTeamPack([], []);
  await s.writePack(second);
  assert.deepEqual(fs.readFileSync(path), Buffer.concat(second));
  assert.notEqual(fs.statSync(path).ino, before, 'replaced by a rename, not rewritten in place');
  assert.deepEqual(
    fs.readdirSync(join(dir, 'memo')).filter((n) => n !== 'team.pack'),
    [],
    'no temp left',
  );

  await s.removePack();
  assert.equal(fs.existsSync(path), false);
  await s.removePack();

  // The memo directory removed behind the store's back is made again.
  fs.rmSync(join(dir, 'memo'), { recursive: true });
  await s.writePack(first);
  assert.equal(fs.existsSync(path), true);
  assert.equal(await s.write(lookup, memo), 'written');
  await s.clear();
  assert.equal(fs.existsSync(path), false);
  assert.equal(fs.existsSync(memoPath(dir, lookup)), false);
});

test('sweep removes, under a later daemon, memos whose blobs are gone, memos that do not parse, and old temps; it keeps the rest', async () => {
  const { dir, store, memo } = setup();
  const s = store();
  const lk = (n: string) => hashBytes(Buffer.from(n));
  // Kept: a memo whose blob is there, a distribution memo whose blobs are there, a fresh temp.
  assert.equal(await s.write(lk('usable'), memo), 'written');
  const job = { key: memo.key, lookup: lk('job'), outputs: memo.outputs, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) };
  assert.equal(await s.writeDist(lk('dist'), { checks: memo.checks, jobs: [job] }), 'written');
  const freshTemp = `${memoPath(dir, lk('usable'))}.tmp-fresh`;
  fs.writeFileSync(freshTemp, 'half a memo');
  // Removed: a memo and a distribution memo whose blob was evicted (the earlier daemon is gone, with
  // its memory of which memos name which key), a memo that does not parse, old temps.
  const evicted = Buffer.from('evicted object');
  const gone = { ...memo.outputs[0]!, digest: hashBytes(evicted), size: evicted.length };
  fs.writeFileSync(join(dir, 'blobs', gone.digest), evicted);
  assert.equal(await s.write(lk('evicted'), { ...memo, outputs: [gone] }), 'written');
  assert.equal(await s.writeDist(lk('evicted dist'), { checks: memo.checks, jobs: [job, { ...job, outputs: [gone] }] }), 'written');
  fs.rmSync(join(dir, 'blobs', gone.digest));
  fs.mkdirSync(dirname(memoPath(dir, lk('garbage'))), { recursive: true, mode: 0o700 });
  fs.writeFileSync(memoPath(dir, lk('garbage')), 'LTOMEMO\x01 truncated', { mode: 0o600 });
  const oldTemp = `${memoPath(dir, lk('usable'))}.tmp-killed`;
  const oldPack = `${teamPackPath(dir)}.tmp-killed`;
  for (const f of [oldTemp, oldPack]) {
    fs.writeFileSync(f, 'left by a killed writer');
    const twoHoursAgo = new Date(Date.now() - 2 * 3600_000);
    fs.utimesSync(f, twoHoursAgo, twoHoursAgo);
  }
  // A memo of a key denied (a verify mismatch) under an earlier daemon, its blob still held.
  const deniedKey = hashBytes(Buffer.from('denied key'));
  assert.equal(await s.write(lk('denied'), { ...memo, key: deniedKey }), 'written');
  const later = store();
  assert.equal(await later.sweep((key) => key === deniedKey), 6);
  assert.equal(fs.existsSync(memoPath(dir, lk('denied'))), false, "the denied key's memo");
  for (const kept of [memoPath(dir, lk('usable')), memoPath(dir, lk('dist')), freshTemp]) assert.ok(fs.existsSync(kept), kept);
  for (const removed of [memoPath(dir, lk('evicted')), memoPath(dir, lk('evicted dist')), memoPath(dir, lk('garbage')), oldTemp, oldPack]) {
    assert.equal(fs.existsSync(removed), false, removed);
  }
  assert.equal(await later.sweep(), 0, 'nothing left to remove');
});
