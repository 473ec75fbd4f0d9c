/**
 * The native client's distribution memo fast path (cache-schema/distmemo.v1.md,
 * client/distmemo.c) against real files: `ltocache distribute FILE.json` as lld runs it, with
 * memos written by encodeDistMemo and blobs written by hand. No daemon: LTOCACHE_NODE=/nonexistent
 * and a short start timeout make every fallback end in the Node CLI failing to exec (exit 127,
 * "cannot run"), so "exit 127" is exactly "the fast path declined".
 */

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { hashBytes } from '../../src/key/hash.js';
import { type DistMemo, distLookupDigest, distToken, encodeDistMemo } from '../../src/memo/distMemo.js';
import { type MemoCheck, memoPath, noticeLogPath } from '../../src/memo/memoFormat.js';
import { CLIENT } from '../support/env.js';
import { baseEnv, blobPath, HOSTILE_MEMO_BYTES, notOursFallbackTests, retrailed, runClient, scenarioRoots, writeBlob } from '../support/memoClient.js';

const roots = scenarioRoots('dist-memo-client');

/** Writes `memo` where the client looks for the distribution file `fileArg` (relative to work). */
function writeMemoFor(cache: string, work: string, fileArg: string, memo: Buffer): string {
  const lookup = distLookupDigest(work, fs.readFileSync(path.join(work, fileArg)), distToken(fileArg));
  const file = memoPath(cache, lookup);
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  fs.chmodSync(path.join(cache, 'memo'), 0o700);
  fs.chmodSync(path.dirname(file), 0o700);
  fs.writeFileSync(file, memo, { mode: 0o600 });
  return file;
}

/** A fake distribution file: the client never parses it, only its bytes and name matter. */
function distText(token: string): string {
  return `${JSON.stringify({
    common: { linker_output: 'prog', args: ['clang', '-O2'] },
    jobs: ['a', 'b'].map((m, i) => ({
      primary_input: [`${m}.o`],
      summary_index: [`${m}.${i + 1}.${token}.native.o.thinlto.bc`],
      outputs: [`${m}.${i + 1}.${token}.native.o`],
    })),
  })}\n`;
}

const T = '\x01';
/** A work dir with a distribution file of token 12345, token-named inputs, blobs and a memo of two jobs that passes. */
function scenario() {
  const root = roots.next();
  const work = path.join(root, 'work');
  const cache = path.join(root, 'cache');
  fs.mkdirSync(work, { recursive: true });
  fs.mkdirSync(cache);
  const fileArg = 'prog.12345.dist-file.json';
  fs.writeFileSync(path.join(work, fileArg), distText('12345'));
  /** An absolute name of the memo with the token put in. */
  const at = (name: string, token: string) => name.replaceAll(T, token);
  // The index files (rewritten by every link, named with its token) get CONTENT checks.
  const indexA = path.join(work, `a.1.${T}.native.o.thinlto.bc`);
  const indexContent = randomBytes(50_000);
  fs.writeFileSync(at(indexA, '12345'), indexContent);
  // A STAT check through a token-named symlink to one real file: the same stat for every token.
  const statReal = path.join(work, 'b.o');
  fs.writeFileSync(statReal, 'input object');
  const statName = path.join(work, `b.2.${T}.native.o.thinlto.bc`);
  fs.symlinkSync(statReal, at(statName, '12345'));
  const st = fs.statSync(statReal, { bigint: true });
  const checks: MemoCheck[] = [
    { kind: 'content', path: indexA, size: indexContent.length, digest: hashBytes(indexContent) },
    { kind: 'stat', path: statName, dev: st.dev, ino: st.ino, size: st.size, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs },
    { kind: 'absent', path: path.join(work, `absent.${T}.s`) },
    { kind: 'env', name: 'DIST_TEST_ENV', value: 'yes' },
  ];
  const outputs = [
    { path: path.join(work, `a.1.${T}.native.o`), content: Buffer.concat([Buffer.from('\x7fELF'), randomBytes(200_000)]) },
    { path: path.join(work, `b.2.${T}.native.o`), content: Buffer.from('\x7fELF small') },
  ];
  const memo: DistMemo = {
    checks,
    jobs: outputs.map((o, i) => ({
      key: String(i + 1).repeat(32),
      lookup: `${'ab'.repeat(15)}0${i}`,
      outputs: [{ path: o.path, digest: writeBlob(cache, o.content), size: o.content.length }],
      stdout: Buffer.from(`job ${i} stdout\n`),
      stderr: Buffer.from(`job ${i} stderr\n`),
    })),
  };
  const file = writeMemoFor(cache, work, fileArg, encodeDistMemo(memo));
  const writeMemo = (b: Buffer) => fs.writeFileSync(file, b, { mode: 0o600 });
  const env = { ...baseEnv(cache), DIST_TEST_ENV: 'yes' };
  const run = (extra: NodeJS.ProcessEnv = {}, arg = fileArg) => runClient(['distribute', arg], work, { ...env, ...extra });
  return { root, work, cache, fileArg, at, indexA, statReal, outputs, memo, file, writeMemo, run };
}

type Scenario = ReturnType<typeof scenario>;
type Run = ReturnType<Scenario['run']>;

function temps(s: Scenario): string[] {
  return fs.readdirSync(s.work).filter((n) => n.includes('.ltocache-'));
}

function assertServed(s: Scenario, r: Run, token = '12345'): void {
  assert.equal(r.status, 0, `not served: ${r.stderr.toString()}`);
  assert.equal(r.stdout.toString(), 'job 0 stdout\njob 1 stdout\n');
  assert.equal(r.stderr.toString(), 'job 0 stderr\njob 1 stderr\n');
  for (const o of s.outputs) assert.deepEqual(fs.readFileSync(s.at(o.path, token)), o.content, o.path);
  assert.deepEqual(temps(s), [], 'no temp left');
}

function assertFellBack(s: Scenario, r: Run, what: string, token = '12345'): void {
  assert.equal(r.status, 127, `${what}: the fast path served (or something else ran); stderr: ${r.stderr.toString()}`);
  assert.match(r.stderr.toString(), /cannot run '\/nonexistent'/, what);
  assert.equal(r.stdout.length, 0, what);
  for (const o of s.outputs) {
    const p = s.at(o.path, token);
    assert.ok(!fs.existsSync(p) || fs.readFileSync(p, 'utf8') === 'old', `${what}: ${p} written by the fast path`);
  }
  assert.deepEqual(temps(s), [], `${what}: no temp left`);
  assert.equal(fs.existsSync(noticeLogPath(s.cache)), false, `${what}: no notice`);
}

test('C and TypeScript agree on the distribution lookup digest (LTOCACHE_PRINT_LOOKUP)', () => {
  const s = scenario();
  const cases: [string, string][] = [
    ['prog.12345.dist-file.json', distText('12345')],
    ['prog.dist-file.json', distText('12345')],
    ['notadist.json', distText('12345')],
    ['prog.12345.dist-file.json', 'x.12345.12345.12345.y .12345. ..12345.. 12345 .1234. .123456.\n'],
    ['prog.12345.dist-file.json', ''],
    ['sub/dir/out.9.dist-file.json', 'a.9.b .9.9. .99. 9 .9'],
    ['.7.dist-file.json', 'a.7.b'],
    ['x.12345678901234567890.dist-file.json', 'a.12345678901234567890.b'],
    ['x.1234567890123456789.dist-file.json', 'a.1234567890123456789.b'],
    ['x.12a.dist-file.json', 'a.12a.b'],
    ['prog.12345.dist-file.json', Buffer.from([0xff, 0x2e, 0x31, 0x32, 0x33, 0x34, 0x35, 0x2e, 0x80, 0]).toString('latin1')],
  ];
  for (const [arg, text] of cases) {
    fs.mkdirSync(path.dirname(path.join(s.work, arg)), { recursive: true });
    fs.writeFileSync(path.join(s.work, arg), Buffer.from(text, 'latin1'));
    const r = runClient(['distribute', arg], s.work, { ...baseEnv(s.cache), LTOCACHE_PRINT_LOOKUP: '1' });
    assert.equal(r.status, 0, `${arg}: ${r.stderr.toString()}`);
    const expected = distLookupDigest(s.work, fs.readFileSync(path.join(s.work, arg)), distToken(arg));
    assert.equal(r.stdout.toString(), `${expected}\n`, `${arg} ${JSON.stringify(text)}`);
  }
  // The token is found, and overlapping occurrences are normalised left to right.
  assert.equal(distToken('prog.12345.dist-file.json'), '12345');
  assert.equal(distToken('.7.dist-file.json'), null);
  const overlap = distLookupDigest(s.work, Buffer.from('x.12345.12345.y'), '12345');
  assert.equal(overlap, distLookupDigest(s.work, Buffer.from('x.\x01.12345.y'), null));
});

test("served: both jobs' outputs at the token paths, stdout/stderr in job order, one notice per job", () => {
  const s = scenario();
  fs.writeFileSync(s.at(s.outputs[0]!.path, '12345'), 'stale', { mode: 0o600 });
  const start = Date.now();
  const r = s.run();
  assertServed(s, r);
  const mode = 0o666 & ~process.umask();
  for (const o of s.outputs) assert.equal(fs.statSync(s.at(o.path, '12345')).mode & 0o777, mode);
  const lines = fs.readFileSync(noticeLogPath(s.cache), 'utf8').split('\n');
  assert.equal(lines.pop(), '');
  assert.equal(lines.length, 2);
  lines.forEach((line, i) => {
    const m = /^H ([0-9a-f]{32}) ([0-9a-f]{32}) (\d+) (\d+)$/.exec(line);
    assert.ok(m, line);
    assert.equal(m[1], s.memo.jobs[i]!.key);
    assert.equal(m[2], s.memo.jobs[i]!.lookup);
    assert.ok(Number(m[3]) >= start - 1000 && Number(m[3]) <= Number(m[4]) && Number(m[4]) <= Date.now() + 1000, line);
  });
  assert.equal(fs.statSync(noticeLogPath(s.cache)).mode & 0o777, 0o600);
  // Nothing was written at a literal placeholder path.
  assert.deepEqual(
    fs.readdirSync(s.work).filter((n) => n.includes(T)),
    [],
  );
});

test('a file size limit reached while the outputs are written: the client dies by SIGXFSZ, as clang does, and leaves no temp', () => {
  const s = scenario();
  const r = spawnSync('sh', ['-c', 'ulimit -f 0; exec "$@"', 'sh', CLIENT, 'distribute', s.fileArg], { cwd: s.work, env: { ...baseEnv(s.cache), DIST_TEST_ENV: 'yes' } });
  assert.equal(r.signal, 'SIGXFSZ', `stderr: ${r.stderr}`);
  assert.deepEqual(temps(s), [], 'no temp left');
  for (const o of s.outputs) assert.equal(fs.existsSync(s.at(o.path, '12345')), false, o.path);
});

test('the same memo serves the next link, whose token differs', () => {
  const s = scenario();
  assertServed(s, s.run());
  const next = 'prog.777.dist-file.json';
  const bytes = fs.readFileSync(path.join(s.work, s.fileArg), 'latin1').replaceAll('.12345.', '.777.');
  fs.renameSync(path.join(s.work, s.fileArg), path.join(s.work, next));
  fs.writeFileSync(path.join(s.work, next), bytes, 'latin1');
  fs.renameSync(s.at(s.indexA, '12345'), s.at(s.indexA, '777'));
  fs.symlinkSync(s.statReal, s.at(path.join(s.work, `b.2.${T}.native.o.thinlto.bc`), '777'));
  for (const o of s.outputs) fs.unlinkSync(s.at(o.path, '12345'));
  // Same name: the memo file is the one written for the first link.
  assert.equal(memoPath(s.cache, distLookupDigest(s.work, Buffer.from(bytes, 'latin1'), '777')), s.file);
  assertServed(s, s.run({}, next), '777');
  for (const o of s.outputs) assert.equal(fs.existsSync(s.at(o.path, '12345')), false);
  assert.equal(fs.readFileSync(noticeLogPath(s.cache), 'utf8').split('\n').filter(Boolean).length, 4);
});

test('a file without a token is served from a memo without placeholders', () => {
  const s = scenario();
  const arg = 'plain.dist-file.json';
  fs.writeFileSync(path.join(s.work, arg), distText('12345'));
  const memo: DistMemo = {
    checks: [],
    jobs: s.memo.jobs.map((j) => ({ ...j, outputs: j.outputs.map((o) => ({ ...o, path: s.at(o.path, '12345') })) })),
  };
  writeMemoFor(s.cache, s.work, arg, encodeDistMemo(memo));
  assertServed(s, s.run({}, arg));
});

test('LTOCACHE_MEMO=0 takes the daemon path', () => {
  const s = scenario();
  assertFellBack(s, s.run({ LTOCACHE_MEMO: '0' }), 'LTOCACHE_MEMO=0');
});

test('LTOCACHE_DISABLE=1 takes neither the fast path nor the daemon', () => {
  const s = scenario();
  assertFellBack(s, s.run({ LTOCACHE_DISABLE: '1' }), 'LTOCACHE_DISABLE=1');
});

const noop = (): void => undefined;

/** What, how to break the scenario, and the environment to run it with. */
const fallbacks: [string, (s: Scenario) => void, NodeJS.ProcessEnv?][] = [
  [
    'CONTENT check file edited (same size)',
    (s) => {
      const p = s.at(s.indexA, '12345');
      const b = fs.readFileSync(p);
      b[100] = b[100]! ^ 1;
      fs.writeFileSync(p, b);
    },
  ],
  ['STAT file touched', (s) => fs.utimesSync(s.statReal, new Date(), new Date(Date.now() - 5000))],
  ['ABSENT file now exists', (s) => fs.writeFileSync(s.at(path.join(s.work, `absent.${T}.s`), '12345'), '')],
  ['ENV changed', noop, { DIST_TEST_ENV: 'no' }],
  ['ENV unset', noop, { DIST_TEST_ENV: undefined }],
  [
    'blob corrupt (same size)',
    (s) => {
      const p = blobPath(s.cache, s.memo.jobs[1]!.outputs[0]!.digest);
      const b = fs.readFileSync(p);
      b[0] = b[0]! ^ 0x80;
      fs.writeFileSync(p, b);
    },
  ],
  ['blob missing (second job)', (s) => fs.unlinkSync(blobPath(s.cache, s.memo.jobs[1]!.outputs[0]!.digest))],
  [
    "second job's output directory missing",
    (s) => {
      const jobs = s.memo.jobs.map((j, i) => (i === 1 ? { ...j, outputs: [{ ...j.outputs[0]!, path: path.join(s.work, 'nodir', `x.${T}.o`) }] } : j));
      s.writeMemo(encodeDistMemo({ ...s.memo, jobs }));
    },
  ],
  ['memo dir group-writable', (s) => fs.chmodSync(path.join(s.cache, 'memo'), 0o720)],
  ['shard dir other-readable', (s) => fs.chmodSync(path.dirname(s.file), 0o704)],
  ['memo file group-writable', (s) => fs.chmodSync(s.file, 0o620)],
  [
    'memo file a symlink',
    (s) => {
      const real = path.join(s.cache, 'memo', 'real');
      fs.renameSync(s.file, real);
      fs.symlinkSync(real, s.file);
    },
  ],
  ...HOSTILE_MEMO_BYTES.map(([what, f]): [string, (s: Scenario) => void] => [what, (s) => s.writeMemo(f(fs.readFileSync(s.file)))]),
  [
    'memo job count 0',
    // magic, nchecks = 0, then njobs
    (s) => s.writeMemo(retrailed(encodeDistMemo({ ...s.memo, checks: [] }), (b) => b.writeUInt32LE(0, 12))),
  ],
  ['memo job count over what the file holds', (s) => s.writeMemo(retrailed(encodeDistMemo({ ...s.memo, checks: [] }), (b) => b.writeUInt32LE(3, 12)))],
  ['memo of job memo format (magic LTOMEMO)', (s) => s.writeMemo(retrailed(fs.readFileSync(s.file), (b) => b.write('LTOMEMO', 0, 'latin1')))],
  [
    'distribution file holds a 0x01 byte',
    (s) => {
      const p = path.join(s.work, s.fileArg);
      fs.writeFileSync(p, `${fs.readFileSync(p, 'latin1')}\x01`, 'latin1');
      // A memo under the name the TypeScript digest gives it: only the 0x01 rule declines.
      writeMemoFor(s.cache, s.work, s.fileArg, encodeDistMemo(s.memo));
    },
  ],
];

for (const [what, mutate, extra] of fallbacks) {
  test(`falls back: ${what}`, () => {
    const s = scenario();
    for (const o of s.outputs) fs.writeFileSync(s.at(o.path, '12345'), 'old');
    mutate(s);
    assertFellBack(s, s.run(extra), what);
  });
}

notOursFallbackTests(scenario, (s, what) => assertFellBack(s, s.run(), what));

test('falls back: a placeholder in a name when the file name has no token', () => {
  const s = scenario();
  const arg = 'plain.dist-file.json';
  fs.writeFileSync(path.join(s.work, arg), distText('12345'));
  writeMemoFor(s.cache, s.work, arg, encodeDistMemo({ ...s.memo, checks: [] }));
  assertFellBack(s, s.run({}, arg), 'no token');
  assert.deepEqual(
    fs.readdirSync(s.work).filter((n) => n.includes(T) || (n.includes('.native.o') && !n.endsWith('.thinlto.bc'))),
    [],
  );
});

test('falls back: a placeholder in a check name when the file name has no token', () => {
  const s = scenario();
  const arg = 'plain.dist-file.json';
  fs.writeFileSync(path.join(s.work, arg), distText('12345'));
  const jobs = s.memo.jobs.map((j) => ({ ...j, outputs: j.outputs.map((o) => ({ ...o, path: s.at(o.path, '12345') })) }));
  writeMemoFor(s.cache, s.work, arg, encodeDistMemo({ checks: [{ kind: 'absent', path: path.join(s.work, `absent.${T}.s`) }], jobs }));
  assertFellBack(s, s.run({}, arg), 'no token, check');
});

test('not tried for other argument counts', () => {
  const s = scenario();
  const r = runClient(['distribute', s.fileArg, 'extra'], s.work, { ...baseEnv(s.cache), DIST_TEST_ENV: 'yes' });
  assertFellBack(s, r, 'two file arguments');
});

test('a replay write error exits 1 though every output was written', () => {
  const s = scenario();
  const r = spawnSync('/bin/sh', ['-c', 'exec "$0" "$@" >/dev/full', CLIENT, 'distribute', s.fileArg], {
    cwd: s.work,
    env: { ...baseEnv(s.cache), DIST_TEST_ENV: 'yes' },
  });
  assert.equal(r.status, 1, r.stderr.toString());
  for (const o of s.outputs) assert.deepEqual(fs.readFileSync(s.at(o.path, '12345')), o.content);
});
