import assert from 'node:assert/strict';
import { test } from 'node:test';
import { assembleDistMemo, DistMemoCollector, type MemoisedJob } from '../../src/dtlto/assembleDistMemo.js';
import { hashBytes, initHash } from '../../src/key/hash.js';
import { type DistMemo, decodeDistMemo, distLookupDigest, distToken, encodeDistMemo, normalizeForToken } from '../../src/memo/distMemo.js';
import { type Memo, MemoError } from '../../src/memo/memoFormat.js';

await initHash();

const d = (s: string) => hashBytes(Buffer.from(s));

test('distToken: the PID of lld names, nothing else', () => {
  assert.equal(distToken('prog.12345.dist-file.json'), '12345');
  assert.equal(distToken('out/dir.7/prog.1.dist-file.json'), '1');
  assert.equal(distToken('/abs/a.b.42.dist-file.json'), '42');
  assert.equal(distToken('.5.dist-file.json'), null, 'no byte before the dot');
  assert.equal(distToken('prog.dist-file.json'), null);
  assert.equal(distToken('prog.x1.dist-file.json'), null);
  assert.equal(distToken('prog.12345.json'), null);
  assert.equal(distToken(`prog.${'9'.repeat(20)}.dist-file.json`), null, 'over 19 digits');
  assert.equal(distToken(`prog.${'9'.repeat(19)}.dist-file.json`), '9'.repeat(19));
});

test('normalizeForToken: left to right, not overlapping, and reversible', () => {
  assert.equal(normalizeForToken('a.12.b.12.12.c', '12'), 'a.\x01.b.\x01.12.c');
  assert.equal(normalizeForToken('a.123.b', '12'), 'a.123.b');
  assert.equal(normalizeForToken('a.12.b', null), 'a.12.b');
  const s = 'x.77.77.y.77.';
  assert.equal(normalizeForToken(s, '77').split('\x01').join('77'), s);
});

test('distLookupDigest: the same for a link that differs only by its token', () => {
  const text = (t: string) => Buffer.from(`{"jobs":[{"args":["m.o","-fthinlto-index=m.1.${t}.native.o.thinlto.bc","-o","m.1.${t}.native.o"]}]}`);
  const a = distLookupDigest('/w', text('12345'), '12345');
  assert.equal(distLookupDigest('/w', text('777'), '777'), a);
  assert.notEqual(distLookupDigest('/w', text('777'), null), a);
  assert.notEqual(distLookupDigest('/other', text('12345'), '12345'), a);
});

function memo(n: number, token: string, extra: Memo['checks'] = []): Memo {
  return {
    key: d(`key${n}`),
    checks: [
      { kind: 'stat', path: '/usr/bin/clang-22', dev: 1n, ino: 2n, size: 3n, mtimeNs: 4n, ctimeNs: 5n },
      { kind: 'content', path: `/w/m${n}.1.${token}.native.o.thinlto.bc`, size: 10, digest: d(`index${n}`) },
      { kind: 'env', name: 'LTOCACHE_X', value: null },
      ...extra,
    ],
    outputs: [{ path: `/w/m${n}.1.${token}.native.o`, digest: d(`obj${n}`), size: 99 }],
    stdout: Buffer.alloc(0),
    stderr: Buffer.from(`warning ${n}\n`),
  };
}

function job(n: number, token: string, over: Partial<MemoisedJob> = {}): MemoisedJob {
  return { memo: memo(n, token), lookup: d(`lookup${n}`), keyed: { inputs: [`m${n}.o`] }, inputs: [`/w/m${n}.o`, `/w/m${n}.1.${token}.native.o.thinlto.bc`], ...over };
}

const base = {
  cwd: '/w',
  fileArg: 'prog.12345.dist-file.json',
  bytes: Buffer.from('{"x":"m0.1.12345.native.o"}'),
  compilerName: '/usr/bin/clang-22',
  commonInputs: [] as string[],
};

test('assembleDistMemo: shared checks once, token names normalised, jobs in order', () => {
  const r = assembleDistMemo({ ...base, jobs: [job(0, '12345'), job(1, '12345')] });
  assert.equal(r.kind, 'memo');
  if (r.kind !== 'memo') return;
  assert.equal(r.lookup, distLookupDigest('/w', base.bytes, '12345'));
  assert.equal(r.memo.checks.length, 4, 'compiler and env once, one index per job');
  assert.deepEqual(
    r.memo.checks.filter((c) => c.kind === 'content').map((c) => (c.kind === 'content' ? c.path : '')),
    ['/w/m0.1.\x01.native.o.thinlto.bc', '/w/m1.1.\x01.native.o.thinlto.bc'],
  );
  assert.deepEqual(
    r.memo.jobs.map((j) => [j.key, j.lookup, j.outputs[0]!.path, j.stderr.toString()]),
    [
      [d('key0'), d('lookup0'), '/w/m0.1.\x01.native.o', 'warning 0\n'],
      [d('key1'), d('lookup1'), '/w/m1.1.\x01.native.o', 'warning 1\n'],
    ],
  );
  assert.deepEqual(decodeDistMemo(encodeDistMemo(r.memo)), r.memo);
});

test('assembleDistMemo: no memo whenever renaming the token could change what is served', () => {
  const reason = (over: Partial<Parameters<typeof assembleDistMemo>[0]>) => {
    const r = assembleDistMemo({ ...base, jobs: [job(0, '12345'), job(1, '12345')], ...over });
    return r.kind === 'skip' ? r.reason : 'memo';
  };
  assert.match(reason({ compilerName: 'clang-22' }), /PATH/);
  assert.match(reason({ bytes: Buffer.from('{"x":"\x01"}') }), /0x01/);
  assert.match(reason({ jobs: [job(0, '12345'), undefined] }), /job 1 left no memo/);
  assert.match(reason({ jobs: [job(0, '12345', { keyed: { args: ['-fsplit-dwarf-output=m0.1.12345.dwo'] } })] }), /key names the link's token/);
  const changed = job(1, '12345');
  changed.memo = { ...changed.memo, checks: [{ kind: 'stat', path: '/usr/bin/clang-22', dev: 1n, ino: 2n, size: 3n, mtimeNs: 4n, ctimeNs: 6n }] };
  assert.match(reason({ jobs: [job(0, '12345'), changed] }), /saw \/usr\/bin\/clang-22 differently/);
  const envChanged = job(1, '12345');
  envChanged.memo = { ...envChanged.memo, checks: [{ kind: 'env', name: 'LTOCACHE_X', value: '1' }] };
  assert.match(reason({ jobs: [job(0, '12345'), envChanged] }), /saw LTOCACHE_X differently/);
  assert.match(reason({ jobs: [job(0, '12345', { inputs: ['/w/lib.12345.a'] })] }), /input \/w\/lib\.12345\.a names the link's token/);
  assert.match(reason({ commonInputs: ['/w/prof.12345.data'] }), /input \/w\/prof\.12345\.data names the link's token/);
  const odd = job(0, '12345');
  odd.memo = { ...odd.memo, outputs: [{ path: '/w/\x01.o', digest: d('o'), size: 1 }] };
  assert.match(reason({ jobs: [odd] }), /output path holds a 0x01 byte/);
  assert.equal(reason({ fileArg: 'prog.json' }), 'memo', 'no token: a memo for these exact bytes');
});

test('DistMemoCollector: complete once every job handed over its memo, in job order', async () => {
  const c = new DistMemoCollector(2);
  let done = false;
  void c.complete.then(() => (done = true));
  c.keyed({ n: 1, inputs: ['/w/b.o'] }, { k: 1 });
  c.add({ n: 1 }, memo(1, '5'), d('l1'));
  await Promise.resolve();
  assert.equal(done, false);
  assert.equal(c.jobs()[0], undefined);
  c.add({ n: 0 }, memo(0, '5'), d('l0'));
  await c.complete;
  assert.equal(c.jobs()[0], undefined, 'a job never keyed is not memoised');
  assert.deepEqual(c.jobs()[1]!.inputs, ['/w/b.o']);
});

test('decodeDistMemo refuses what the client refuses', () => {
  const m: DistMemo = {
    checks: [{ kind: 'absent', path: '/w/x' }],
    jobs: [{ key: d('k'), lookup: d('l'), outputs: [{ path: '/w/o', digest: d('o'), size: 1 }], stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) }],
  };
  const good = encodeDistMemo(m);
  assert.deepEqual(decodeDistMemo(good), m);
  assert.throws(() => decodeDistMemo(good.subarray(0, good.length - 1)), MemoError);
  const flipped = Buffer.from(good);
  flipped[20] = flipped[20]! ^ 1;
  assert.throws(() => decodeDistMemo(flipped), /trailer/);
  assert.throws(() => encodeDistMemo({ checks: [], jobs: [] }), /0 jobs/);
  // A v1 job memo is not a distribution memo.
  assert.throws(() => decodeDistMemo(Buffer.concat([Buffer.from('LTOMEMO\x01'), good.subarray(8)])), /magic/);
});
