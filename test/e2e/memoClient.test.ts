/**
 * The native client's memo fast path (docs/memo.md) against real files: memos written with
 * encodeMemo, blobs written by hand, a fake compiler that leaves a marker when it runs. No daemon:
 * LTOCACHE_NODE=/nonexistent and a short start timeout make every fallback end in a direct exec of
 * the fake compiler, so "the compiler ran" is exactly "the fast path declined".
 */

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { hashBytes, hashFile } from '../../src/key/hash.js';
import { encodeMemo, lookupDigest, MEMO_MAX_CHECKS, MEMO_MAX_OUTPUTS, type Memo, type MemoCheck, memoPath, noticeLogPath } from '../../src/memo/memoFormat.js';
import { CLIENT } from '../support/env.js';
import { baseEnv, blobPath, HOSTILE_MEMO_BYTES, notOursFallbackTests, retrailed, runClient, scenarioRoots, writeBlob } from '../support/memoClient.js';

const roots = scenarioRoots('memo-client');

/** A work dir with inputs of every check kind, a fake compiler, blobs and a memo that passes. */
function scenario(opts: { checks?: boolean } = {}) {
  const root = roots.next();
  const work = path.join(root, 'work');
  const cache = path.join(root, 'cache');
  fs.mkdirSync(work, { recursive: true });
  fs.mkdirSync(cache);
  const marker = path.join(root, 'compiler-ran');
  const compiler = path.join(root, 'fakecc');
  // Writes "compiled" to the -o file and to the .dwo (unless FAKECC_NO_WRITE), leaves the marker.
  fs.writeFileSync(
    compiler,
    `#!/bin/sh\nout=\nprev=\nfor a in "$@"; do [ "$prev" = -o ] && out=$a; prev=$a; done\n` +
      `[ -n "$FAKECC_NO_WRITE" ] || { echo compiled > "$out"; echo compiled > "$out.dwo"; }\n` +
      `echo ran > '${marker}'\necho compiler-stdout\n`,
    { mode: 0o755 },
  );
  const statFile = path.join(work, 'stat.o');
  const contentFile = path.join(work, 'content.thinlto.bc');
  const absentFile = path.join(work, 'absent.s');
  const cfgDir = path.join(root, 'cfgdir');
  fs.writeFileSync(statFile, 'stat input');
  fs.writeFileSync(contentFile, randomBytes(100_000));
  // Whole seconds, so a test can restore the mtime exactly after an edit.
  fs.utimesSync(contentFile, 1_700_000_000, 1_700_000_000);
  fs.mkdirSync(cfgDir);
  const st = fs.statSync(statFile, { bigint: true });
  const dt = fs.statSync(cfgDir, { bigint: true });
  const out = path.join(work, 'out.o');
  const outputs = [
    { path: out, content: Buffer.concat([Buffer.from('\x7fELF'), randomBytes(300_000)]) },
    { path: `${out}.dwo`, content: Buffer.alloc(0) },
  ];
  const checks: MemoCheck[] =
    opts.checks === false
      ? []
      : [
          { kind: 'stat', path: statFile, dev: st.dev, ino: st.ino, size: st.size, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs },
          { kind: 'content', path: contentFile, size: fs.statSync(contentFile).size, digest: hashBytes(fs.readFileSync(contentFile)) },
          { kind: 'absent', path: absentFile },
          { kind: 'notreg', path: '/dev/null' },
          { kind: 'dir', path: cfgDir, dev: dt.dev, ino: dt.ino, mtimeNs: dt.mtimeNs, ctimeNs: dt.ctimeNs },
          { kind: 'env', name: 'MEMO_TEST_SET', value: 'yes=1 ü' },
          { kind: 'env', name: 'MEMO_TEST_UNSET', value: null },
        ];
  const stdout = Buffer.concat([Buffer.from([0, 1, 2, 255]), Buffer.from('stdout line\n')]);
  const stderr = Buffer.from('warning: something\n');
  const memo: Memo = {
    key: 'ab'.repeat(16),
    checks,
    outputs: outputs.map((o) => ({ path: o.path, digest: writeBlob(cache, o.content), size: o.content.length })),
    stdout,
    stderr,
  };
  const args = [`-fthinlto-index=${contentFile}`, '-c', statFile, '-o', out];
  const lookup = lookupDigest(compiler, work, args);
  const file = memoPath(cache, lookup);
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  fs.chmodSync(path.join(cache, 'memo'), 0o700);
  fs.chmodSync(path.dirname(file), 0o700);
  const writeMemo = (b: Buffer) => fs.writeFileSync(file, b, { mode: 0o600 });
  writeMemo(encodeMemo(memo));
  const env = { ...baseEnv(cache), MEMO_TEST_SET: 'yes=1 ü' };
  const run = (extra: NodeJS.ProcessEnv = {}) => runClient([compiler, ...args], work, { ...env, ...extra });
  return { root, work, cache, marker, compiler, args, env, statFile, contentFile, absentFile, cfgDir, outputs, memo, lookup, file, writeMemo, run };
}

type Scenario = ReturnType<typeof scenario>;

function assertServed(s: Scenario, r: ReturnType<Scenario['run']>): void {
  assert.equal(fs.existsSync(s.marker), false, `compiler ran; stderr: ${r.stderr.toString()}`);
  assert.equal(r.status, 0, r.stderr.toString());
  assert.deepEqual(r.stdout, s.memo.stdout);
  assert.deepEqual(r.stderr, s.memo.stderr);
  const mode = 0o666 & ~process.umask();
  for (const o of s.outputs) {
    assert.deepEqual(fs.readFileSync(o.path), o.content, o.path);
    assert.equal(fs.statSync(o.path).mode & 0o777, mode, o.path);
  }
  assert.deepEqual(
    fs.readdirSync(s.work).filter((n) => n.includes('.ltocache-')),
    [],
    'no temp left',
  );
}

function assertFellBack(s: Scenario, r: ReturnType<Scenario['run']>, what: string): void {
  assert.equal(fs.existsSync(s.marker), true, `${what}: the fast path served; stderr: ${r.stderr.toString()}`);
  assert.equal(r.status, 0, `${what}: ${r.stderr.toString()}`);
  assert.equal(r.stdout.toString(), 'compiler-stdout\n', what);
  for (const o of s.outputs) assert.equal(fs.readFileSync(o.path, 'utf8'), 'compiled\n', `${what}: ${o.path}`);
  assert.deepEqual(
    fs.readdirSync(s.work).filter((n) => n.includes('.ltocache-')),
    [],
    `${what}: no temp left`,
  );
  assert.equal(fs.existsSync(noticeLogPath(s.cache)), false, `${what}: no notice`);
}

test('C and TypeScript agree on content digests (LTOCACHE_PRINT_DIGEST)', async () => {
  const dir = path.join(roots.dir(), 'digests');
  fs.mkdirSync(dir);
  const cases: [string, Buffer][] = [
    ['empty', Buffer.alloc(0)],
    ['one', Buffer.from('x')],
    ['31', randomBytes(31)],
    ['32', randomBytes(32)],
    ['33', randomBytes(33)],
    ['63', randomBytes(63)],
    ['big', randomBytes((1 << 20) + 7)],
  ];
  for (const [name, content] of cases) {
    const f = path.join(dir, name);
    fs.writeFileSync(f, content);
    const r = runClient([], dir, { LTOCACHE_PRINT_DIGEST: f });
    assert.equal(r.status, 0, r.stderr.toString());
    assert.equal(r.stdout.toString(), `${hashBytes(content)}\n`, name);
  }
  const real = await hashFile(CLIENT);
  const r = runClient([], dir, { LTOCACHE_PRINT_DIGEST: CLIENT });
  assert.equal(r.stdout.toString(), `${real.digest}\n`);
  const missing = runClient([], dir, { LTOCACHE_PRINT_DIGEST: path.join(dir, 'nope') });
  assert.equal(missing.status, 1);
  // Set but empty, as for every other variable: unset, so the command runs as usual.
  const s = scenario();
  const empty = runClient([s.compiler, '--version'], s.work, { ...baseEnv(s.cache), LTOCACHE_PRINT_DIGEST: '' });
  assert.equal(empty.status, 0, empty.stderr.toString());
  assert.equal(empty.stdout.toString(), 'compiler-stdout\n', 'the compiler ran');
});

test('C and TypeScript agree on the lookup digest (LTOCACHE_PRINT_LOOKUP)', () => {
  const s = scenario();
  const cases: string[][] = [['-fthinlto-index=a.thinlto.bc', '-c', 'a.o', '-o', 'b.o'], ['-fthinlto-index=x', 'with space', 'ünïcødé', '', '-o', '/abs/out.o'], ['@rsp']];
  for (const args of cases) {
    const r = runClient([s.compiler, ...args], s.work, { ...baseEnv(s.cache), LTOCACHE_PRINT_LOOKUP: '1' });
    assert.equal(r.status, 0, r.stderr.toString());
    assert.equal(r.stdout.toString(), `${lookupDigest(s.compiler, s.work, args)}\n`, JSON.stringify(args));
  }
  // A relative compiler is made absolute against cwd without normalising, as in the 'C' request.
  fs.copyFileSync(s.compiler, path.join(s.work, 'cc'));
  fs.chmodSync(path.join(s.work, 'cc'), 0o755);
  const args = ['-fthinlto-index=i', '-o', 'o.o'];
  const r = runClient(['./cc', ...args], s.work, { ...baseEnv(s.cache), LTOCACHE_PRINT_LOOKUP: '1' });
  assert.equal(r.stdout.toString(), `${lookupDigest(`${s.work}/./cc`, s.work, args)}\n`);
  assert.equal(fs.existsSync(s.marker), false);
});

test('served: outputs, modes, stdout/stderr and the notice; the compiler does not run', () => {
  const s = scenario();
  fs.writeFileSync(s.outputs[0]!.path, 'stale', { mode: 0o600 });
  const start = Date.now();
  const r = s.run();
  assertServed(s, r);
  const log = fs.readFileSync(noticeLogPath(s.cache), 'utf8');
  const m = /^H ([0-9a-f]{32}) ([0-9a-f]{32}) (\d+) (\d+)\n$/.exec(log);
  assert.ok(m, log);
  assert.equal(m[1], s.memo.key);
  assert.equal(m[2], s.lookup);
  assert.ok(Number(m[3]) >= start - 1000 && Number(m[3]) <= Number(m[4]) && Number(m[4]) <= Date.now() + 1000, log);
  assert.equal(fs.statSync(noticeLogPath(s.cache)).mode & 0o777, 0o600);
  // A second hit appends.
  assertServed(s, s.run());
  assert.equal(fs.readFileSync(noticeLogPath(s.cache), 'utf8').split('\n').filter(Boolean).length, 2);
});

test('served under another umask: mode 0666 & ~umask', () => {
  const s = scenario();
  const old = process.umask(0o027);
  try {
    const r = s.run();
    assertServed(s, r);
    assert.equal(fs.statSync(s.outputs[0]!.path).mode & 0o777, 0o640);
  } finally {
    process.umask(old);
  }
});

test('LTOCACHE_MEMO=0 takes the daemon path', () => {
  const s = scenario();
  assertFellBack(s, s.run({ LTOCACHE_MEMO: '0' }), 'LTOCACHE_MEMO=0');
});

test('a memo with no checks is served (the format allows it)', () => {
  const s = scenario({ checks: false });
  assertServed(s, s.run());
});

const fallbacks: [string, (s: Scenario) => NodeJS.ProcessEnv | void][] = [
  ['STAT mismatch (touch)', (s) => fs.utimesSync(s.statFile, new Date(), new Date(Date.now() - 5000))],
  [
    'CONTENT mismatch (same size, same mtime)',
    (s) => {
      const st = fs.statSync(s.contentFile);
      const b = fs.readFileSync(s.contentFile);
      b[500] = b[500]! ^ 1;
      fs.writeFileSync(s.contentFile, b);
      fs.utimesSync(s.contentFile, st.atime, st.mtime);
      assert.equal(fs.statSync(s.contentFile, { bigint: true }).mtimeNs, 1_700_000_000_000_000_000n);
    },
  ],
  ['ABSENT file now exists', (s) => fs.writeFileSync(s.absentFile, '')],
  ['ENV changed', () => ({ MEMO_TEST_SET: 'no' })],
  ['ENV unset', () => ({ MEMO_TEST_SET: undefined })],
  ['ENV now set', () => ({ MEMO_TEST_UNSET: '' })],
  ['DIR changed', (s) => fs.writeFileSync(path.join(s.cfgDir, 'clang.cfg'), '')],
  [
    'NOTREG now regular',
    (s) => {
      const m = { ...s.memo, checks: [...s.memo.checks, { kind: 'notreg' as const, path: s.statFile }] };
      s.writeMemo(encodeMemo(m));
    },
  ],
  ['blob missing', (s) => fs.unlinkSync(blobPath(s.cache, s.memo.outputs[1]!.digest))],
  [
    'blob corrupt (same size)',
    (s) => {
      const p = blobPath(s.cache, s.memo.outputs[0]!.digest);
      const b = fs.readFileSync(p);
      b[b.length - 1] = b[b.length - 1]! ^ 0x80;
      fs.writeFileSync(p, b);
    },
  ],
  [
    'blob a symlink',
    (s) => {
      const p = blobPath(s.cache, s.memo.outputs[0]!.digest);
      fs.renameSync(p, `${p}.real`);
      fs.symlinkSync(`${p}.real`, p);
    },
  ],
  ...HOSTILE_MEMO_BYTES.map(([what, f]): [string, (s: Scenario) => void] => [what, (s) => s.writeMemo(f(fs.readFileSync(s.file)))]),
  ['memo oversized check count', (s) => s.writeMemo(retrailed(fs.readFileSync(s.file), (b) => b.writeUInt32LE(MEMO_MAX_CHECKS + 1, 40)))],
  ['memo output count over the limit', (s) => s.writeMemo(retrailed(encodeMemo({ ...s.memo, checks: [] }), (b) => b.writeUInt32LE(MEMO_MAX_OUTPUTS + 1, 44)))],
  ['memo output count 0', (s) => s.writeMemo(retrailed(encodeMemo({ ...s.memo, checks: [] }), (b) => b.writeUInt32LE(0, 44)))],
  [
    'memo name length over the limit',
    // first check's name length
    (s) => s.writeMemo(retrailed(fs.readFileSync(s.file), (b) => b.writeUInt32LE(0x7fffffff, 45))),
  ],
  [
    'memo unknown check kind',
    (s) =>
      s.writeMemo(
        retrailed(fs.readFileSync(s.file), (b) => {
          b[44] = 9;
        }),
      ),
  ],
  [
    'memo uppercase hex key',
    (s) =>
      s.writeMemo(
        retrailed(fs.readFileSync(s.file), (b) => {
          b[8] = 'A'.charCodeAt(0);
        }),
      ),
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
  [
    'memo dir a symlink',
    (s) => {
      const real = path.join(s.cache, 'memo-real');
      fs.renameSync(path.join(s.cache, 'memo'), real);
      fs.symlinkSync(real, path.join(s.cache, 'memo'));
    },
  ],
  [
    'output directory missing',
    (s) => {
      const m = { ...s.memo, outputs: [...s.memo.outputs, { ...s.memo.outputs[1]!, path: path.join(s.work, 'nodir', 'x.o') }] };
      s.writeMemo(encodeMemo(m));
    },
  ],
];

for (const [what, mutate] of fallbacks) {
  test(`falls back: ${what}`, () => {
    const s = scenario();
    const extra = mutate(s) ?? {};
    assertFellBack(s, s.run(extra), what);
  });
}

notOursFallbackTests(scenario, (s, what) => assertFellBack(s, s.run(), what));

test('an existing output its user may not write is not replaced: clang runs and reports it', {
  skip: process.getuid?.() !== 0 && 'needs root to run the client as another user',
}, () => {
  const s = scenario();
  const uid = 4242;
  const own = (p: string) => {
    fs.chownSync(p, uid, uid);
    if (fs.lstatSync(p).isDirectory()) for (const n of fs.readdirSync(p)) own(path.join(p, n));
  };
  // Only what the client writes and its own cache: the inputs' and cfgDir's identities are checks.
  fs.chownSync(roots.dir(), uid, uid);
  fs.chownSync(s.root, uid, uid);
  fs.chownSync(s.work, uid, uid);
  own(s.cache);
  const out = s.outputs[0]!.path;
  fs.writeFileSync(out, 'old\n');
  fs.chownSync(out, uid, uid);
  fs.chmodSync(out, 0o444);
  // A copy the other user can reach wherever the checkout is (its directories may be private).
  const client = path.join(s.root, 'ltocache');
  fs.copyFileSync(CLIENT, client);
  fs.chmodSync(client, 0o755);
  const r = spawnSync(client, [s.compiler, ...s.args], { cwd: s.work, env: s.env, uid, gid: uid });
  assert.ifError(r.error);
  assert.equal(fs.existsSync(s.marker), true, `the fast path served; stderr: ${r.stderr}`);
  assert.equal(fs.readFileSync(out, 'utf8'), 'old\n', 'the read-only output is untouched');
});

test('an existing output that is not a regular file is left to the compiler, which writes into it', async () => {
  // /dev/null through a symbolic link: clang writes into it and the link stays.
  const s = scenario();
  const out = s.outputs[0]!.path;
  fs.symlinkSync('/dev/null', out);
  const r = s.run();
  assert.equal(fs.existsSync(s.marker), true, `the fast path served; stderr: ${r.stderr}`);
  assert.equal(r.status, 0, r.stderr.toString());
  assert.equal(fs.lstatSync(out).isSymbolicLink(), true, 'the link is still there');
  // A named pipe: its reader gets what the compiler writes.
  const f = scenario();
  const fifo = f.outputs[0]!.path;
  assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
  const reader = spawn('sh', ['-c', 'cat "$0" > "$0.got"', fifo], { stdio: 'ignore' });
  const read = new Promise<void>((done) => reader.on('exit', () => done()));
  const rf = f.run();
  const timer = setTimeout(() => reader.kill(), 5000);
  await read;
  clearTimeout(timer);
  assert.equal(fs.existsSync(f.marker), true, `the fast path served; stderr: ${rf.stderr}`);
  assert.equal(fs.lstatSync(fifo).isFIFO(), true, 'the pipe is still there');
  assert.equal(fs.readFileSync(`${fifo}.got`, 'utf8'), 'compiled\n', "the pipe's reader got the object");
  for (const w of [s.work, f.work])
    assert.deepEqual(
      fs.readdirSync(w).filter((n) => n.includes('.ltocache-')),
      [],
    );
});

test('a replay write error exits 1 even though the job succeeded', () => {
  const s = scenario();
  const r = spawnSync('/bin/sh', ['-c', `exec "$0" "$@" >/dev/full`, CLIENT, s.compiler, `-fthinlto-index=${s.contentFile}`, '-c', s.statFile, '-o', s.outputs[0]!.path], {
    cwd: s.work,
    env: { ...baseEnv(s.cache), MEMO_TEST_SET: 'yes=1 ü' },
  });
  assert.equal(fs.existsSync(s.marker), false, r.stderr.toString());
  assert.equal(r.status, 1);
});

test('no output is replaced unless every output verifies', () => {
  const s = scenario();
  for (const o of s.outputs) fs.writeFileSync(o.path, 'old');
  const p = blobPath(s.cache, s.memo.outputs[1]!.digest);
  fs.unlinkSync(p);
  fs.writeFileSync(p, 'x'); // the second output's blob: wrong size and digest
  const r = s.run({ FAKECC_NO_WRITE: '1' });
  assert.equal(fs.existsSync(s.marker), true, r.stderr.toString());
  for (const o of s.outputs) assert.equal(fs.readFileSync(o.path, 'utf8'), 'old', o.path);
  assert.deepEqual(
    fs.readdirSync(s.work).filter((n) => n.includes('.ltocache-')),
    [],
  );
});
