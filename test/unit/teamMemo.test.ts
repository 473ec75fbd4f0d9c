import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { FileDigests } from '../../src/key/fileDigests.js';
import { hashBytes, initHash } from '../../src/key/hash.js';
import { checksHold, ObservingFiles } from '../../src/key/observed.js';
import { decodeMemo, encodeMemo, type Memo, withTrailer } from '../../src/memo/memoFormat.js';
import { decodeTeamMemo, encodeTeamMemo, localise, type TeamCheck, type TeamMemo, TeamMemoDecoder, teamMemoLookup, teamMemoOf } from '../../src/memo/teamMemo.js';
import { MEMO_CONTENT_CHECK_MAX_BYTES } from '../../src/protocol/limits.js';
import { tempDir } from '../support/env.js';

await initHash();

const dirs: string[] = [];
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

/** A directory standing for a build tree, its timestamps in the past (settled). */
function tree(): { dir: string; input: string; index: string; cfgDir: string } {
  const dir = tempDir('teammemo');
  dirs.push(dir);
  const input = join(dir, 'a.o');
  const index = join(dir, 'a.o.thinlto.bc');
  const cfgDir = join(dir, 'etc');
  fs.writeFileSync(input, 'bitcode of a');
  fs.writeFileSync(index, 'index of a');
  fs.mkdirSync(cfgDir);
  fs.writeFileSync(join(cfgDir, 'x.txt'), 'not a cfg');
  const past = new Date(Date.now() - 60_000);
  for (const p of [input, index, cfgDir]) fs.utimesSync(p, past, past);
  return { dir, input, index, cfgDir };
}

/** The memo this daemon would write for a job that read `input` (by stat), `index` (by content), listed `cfgDir`. */
async function localMemo(t: ReturnType<typeof tree>): Promise<Memo> {
  const observe = new ObservingFiles(SETTLED());
  observe.rewritten(t.index);
  await observe.digest(t.input);
  await observe.digest(t.index);
  await observe.digest(join(t.dir, 'absent.cfg'));
  observe.directory(t.cfgDir);
  observe.environment('LD_PRELOAD', undefined);
  return {
    key: hashBytes(Buffer.from('key')),
    checks: observe.checks(),
    outputs: [{ path: join(t.dir, 'a.native.o'), digest: hashBytes(Buffer.from('obj')), size: 3 }],
    stdout: Buffer.alloc(0),
    stderr: Buffer.from('warning: x\n'),
  };
}

/** Digests that count every file as settled (a racy window reaching into the future): the test's files were written just now. */
const SETTLED = () => new FileDigests(-60_000_000_000n);
const LOOKUP = hashBytes(Buffer.from('command'));
/** "Now" for localising: far enough ahead that the test's directories (ctime just now) count as settled. */
const LATER = BigInt(Date.now() + 60_000) * 1_000_000n;

test('a local memo becomes a team memo without stat identities, and back into a memo that holds here', async () => {
  const t = tree();
  const memo = await localMemo(t);
  assert.ok(memo.checks.some((c) => c.kind === 'stat'));
  assert.ok(memo.checks.some((c) => c.kind === 'dir'));
  const team = teamMemoOf(LOOKUP, memo, ['obj'])!;
  assert.ok(team);
  assert.deepEqual(team.checks.map((c) => c.kind).sort(), ['absent', 'content', 'dirlist', 'env', 'file']);
  const bytes = encodeTeamMemo(team);
  assert.equal(teamMemoLookup(bytes), LOOKUP);
  const back = decodeTeamMemo(bytes);
  assert.deepEqual(back, team);
  const local = await localise(back, SETTLED(), LATER);
  assert.ok('memo' in local, 'why' in local ? local.why : '');
  // The file the origin checked by stat is checked by stat here; the index stays a content check.
  const byPath = new Map(local.memo.checks.filter((c) => c.kind !== 'env').map((c) => [(c as { path: string }).path, c.kind]));
  assert.equal(byPath.get(t.input), 'stat');
  assert.equal(byPath.get(t.index), 'content');
  assert.equal(byPath.get(t.cfgDir), 'dir');
  assert.ok(checksHold(local.memo.checks, {}));
  assert.equal(local.memo.key, memo.key);
  assert.deepEqual(local.memo.outputs, memo.outputs);
});

test('localising fails when a file differs, an absent file exists, or a directory lists another entry', async () => {
  for (const change of ['content', 'absent', 'listing', 'env-kept'] as const) {
    const t = tree();
    const team = teamMemoOf(LOOKUP, await localMemo(t), ['obj'])!;
    if (change === 'content') fs.writeFileSync(t.input, 'bitcode of b');
    if (change === 'absent') fs.writeFileSync(join(t.dir, 'absent.cfg'), '-O3');
    if (change === 'listing') {
      fs.writeFileSync(join(t.cfgDir, 'new.cfg'), '-O3');
      const past = new Date(Date.now() - 60_000);
      fs.utimesSync(t.cfgDir, past, past);
    }
    const local = await localise(team, SETTLED(), LATER);
    if (change === 'env-kept') {
      assert.ok('memo' in local);
      // The environment is the command's: checked when served, not when localised.
      assert.equal(checksHold(local.memo.checks, { LD_PRELOAD: '/x.so' }), false);
      assert.equal(checksHold(local.memo.checks, {}), true);
    } else assert.ok('why' in local, `${change}: ${JSON.stringify(local)}`);
  }
});

test('a batch localises each check once: the first result, held or not, stands for every memo of the batch', async () => {
  const t = tree();
  const team = teamMemoOf(LOOKUP, await localMemo(t), ['obj'])!;
  const files = SETTLED();
  let asked = 0;
  const counting = {
    digest: (p: string) => {
      asked++;
      return files.digest(p);
    },
  };
  const seen = new Map();
  const first = await localise(team, counting, LATER, seen);
  assert.ok('memo' in first);
  const once = asked;
  const second = await localise(team, counting, LATER, seen);
  assert.equal(asked, once, 'no file looked at again');
  assert.deepEqual(second, first);
  // Outside a batch the file is looked at again, and an edit is seen.
  fs.writeFileSync(t.input, 'bitcode of b');
  assert.ok('why' in (await localise(team, counting, LATER)));
  const failing = new Map();
  assert.ok('why' in (await localise(team, counting, LATER, failing)));
  const after = asked;
  assert.ok('why' in (await localise(team, counting, LATER, failing)), 'a check that failed fails for the batch');
  assert.ok(asked - after < once, 'the failed check is not made again');
});

test('a directory changed within the last seconds is not trusted by its identity', async () => {
  const t = tree();
  const team = teamMemoOf(LOOKUP, await localMemo(t), ['obj'])!;
  fs.utimesSync(t.cfgDir, new Date(), new Date());
  const local = await localise(team, SETTLED());
  assert.ok('why' in local && /just now/.test(local.why));
});

test('a large file written just now is no memo here: its content check would hash it on every hit', async () => {
  const t = tree();
  fs.writeFileSync(t.input, Buffer.alloc(MEMO_CONTENT_CHECK_MAX_BYTES + 1, 3));
  const team = teamMemoOf(LOOKUP, await localMemo(t), ['obj'])!;
  assert.equal(team.checks.find((c) => 'path' in c && c.path === t.input)?.kind, 'file');
  // Hashed here with the daemon's 2 s window: the file's ctime is just now.
  const local = await localise(team, new FileDigests(), LATER);
  assert.ok('why' in local && local.why === `${t.input} changed just now`, JSON.stringify(local));
  // Settled, the same memo localises with a stat check.
  const settled = await localise(team, SETTLED(), LATER);
  assert.ok('memo' in settled);
  assert.equal(settled.memo.checks.find((c) => 'path' in c && c.path === t.input)?.kind, 'stat');
});

test('no team memo from a stat check without its digest, or a directory changed since it was listed', async () => {
  const t = tree();
  const memo = await localMemo(t);
  const stripped: Memo = { ...memo, checks: memo.checks.map((c) => (c.kind === 'stat' ? { ...c, digest: undefined } : c)) };
  assert.equal(teamMemoOf(LOOKUP, stripped, ['obj']), null);
  fs.writeFileSync(join(t.cfgDir, 'late.txt'), 'x');
  assert.equal(teamMemoOf(LOOKUP, memo, ['obj']), null);
  assert.equal(teamMemoOf(LOOKUP, memo, ['obj', 'dwo']), null, 'roles must match the outputs');
});

test('hostile team memos are refused with a clear error', async () => {
  const t = tree();
  const team = teamMemoOf(LOOKUP, await localMemo(t), ['obj'])!;
  const good = encodeTeamMemo(team);
  const cases: [string, Buffer, RegExp][] = [
    ['empty', Buffer.alloc(0), /magic/],
    ['truncated', good.subarray(0, good.length - 40), /trailer|truncated/],
    ['a flipped byte', Buffer.from(good.map((v, i) => (i === 60 ? v ^ 1 : v))), /trailer/],
    ['a local memo', Buffer.concat([Buffer.from('LTOMEMO\x01', 'latin1'), good.subarray(8)]), /magic/],
    ['over the size limit', Buffer.alloc((512 << 10) + 1), /size limit/],
  ];
  for (const [what, bytes, re] of cases) assert.throws(() => decodeTeamMemo(bytes), re, what);
  const noFile: TeamMemo = { ...team, checks: team.checks.filter((c) => c.kind !== 'file' && c.kind !== 'content') };
  assert.throws(() => decodeTeamMemo(encodeTeamMemo(noFile)), /checks no file content/);
  const relative: TeamMemo = { ...team, checks: [...team.checks, { kind: 'absent', path: 'rel/x' }] };
  assert.throws(() => decodeTeamMemo(encodeTeamMemo(relative)), /relative path/);
  // Oversized counts inside a validly trailed body.
  const body = Buffer.from(good.subarray(0, good.length - 32));
  body.writeUInt32LE(0xffffffff, 8 + 64);
  assert.throws(() => decodeTeamMemo(withTrailer(body)), /over the limit/);
});

/** A team memo of a batch: the same toolchain-like checks, then this job's own file. */
function batchMemo(i: number, toolchainDigest = hashBytes(Buffer.from('libLLVM'))): TeamMemo {
  const checks: TeamCheck[] = [
    { kind: 'env', name: 'LD_PRELOAD', value: null },
    { kind: 'file', path: '/usr/lib/libLLVM.so', size: 1000, digest: toolchainDigest },
    { kind: 'absent', path: '/etc/clang' },
    { kind: 'dirlist', path: '/usr/bin', digest: hashBytes(Buffer.from('listing')) },
    { kind: 'file', path: `/tree/m${i}.o`, size: 10 + i, digest: hashBytes(Buffer.from(`m${i}`)) },
    { kind: 'content', path: `/tree/m${i}.o.thinlto.bc`, size: 5, digest: hashBytes(Buffer.from(`i${i}`)) },
  ];
  return {
    lookup: hashBytes(Buffer.from(`command ${i}`)),
    key: hashBytes(Buffer.from(`key ${i}`)),
    checks,
    outputs: [{ role: 'obj', path: `/tree/m${i}.native.o`, digest: hashBytes(Buffer.from(`o${i}`)), size: 7 }],
    stdout: Buffer.alloc(0),
    stderr: Buffer.from(i % 2 ? 'warning\n' : ''),
  };
}

test('a batch decoder takes the checks a memo shares with the one before from it, and decodes what differs', () => {
  const memos = [batchMemo(1), batchMemo(2), batchMemo(3, hashBytes(Buffer.from('another libLLVM'))), batchMemo(4)];
  // One with fewer checks, and one whose first check differs.
  memos.push({ ...batchMemo(5), checks: batchMemo(5).checks.slice(1) });
  memos.push({ ...batchMemo(6), checks: [{ kind: 'env', name: 'LD_PRELOAD', value: 'x.so' }, ...batchMemo(6).checks.slice(1)] });
  const decoder = new TeamMemoDecoder();
  const got = memos.map((m) => decoder.decode(encodeTeamMemo(m)));
  for (let i = 0; i < memos.length; i++) assert.deepEqual(got[i], decodeTeamMemo(encodeTeamMemo(memos[i]!)), `memo ${i}`);
  assert.deepEqual(got[2]!.checks[1], memos[2]!.checks[1], 'a changed toolchain digest is decoded, not taken from the memo before');
  assert.equal(got[1]!.checks[3], got[0]!.checks[3], 'shared checks are the same objects');
  assert.notEqual(got[1]!.checks[4], got[0]!.checks[4]);
  // A hostile memo after good ones is refused as it would be alone, and the batch goes on.
  const bad = Buffer.from(encodeTeamMemo(batchMemo(7)).subarray(0, 200));
  assert.throws(() => decoder.decode(bad), /trailer|truncated/);
  const body = Buffer.from(encodeTeamMemo(batchMemo(8)));
  const rel = encodeTeamMemo({ ...batchMemo(8), checks: [...batchMemo(8).checks.slice(0, 4), { kind: 'absent', path: 'relative' }, ...batchMemo(8).checks.slice(4)] });
  assert.throws(() => decoder.decode(rel), /relative path/);
  assert.deepEqual(decoder.decode(body), decodeTeamMemo(body));
});

test('memos sharing check objects encode as they would apart', () => {
  const decoder = new TeamMemoDecoder();
  const team = [1, 2, 3].map((i) => decoder.decode(encodeTeamMemo(batchMemo(i))));
  const local = team.map(
    (t): Memo => ({
      key: t.key,
      checks: t.checks.map((c) => (c.kind === 'file' || c.kind === 'dirlist' ? { kind: 'content', path: c.path, size: 1, digest: c.digest } : c)),
      outputs: t.outputs.map(({ path, digest, size }) => ({ path, digest, size })),
      stdout: t.stdout,
      stderr: t.stderr,
    }),
  );
  const fresh = (m: Memo): Memo => ({ ...m, checks: m.checks.map((c) => ({ ...c })), outputs: m.outputs.map((o) => ({ ...o })) });
  assert.equal(local[1]!.checks[0], local[0]!.checks[0], 'the memos share check objects');
  for (let round = 0; round < 2; round++)
    for (const m of local) {
      const bytes = encodeMemo(m);
      assert.deepEqual(bytes, encodeMemo(fresh(m)), 'bytes as from fresh objects');
      assert.deepEqual(decodeMemo(bytes), fresh(m));
    }
});
