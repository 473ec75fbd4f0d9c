/**
 * Seed corpus of the memo_parse / dist_memo_parse / reply fuzzer (client/fuzz): deterministic memos
 * from encodeMemo and distribution memos (`dist-*`) from encodeDistMemo, each written whole and as
 * a body without its trailer (the fuzz target appends the right trailer), 'R', 'H', and 'M' and
 * 'S' (with an output redirect) reply payloads (`reply-*`), and team packs from encodeTeamPack (`pack-*`).
 * Regenerate: node dist/test/support/memoSeeds.js client/fuzz/seeds
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { hashBytes, initHash } from '../../src/key/hash.js';
import { type DistMemo, encodeDistMemo } from '../../src/memo/distMemo.js';
import { encodeMemo, type Memo, type MemoCheck } from '../../src/memo/memoFormat.js';
import { encodeTeamPack, type PackBlob } from '../../src/memo/teamPack.js';
import { encodeCompileYourself, encodeHitStore, encodePassthrough, encodeResult, encodeStoreYourself } from '../../src/protocol/clientFrames.js';

const hex = (c: string) => c.repeat(32);

function checks(): MemoCheck[] {
  return [
    { kind: 'stat', path: '/usr/bin/clang-19', dev: 2049n, ino: 131_073n, size: 4096n, mtimeNs: 1_700_000_000_123_456_789n, ctimeNs: 1_700_000_001_000_000_000n },
    { kind: 'content', path: '/work/obj/a.o.thinlto.bc', size: 1234, digest: hex('a') },
    { kind: 'absent', path: '/work/include/missing.s' },
    { kind: 'notreg', path: '/dev/null' },
    { kind: 'dir', path: '/usr/lib/llvm-19/bin', dev: 2049n, ino: 77n, mtimeNs: 1n, ctimeNs: 2n },
    { kind: 'env', name: 'CLANG_CONFIG_FILE_SYSTEM_DIR', value: null },
    { kind: 'env', name: 'LANG', value: 'C.UTF-8' },
    { kind: 'env', name: 'EMPTY', value: '' },
  ];
}

export function memoSeeds(): [string, Buffer][] {
  const base: Memo = {
    key: hex('0'),
    checks: checks(),
    outputs: [{ path: '/work/obj/a.o', digest: hex('b'), size: 99 }],
    stdout: Buffer.alloc(0),
    stderr: Buffer.from('warning: x\n'),
  };
  const memos: [string, Memo][] = [
    ['full', base],
    ['no-checks', { ...base, checks: [] }],
    ['two-outputs', { ...base, outputs: [...base.outputs, { path: '/work/obj/a.dwo', digest: hex('c'), size: 0 }] }],
    ['max-outputs', { ...base, checks: checks().slice(0, 2), outputs: Array.from({ length: 16 }, (_, i) => ({ path: `/o/${i}`, digest: hex('d'), size: i })) }],
  ];
  for (const c of checks()) memos.push([`only-${c.kind}-${c.kind === 'env' ? c.name : 'x'}`, { ...base, checks: [c] }]);
  const out: [string, Buffer][] = [];
  const push = (name: string, whole: Buffer) => out.push([`${name}.memo`, whole], [`${name}.body`, whole.subarray(0, whole.length - 32)]);
  for (const [name, m] of memos) push(name, encodeMemo(m));
  for (const [name, m] of distSeeds(base)) push(name, encodeDistMemo(m));
  // Reply payloads the client decodes ('R', 'H', 'M', 'S', 'P'; the fuzz target tells them apart by the type byte).
  out.push(['reply-result', encodeResult({ exit: 1, signal: 0 }, Buffer.from('out\n'), Buffer.from('warning: x\n')).subarray(4)]);
  const files = [Buffer.from('object bytes'), Buffer.from('dwarf')];
  const hit = encodeMemo({ ...base, outputs: files.map((f, i) => ({ path: `/work/obj/h.${i}`, digest: hashBytes(f), size: f.length })) });
  out.push(['reply-hit', encodeHitStore(hit, files).subarray(4)]);
  const redirect = { index: 3, arg: '-oout/.a.o.ltocache-out-0123456789ab', temp: '/work/out/.a.o.ltocache-out-0123456789ab', output: '/work/out/a.o' };
  out.push(['reply-compile', encodeCompileYourself({ colour: true, redirect }).subarray(4)]);
  out.push(['reply-store', encodeStoreYourself(hit, { colour: false, redirect }).subarray(4)]);
  // The 'P' a daemon answers a request with flag bits it does not know (the client asks again without them).
  out.push(['reply-refusal', encodePassthrough('malformed request: unknown flag bits 0x10').subarray(4)]);
  out.push(...packSeeds(base));
  return out;
}

/** Team packs: empty, memos only, and memos whose outputs' blobs are in the pack (one shared). */
function packSeeds(base: Memo): [string, Buffer][] {
  const blobs: PackBlob[] = ['object a', 'object b', '', 'dwarf'].map((t) => ({ digest: hashBytes(t), bytes: Buffer.from(t) }));
  const memo = (i: number, outs: PackBlob[]) => ({
    lookup: hashBytes(`lookup ${i}`),
    memo: encodeMemo({ ...base, checks: checks().slice(0, i % 3), outputs: outs.map((b, k) => ({ path: `/work/obj/p${i}.${k}`, digest: b.digest, size: b.bytes.length })) }),
  });
  const memos = [memo(0, [blobs[0]!]), memo(1, [blobs[1]!, blobs[2]!]), memo(2, [blobs[0]!, blobs[3]!])];
  const pack = (m: typeof memos, b: PackBlob[]) => Buffer.concat(encodeTeamPack(m, b));
  return [
    ['pack-empty', pack([], [])],
    ['pack-memos-only', pack(memos.slice(0, 2), [])],
    ['pack-full', pack(memos, blobs)],
    ['pack-blobs-only', pack([], blobs)],
  ];
}

/** Distribution memos: token placeholders (\x01) in check names and output paths, one and several jobs. */
function distSeeds(base: Memo): [string, DistMemo][] {
  const job = (i: number, outputs = 1) => ({
    key: hex(String(i % 10)),
    lookup: hex('e'),
    outputs: Array.from({ length: outputs }, (_, k) => ({ path: `/work/obj/m${i}.1.\x01.native.o${k ? `.${k}` : ''}`, digest: hex('f'), size: 100 + k })),
    stdout: Buffer.from(i % 2 ? `job ${i}\n` : ''),
    stderr: Buffer.from(i % 3 ? '' : 'warning: y\n'),
  });
  const tokenChecks: MemoCheck[] = [
    { kind: 'content', path: '/work/obj/m0.1.\x01.native.o.thinlto.bc', size: 77, digest: hex('a') },
    { kind: 'absent', path: '/work/obj/\x01/\x01.s' },
    { kind: 'env', name: 'LANG', value: 'C.\x01' },
  ];
  return [
    ['dist-one', { checks: [], jobs: [job(0)] }],
    ['dist-full', { checks: [...base.checks, ...tokenChecks], jobs: [job(0), job(1, 2), job(2)] }],
    ['dist-max-outputs', { checks: tokenChecks, jobs: [job(3, 16), job(4, 16)] }],
    ['dist-many-jobs', { checks: checks().slice(0, 2), jobs: Array.from({ length: 40 }, (_, i) => job(i)) }],
  ];
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const dir = process.argv[2];
  if (!dir) throw new Error('usage: memoSeeds.js <dir>');
  await initHash();
  mkdirSync(dir, { recursive: true });
  for (const [name, b] of memoSeeds()) writeFileSync(join(dir, name), b);
}
