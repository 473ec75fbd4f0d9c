/**
 * The native client's team pack path (docs/memo.md "Team pack", cache-schema/teampack.v1.md)
 * against real files: packs written with encodeTeamPack, no memo file for the job, a fake compiler
 * that leaves a marker when it runs. No daemon: every fallback ends in a direct exec of the fake
 * compiler, so "the compiler ran" is exactly "the fast path declined".
 */

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { hashBytes } from '../../src/key/hash.js';
import { encodeMemo, lookupDigest, type Memo, memoPath, noticeLogPath } from '../../src/memo/memoFormat.js';
import { encodeTeamPack, type PackBlob, type PackMemo, teamPackPath } from '../../src/memo/teamPack.js';
import { baseEnv, blobPath, runClient, scenarioRoots, writeBlob } from '../support/memoClient.js';
import { flipByte, HEADER, MEMO_ENTRY, packLayout } from '../support/teamPackLayout.js';

const IS_ROOT = process.getuid!() === 0;

const roots = scenarioRoots('pack-client');

/** Unrelated memos and blobs around the job's, so that lookups search real indexes; the lowest
 *  and highest lookups are theirs. */
function neighbours(): { memos: PackMemo[]; blobs: PackBlob[] } {
  const memos: PackMemo[] = [];
  const blobs: PackBlob[] = [];
  const lookups = ['0'.repeat(32), 'f'.repeat(32), ...Array.from({ length: 30 }, (_, i) => hashBytes(`neighbour ${i}`))];
  for (const [i, lookup] of lookups.entries()) {
    const bytes = randomBytes(50 + i);
    blobs.push({ digest: hashBytes(bytes), bytes });
    const memo: Memo = {
      key: hashBytes(`neighbour key ${i}`),
      checks: [],
      outputs: [{ path: `/nowhere/${i}.o`, digest: hashBytes(bytes), size: bytes.length }],
      stdout: Buffer.alloc(0),
      stderr: Buffer.alloc(0),
    };
    memos.push({ lookup, memo: encodeMemo(memo) });
  }
  return { memos, blobs };
}

/** A work dir with checked inputs, a fake compiler, and a pack holding the job's memo and blobs
 *  (none of them in the store, no memo file). */
function scenario() {
  const root = roots.next();
  const work = path.join(root, 'work');
  const cache = path.join(root, 'cache');
  fs.mkdirSync(work, { recursive: true });
  fs.mkdirSync(path.join(cache, 'memo'), { recursive: true, mode: 0o700 });
  fs.chmodSync(path.join(cache, 'memo'), 0o700);
  const marker = path.join(root, 'compiler-ran');
  const compiler = path.join(root, 'fakecc');
  fs.writeFileSync(
    compiler,
    `#!/bin/sh\nout=\nprev=\nfor a in "$@"; do [ "$prev" = -o ] && out=$a; prev=$a; done\n` +
      `echo compiled > "$out"; echo compiled > "$out.dwo"\necho ran > '${marker}'\necho compiler-stdout\n`,
    { mode: 0o755 },
  );
  const statFile = path.join(work, 'a.o');
  const contentFile = path.join(work, 'a.thinlto.bc');
  fs.writeFileSync(statFile, 'stat input');
  fs.writeFileSync(contentFile, randomBytes(10_000));
  fs.utimesSync(contentFile, 1_700_000_000, 1_700_000_000);
  const st = fs.statSync(statFile, { bigint: true });
  const out = path.join(work, 'out.o');
  const outputs = [
    { path: out, content: Buffer.concat([Buffer.from('\x7fELF'), randomBytes(200_000)]) },
    { path: `${out}.dwo`, content: Buffer.alloc(0) },
  ];
  const memo: Memo = {
    key: 'ab'.repeat(16),
    checks: [
      { kind: 'stat', path: statFile, dev: st.dev, ino: st.ino, size: st.size, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs },
      { kind: 'content', path: contentFile, size: 10_000, digest: hashBytes(fs.readFileSync(contentFile)) },
      { kind: 'env', name: 'PACK_TEST', value: 'on' },
    ],
    outputs: outputs.map((o) => ({ path: o.path, digest: hashBytes(o.content), size: o.content.length })),
    stdout: Buffer.from('stdout from the pack\n'),
    stderr: Buffer.from('stderr from the pack\n'),
  };
  const args = [`-fthinlto-index=${contentFile}`, '-c', statFile, '-o', out];
  const lookup = lookupDigest(compiler, work, args);
  const n = neighbours();
  const blobs = [...outputs.map((o) => ({ digest: hashBytes(o.content), bytes: o.content })), ...n.blobs];
  const bytes = Buffer.concat(encodeTeamPack([{ lookup, memo: encodeMemo(memo) }, ...n.memos], blobs));
  const packFile = teamPackPath(cache);
  const writePack = (b: Buffer) => fs.writeFileSync(packFile, b, { mode: 0o600 });
  writePack(bytes);
  const run = (extra: NodeJS.ProcessEnv = {}) => runClient([compiler, ...args], work, { ...baseEnv(cache), PACK_TEST: 'on', ...extra });
  return { root, work, cache, marker, compiler, statFile, contentFile, outputs, memo, lookup, bytes, packFile, writePack, run };
}

type Scenario = ReturnType<typeof scenario>;

/** Where the job's memo index entry, its record and each output's blob (by output index) are. */
function layout(s: Scenario) {
  const l = packLayout(s.bytes);
  const memoEntry = l.memoEntry(s.lookup);
  const record = l.record(s.lookup);
  const digest = (i: number) => s.memo.outputs[i]!.digest;
  return {
    memoIndex: (memoEntry - HEADER) / MEMO_ENTRY,
    memoEntry,
    record: record.offset,
    recordLength: record.length,
    blobEntry: (i: number) => l.blobEntry(digest(i)),
    blobOffset: (i: number) => l.blobOffset(digest(i)),
  };
}

function noTemps(s: Scenario): string[] {
  return fs.readdirSync(s.work).filter((n) => n.includes('.ltocache-'));
}

function assertServed(s: Scenario, r: ReturnType<Scenario['run']>, memo: Memo = s.memo, notice = 'P'): void {
  assert.equal(fs.existsSync(s.marker), false, `compiler ran; stderr: ${r.stderr.toString()}`);
  assert.equal(r.status, 0, r.stderr.toString());
  assert.deepEqual(r.stdout, memo.stdout);
  assert.deepEqual(r.stderr, memo.stderr);
  for (const o of s.outputs) assert.deepEqual(fs.readFileSync(o.path), o.content, o.path);
  assert.deepEqual(noTemps(s), [], 'no temp left');
  const log = fs.readFileSync(noticeLogPath(s.cache), 'utf8');
  assert.match(log, new RegExp(`^${notice} ${memo.key} ${s.lookup} \\d+ \\d+\\n$`));
}

function assertFellBack(s: Scenario, r: ReturnType<Scenario['run']>, what: string): void {
  assert.equal(fs.existsSync(s.marker), true, `${what}: the fast path served; stderr: ${r.stderr.toString()}`);
  assert.equal(r.status, 0, `${what}: ${r.stderr.toString()}`);
  assert.equal(r.stdout.toString(), 'compiler-stdout\n', what);
  for (const o of s.outputs) assert.equal(fs.readFileSync(o.path, 'utf8'), 'compiled\n', `${what}: ${o.path}`);
  assert.deepEqual(noTemps(s), [], `${what}: no temp left`);
  assert.equal(fs.existsSync(noticeLogPath(s.cache)), false, `${what}: no notice`);
}

function edited(s: Scenario, edit: (b: Buffer) => void): Buffer {
  const b = Buffer.from(s.bytes);
  edit(b);
  return b;
}

test('served from the pack: outputs, stdout/stderr and a P notice; the compiler does not run', () => {
  const s = scenario();
  fs.writeFileSync(s.outputs[0]!.path, 'stale');
  assertServed(s, s.run());
  assert.equal(fs.existsSync(path.dirname(memoPath(s.cache, s.lookup))), false, 'no memo file or shard made');
});

test('served from the pack when the shard directory exists without the memo file', () => {
  const s = scenario();
  fs.mkdirSync(path.dirname(memoPath(s.cache, s.lookup)), { mode: 0o700 });
  assertServed(s, s.run());
});

test('a pack readable by others (0644) is served; only write bits are refused', () => {
  const s = scenario();
  fs.chmodSync(s.packFile, 0o644);
  assertServed(s, s.run());
});

test("a blob in the store is used before the pack's copy, the pack's copy otherwise", () => {
  const s = scenario();
  // The pack's copy of the first output is corrupt: served only if the store's blob is used.
  s.writePack(
    edited(s, (b) => {
      const at = layout(s).blobOffset(0) + 100;
      flipByte(b, at, 0xff);
    }),
  );
  writeBlob(s.cache, s.outputs[0]!.content);
  assertServed(s, s.run());
});

test('a blob in the store of the wrong size is not replaced by the pack copy', () => {
  const s = scenario();
  const p = blobPath(s.cache, s.memo.outputs[0]!.digest);
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, 'short');
  assertFellBack(s, s.run(), 'store blob of the wrong size');
});

test('a memo file for the lookup takes precedence over the pack', () => {
  const s = scenario();
  const fileMemo = { ...s.memo, stdout: Buffer.from('stdout from the memo file\n') };
  const file = memoPath(s.cache, s.lookup);
  fs.mkdirSync(path.dirname(file), { mode: 0o700 });
  fs.writeFileSync(file, encodeMemo(fileMemo), { mode: 0o600 });
  for (const o of s.outputs) writeBlob(s.cache, o.content);
  assertServed(s, s.run(), fileMemo, 'H');
});

test('a memo file that fails is not replaced by the pack', () => {
  const s = scenario();
  const file = memoPath(s.cache, s.lookup);
  fs.mkdirSync(path.dirname(file), { mode: 0o700 });
  fs.writeFileSync(file, encodeMemo(s.memo).subarray(0, -1), { mode: 0o600 });
  assertFellBack(s, s.run(), 'truncated memo file');
});

const fallbacks: [string, (s: Scenario) => void][] = [
  ['pack group-writable (0620)', (s) => fs.chmodSync(s.packFile, 0o620)],
  ['pack other-writable (0602)', (s) => fs.chmodSync(s.packFile, 0o602)],
  [
    'pack a symlink',
    (s) => {
      const real = path.join(s.root, 'real.pack');
      fs.renameSync(s.packFile, real);
      fs.symlinkSync(real, s.packFile);
    },
  ],
  [
    'pack a directory',
    (s) => {
      fs.rmSync(s.packFile);
      fs.mkdirSync(s.packFile, { mode: 0o700 });
    },
  ],
  ['pack without the job', (s) => s.writePack(Buffer.concat(encodeTeamPack(neighbours().memos, [])))],
  ['pack truncated in the header', (s) => s.writePack(s.bytes.subarray(0, 12))],
  ['pack truncated in the memo index', (s) => s.writePack(s.bytes.subarray(0, HEADER + MEMO_ENTRY * 3 + 7))],
  ['pack truncated in the record', (s) => s.writePack(s.bytes.subarray(0, layout(s).record + layout(s).recordLength - 1))],
  ['pack truncated in a blob', (s) => s.writePack(s.bytes.subarray(0, layout(s).blobOffset(0) + 1000))],
  [
    'memo index unsorted (the job moved to the front)',
    (s) =>
      s.writePack(
        edited(s, (b) => {
          const { memoIndex, memoEntry } = layout(s);
          assert.ok(memoIndex > 0);
          const mine = Buffer.from(b.subarray(memoEntry, memoEntry + MEMO_ENTRY));
          b.copy(b, HEADER + MEMO_ENTRY, HEADER, memoEntry);
          mine.copy(b, HEADER);
        }),
      ),
  ],
  [
    'record prefix names another lookup (memo trailer intact)',
    (s) =>
      s.writePack(
        edited(s, (b) => {
          const at = layout(s).record + 5;
          b[at] = b[at] === 0x30 ? 0x31 : 0x30;
        }),
      ),
  ],
  [
    "index entry points at another memo's record",
    (s) =>
      s.writePack(
        edited(s, (b) => {
          const { memoEntry } = layout(s);
          const other = memoEntry === HEADER ? HEADER + MEMO_ENTRY : HEADER;
          b.copy(b, memoEntry + 32, other + 32, other + MEMO_ENTRY);
        }),
      ),
  ],
  [
    'memo record offset inside the indexes',
    (s) =>
      s.writePack(
        edited(s, (b) => {
          b.writeBigUInt64LE(0n, layout(s).memoEntry + 32);
        }),
      ),
  ],
  [
    'memo record length past the end',
    (s) =>
      s.writePack(
        edited(s, (b) => {
          b.writeUInt32LE(0xffffffff, layout(s).memoEntry + 40);
        }),
      ),
  ],
  [
    'memo record offset past the end (overflowing)',
    (s) =>
      s.writePack(
        edited(s, (b) => {
          b.writeBigUInt64LE(2n ** 64n - 8n, layout(s).memoEntry + 32);
        }),
      ),
  ],
  [
    'memo record one byte short (trailer misplaced)',
    (s) =>
      s.writePack(
        edited(s, (b) => {
          const { memoEntry, recordLength } = layout(s);
          b.writeUInt32LE(recordLength - 1, memoEntry + 40);
        }),
      ),
  ],
  ['memo in the pack corrupt', (s) => s.writePack(edited(s, (b) => flipByte(b, layout(s).record + 32 + 60)))],
  ['blob bytes flipped in the pack', (s) => s.writePack(edited(s, (b) => flipByte(b, layout(s).blobOffset(0) + 199_000, 0x10)))],
  [
    "blob size in the index differs from the memo's",
    (s) =>
      s.writePack(
        edited(s, (b) => {
          const at = layout(s).blobEntry(0) + 40;
          b.writeBigUInt64LE(b.readBigUInt64LE(at) - 1n, at);
        }),
      ),
  ],
  [
    'blob offset past the end',
    (s) =>
      s.writePack(
        edited(s, (b) => {
          b.writeBigUInt64LE(BigInt(b.length), layout(s).blobEntry(0) + 32);
        }),
      ),
  ],
  [
    'a check of the pack memo fails (content edit of an input)',
    (s) => {
      const b = fs.readFileSync(s.contentFile);
      b[500] = b[500]! ^ 1;
      fs.writeFileSync(s.contentFile, b);
      fs.utimesSync(s.contentFile, 1_700_000_000, 1_700_000_000);
    },
  ],
  ['a check of the pack memo fails (stat input touched)', (s) => fs.utimesSync(s.statFile, new Date(), new Date(Date.now() - 5000))],
  ['pack garbage', (s) => s.writePack(randomBytes(4000))],
  ['pack garbage after a valid header', (s) => s.writePack(Buffer.concat([s.bytes.subarray(0, HEADER), randomBytes(40_000)]))],
  ['pack empty', (s) => s.writePack(Buffer.alloc(0))],
  ['memo directory group-readable', (s) => fs.chmodSync(path.join(s.cache, 'memo'), 0o750)],
];

for (const [what, mutate] of fallbacks) {
  test(`falls back: ${what}`, () => {
    const s = scenario();
    mutate(s);
    assertFellBack(s, s.run(), what);
  });
}

test('falls back: pack not owned by us', { skip: !IS_ROOT && 'needs root to chown to nobody' }, () => {
  const s = scenario();
  fs.chownSync(s.packFile, 65534, 65534);
  assertFellBack(s, s.run(), 'pack owned by nobody');
});

test('falls back: LTOCACHE_MEMO=0 ignores the pack too', () => {
  const s = scenario();
  assertFellBack(s, s.run({ LTOCACHE_MEMO: '0' }), 'LTOCACHE_MEMO=0');
});
