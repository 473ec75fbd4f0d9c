import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { FileDigests } from '../../src/key/fileDigests.js';
import { Hasher, hashBytes, hashFile, initHash } from '../../src/key/hash.js';
import { ObservingFiles } from '../../src/key/observed.js';
import { MEMO_CONTENT_CHECK_MAX_BYTES } from '../../src/protocol/limits.js';
import { tempDir as envTempDir } from '../support/env.js';

await initHash();

const dirs: string[] = [];
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});
function tempDir(): string {
  const d = envTempDir('digests');
  dirs.push(d);
  return d;
}

const HOUR_AGO = () => new Date(Date.now() - 3600_000);
/** A short racy window, so that a file's ctime (which utimes sets to now) settles quickly. */
const SHORT_WINDOW_NS = 50_000_000n;
const SETTLE_MS = 150;

function writeOld(path: string, data: string | Buffer): Date {
  fs.writeFileSync(path, data);
  const t = HOUR_AGO();
  fs.utimesSync(path, t, t);
  return t;
}

test('the digest is hashFile of the content, with the size', async () => {
  const d = tempDir();
  const p = join(d, 'f.bin');
  // Three whole 1 MiB chunks and a partial one: hashFile reads the next chunk while hashing this one.
  const data = Buffer.alloc((3 << 20) + 123);
  for (let i = 0; i < data.length; i++) data[i] = (i * 31) & 0xff;
  fs.writeFileSync(p, data);
  const fd = new FileDigests();
  const r = await fd.digest(p);
  assert.deepEqual(await hashFile(p), { digest: hashBytes(data), size: data.length });
  assert.deepEqual(pick(r), { kind: 'file', digest: (await hashFile(p)).digest, size: data.length });
  assert.equal(r.kind === 'file' && r.digest, hashBytes(data));
  assert.match(r.kind === 'file' ? r.digest : '', /^[0-9a-f]{32}$/);
  // An empty file has a digest too.
  fs.writeFileSync(join(d, 'empty'), '');
  assert.deepEqual(pick(await fd.digest(join(d, 'empty'))), { kind: 'file', digest: hashBytes(''), size: 0 });
  assert.deepEqual(await hashFile(join(d, 'empty')), { digest: hashBytes(''), size: 0 });
});

test('an old unchanged file is memoised: the second call is a memo hit', async () => {
  const d = tempDir();
  const p = join(d, 'old.txt');
  writeOld(p, 'old content');
  await sleep(SETTLE_MS);
  const fd = new FileDigests(SHORT_WINDOW_NS);
  const first = await fd.digest(p);
  assert.equal(fd.hashed, 1);
  assert.equal(fd.memoHits, 0);
  assert.equal(fd.size, 1);
  const second = await fd.digest(p);
  assert.deepEqual(second, first);
  assert.equal(fd.hashed, 1);
  assert.equal(fd.memoHits, 1);
  await fd.digest(p);
  assert.equal(fd.memoHits, 2);
});

test('default window (2 s): the ctime utimes leaves must settle before the file is memoised', async () => {
  const d = tempDir();
  const p = join(d, 'old.txt');
  writeOld(p, 'old content');
  const fd = new FileDigests();
  // mtime is an hour back but ctime is now: still racy.
  await fd.digest(p);
  await fd.digest(p);
  assert.equal(fd.hashed, 2);
  assert.equal(fd.memoHits, 0);
  assert.equal(fd.size, 0);
  await sleep(2300);
  await fd.digest(p);
  await fd.digest(p);
  assert.equal(fd.hashed, 3);
  assert.equal(fd.memoHits, 1);
});

test('a file just written (mtime now) is hashed on every call', async () => {
  const d = tempDir();
  const p = join(d, 'new.txt');
  fs.writeFileSync(p, 'fresh');
  const fd = new FileDigests();
  for (let i = 1; i <= 3; i++) {
    const r = await fd.digest(p);
    assert.equal(r.kind === 'file' && r.digest, hashBytes('fresh'));
    assert.equal(fd.hashed, i);
  }
  assert.equal(fd.memoHits, 0);
  assert.equal(fd.size, 0);
});

test('a file with an mtime in the future is never memoised', async () => {
  const d = tempDir();
  const p = join(d, 'future.txt');
  fs.writeFileSync(p, 'from the future');
  const t = new Date(Date.now() + 86400_000);
  fs.utimesSync(p, t, t);
  await sleep(SETTLE_MS); // ctime settles; only the mtime keeps it racy
  const fd = new FileDigests(SHORT_WINDOW_NS);
  for (let i = 1; i <= 3; i++) await fd.digest(p);
  assert.equal(fd.hashed, 3);
  assert.equal(fd.memoHits, 0);
  assert.equal(fd.size, 0);
});

test('content changed, mtime forced back to the old value, other size → re-hashed', async () => {
  const d = tempDir();
  const p = join(d, 'f.txt');
  const t = writeOld(p, 'version one');
  await sleep(SETTLE_MS);
  const fd = new FileDigests(SHORT_WINDOW_NS);
  const before = await fd.digest(p);
  assert.equal(fd.size, 1);
  const oldMtimeNs = fs.statSync(p, { bigint: true }).mtimeNs;
  fs.writeFileSync(p, 'version two, longer');
  fs.utimesSync(p, t, t);
  assert.equal(fs.statSync(p, { bigint: true }).mtimeNs, oldMtimeNs);
  const after = await fd.digest(p);
  assert.equal(fd.hashed, 2);
  assert.equal(fd.memoHits, 0);
  assert.deepEqual(pick(after), { kind: 'file', digest: hashBytes('version two, longer'), size: 19 });
  assert.equal(after.kind === 'file' && after.settled, false, 'a fresh file is not settled: the memo re-hashes it');
  assert.notDeepEqual(after, before);
});

test('content changed, same size, mtime forced back → re-hashed (ctime moved)', async () => {
  const d = tempDir();
  const p = join(d, 'f.txt');
  const t = writeOld(p, 'AAAA');
  await sleep(SETTLE_MS);
  const fd = new FileDigests(SHORT_WINDOW_NS);
  await fd.digest(p);
  const old = fs.statSync(p, { bigint: true });
  await sleep(20);
  fs.writeFileSync(p, 'BBBB');
  fs.utimesSync(p, t, t);
  const now = fs.statSync(p, { bigint: true });
  assert.equal(now.mtimeNs, old.mtimeNs);
  assert.equal(now.size, old.size);
  assert.equal(now.ino, old.ino);
  assert.notEqual(now.ctimeNs, old.ctimeNs);
  const after = await fd.digest(p);
  assert.equal(fd.hashed, 2);
  assert.equal(after.kind === 'file' && after.digest, hashBytes('BBBB'));
});

test('a file replaced by rename (new inode) is re-hashed', async () => {
  const d = tempDir();
  const p = join(d, 'f.txt');
  const t = writeOld(p, 'first');
  await sleep(SETTLE_MS);
  const fd = new FileDigests(SHORT_WINDOW_NS);
  await fd.digest(p);
  writeOld(join(d, 'g.txt'), 'other');
  fs.utimesSync(join(d, 'g.txt'), t, t);
  fs.renameSync(join(d, 'g.txt'), p);
  const r = await fd.digest(p);
  assert.equal(r.kind === 'file' && r.digest, hashBytes('other'));
  assert.equal(fd.hashed, 2);
});

test('absent paths → absent', async () => {
  const d = tempDir();
  const fd = new FileDigests();
  assert.deepEqual(await fd.digest(join(d, 'nope')), { kind: 'absent' });
  fs.writeFileSync(join(d, 'file'), 'x');
  // A path through a regular file (ENOTDIR).
  assert.deepEqual(await fd.digest(join(d, 'file', 'below')), { kind: 'absent' });
  // A dangling symlink.
  fs.symlinkSync(join(d, 'nowhere'), join(d, 'dangling'));
  assert.deepEqual(await fd.digest(join(d, 'dangling')), { kind: 'absent' });
  assert.equal(fd.hashed, 0);
});

test('a file that disappears after being memoised → absent', async () => {
  const d = tempDir();
  const p = join(d, 'f.txt');
  writeOld(p, 'here');
  await sleep(SETTLE_MS);
  const fd = new FileDigests(SHORT_WINDOW_NS);
  assert.equal((await fd.digest(p)).kind, 'file');
  fs.rmSync(p);
  assert.deepEqual(await fd.digest(p), { kind: 'absent' });
});

test('a directory or a device → not-regular; a symlink to a file → its content', async () => {
  const d = tempDir();
  const fd = new FileDigests();
  fs.mkdirSync(join(d, 'sub'));
  assert.deepEqual(await fd.digest(join(d, 'sub')), { kind: 'not-regular' });
  assert.deepEqual(await fd.digest('/dev/null'), { kind: 'not-regular' });
  fs.writeFileSync(join(d, 'target'), 'target content');
  fs.symlinkSync(join(d, 'target'), join(d, 'link'));
  assert.equal((await fd.digest(join(d, 'link'))).kind === 'file', true);
  const r = await fd.digest(join(d, 'link'));
  assert.equal(r.kind === 'file' && r.digest, hashBytes('target content'));
  assert.equal(fd.hashed, 2);
});

/** The content part of a digest answer (stat identity and settledness are checked separately). */
function pick(d: Awaited<ReturnType<FileDigests['digest']>>): unknown {
  return d.kind === 'file' ? { kind: d.kind, digest: d.digest, size: d.size } : d;
}

test("a job's observer asks the digest source once per path, and a path marked rewritten since is recorded by content", async () => {
  const dir = tempDir();
  const a = join(dir, 'a.o');
  const b = join(dir, 'b.o');
  writeOld(a, 'bitcode a');
  writeOld(b, 'bitcode b');
  const inner = new FileDigests(SHORT_WINDOW_NS);
  await sleep(SETTLE_MS);
  const asked: string[] = [];
  const observe = new ObservingFiles({
    digest: (p) => {
      asked.push(p);
      return inner.digest(p);
    },
  });
  const first = await observe.digest(a);
  // Changed behind the job's back: the job's key and memo keep the one observation it made.
  fs.writeFileSync(a, 'bitcode A, edited');
  assert.deepEqual(await observe.digest(a), first);
  await observe.digest(b);
  observe.rewritten(b);
  await observe.digest(b);
  assert.deepEqual(asked, [a, b], 'each path asked for once');
  const checks = observe.checks();
  assert.equal(checks.find((c) => 'path' in c && c.path === a)?.kind, 'stat');
  assert.equal(checks.find((c) => 'path' in c && c.path === b)?.kind, 'content', 'marked rewritten after its first look');
  // The memo's stat check of `a` is what the native client and checksHold test next: it fails now.
  const statCheck = checks.find((c) => 'path' in c && c.path === a);
  assert.ok(statCheck && statCheck.kind === 'stat' && statCheck.digest === hashBytes(Buffer.from('bitcode a')));
});

test("a directory's listing check is not replaced by a later look at the same path as a file", async () => {
  const dir = tempDir();
  const observe = new ObservingFiles(new FileDigests(SHORT_WINDOW_NS));
  observe.directory(dir);
  // A flag whose value names the directory: probed as a file candidate, it is not a regular file.
  assert.equal((await observe.digest(dir)).kind, 'not-regular');
  assert.deepEqual(
    observe.checks().map((c) => c.kind),
    ['dir'],
  );
  assert.equal(observe.memoable(), false, 'made just now: its identity does not yet stand for its listing');
});

test('a large file that is not settled leaves the job without a memo (its content check would hash it on every hit); a small one, a settled one or a rewritten one does not', async () => {
  const dir = tempDir();
  const big = join(dir, 'libLLVM.so');
  const small = join(dir, 'a.o');
  const index = join(dir, 'a.o.thinlto.bc');
  fs.writeFileSync(big, Buffer.alloc(MEMO_CONTENT_CHECK_MAX_BYTES + 1, 7));
  fs.writeFileSync(small, Buffer.alloc(MEMO_CONTENT_CHECK_MAX_BYTES, 7));
  fs.writeFileSync(index, Buffer.alloc(MEMO_CONTENT_CHECK_MAX_BYTES + 1, 9));
  // Written just now: none is settled under the daemon's 2 s window.
  const fresh = () => new ObservingFiles(new FileDigests());
  const smallOnly = fresh();
  await smallOnly.digest(small);
  assert.equal(smallOnly.checks()[0]?.kind, 'content');
  assert.equal(smallOnly.memoable(), true, 'a file of the limit is checked by content');
  const rewritten = fresh();
  rewritten.rewritten(index);
  await rewritten.digest(index);
  assert.equal(rewritten.memoable(), true, 'an index is always checked by content, whatever its size');
  const markedAfter = fresh();
  await markedAfter.digest(index);
  markedAfter.rewritten(index);
  assert.equal(markedAfter.memoable(), true, 'marked rewritten after its first look');
  const large = fresh();
  await large.digest(small);
  await large.digest(big);
  assert.equal(large.memoable(), false, 'a large file written just now');
  // Settled (a window shorter than its age): a stat check, and a memo.
  await sleep(SETTLE_MS);
  const settled = new ObservingFiles(new FileDigests(SHORT_WINDOW_NS));
  await settled.digest(big);
  assert.equal(settled.checks()[0]?.kind, 'stat');
  assert.equal(settled.memoable(), true);
});

test('hashBytes (one-shot) equals a Hasher fed the same bytes in pieces, and hashes a string as its UTF-8', () => {
  for (const size of [0, 1, 31, 32, 33, 4095, 65_537, (1 << 20) + 1]) {
    const data = Buffer.alloc(size);
    for (let i = 0; i < size; i++) data[i] = (i * 131 + size) & 0xff;
    const h = new Hasher();
    for (let at = 0; at < size; at += 7919) h.update(data.subarray(at, at + 7919));
    assert.equal(hashBytes(data), h.digest(), `${size} bytes`);
  }
  assert.equal(hashBytes('gr\u00fc\u00df'), new Hasher().update(Buffer.from('gr\u00fc\u00df', 'utf8')).digest());
});
