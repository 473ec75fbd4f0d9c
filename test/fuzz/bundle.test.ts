/**
 * Fuzz: team-cache bundles (src/remote/bundle.ts unpackBundle).
 *
 * The property, in every case: unpackBundle never throws (nor leaves an uncaught exception
 * behind), settles within a time bound, and returns `ok` only with exactly the declared files —
 * the declared names, each once, with the declared bytes. Two families of input:
 *
 *  - structural: tars built with tar-stream's own packer from a model (names that are the
 *    declared ones or `../x`, `/abs`, `a/b`, `obj/`, `./obj`; types file, symlink, hardlink,
 *    directory, devices, fifo, contiguous; duplicated, missing and extra entries; content
 *    right, flipped, short, long or another file's; pax headers overriding the path; entry and
 *    byte limits). Here the model also says exactly whether the answer must be ok or rejected.
 *  - byte-level: arbitrary bytes; valid bundles with bytes flipped, truncated, spliced; header
 *    fields (size, typeflag, name, magic, base-256 sizes) rewritten *with a recomputed
 *    checksum* so the damage gets past tar-stream's header check.
 */

import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import fc from 'fast-check';
import * as tar from 'tar-stream';
import { hashBytes, initHash } from '../../src/key/hash.js';
import { type BundleLimits, packBundle, packedBytes, type Unpacked, unpackBundle } from '../../src/remote/bundle.js';
import type { EntryRecord } from '../../src/store/record.js';
import { fuzz, mutateAll, mutationArb, timedAsync } from './common.js';
import { BUNDLE_REGRESSIONS } from './regressions/bundle.js';

const nameArb = fc.tuple(fc.constantFrom(...'aoxZ09'), fc.string({ unit: fc.constantFrom(...'abj09._-'), maxLength: 8 })).map(([a, b]) => a + b);
const filesArb: fc.Arbitrary<Map<string, Buffer>> = fc
  .uniqueArray(fc.tuple(nameArb, fc.uint8Array({ maxLength: 1500 })), { minLength: 1, maxLength: 4, selector: ([n]) => n })
  .map((list) => new Map(list.map(([n, d]) => [n, Buffer.from(d)])));

function recordFor(files: Map<string, Buffer>): EntryRecord {
  return {
    v: 1,
    outputs: [...files].map(([name, data]) => ({ name, digest: hashBytes(data), size: data.length })),
    stdout: '',
    stderr: '',
    exitCode: 0,
    compileMs: 1,
    createdAt: 0,
  };
}

const GENEROUS: BundleLimits = { maxBundleBytes: 64 << 20, maxEntries: 16 };

/** Uncaught exceptions during a run are failures too (an unheard stream 'error'). */
const uncaught: unknown[] = [];
process.on('uncaughtException', (e) => uncaught.push(e));

async function unpack(record: EntryRecord, bundle: Buffer, limits: BundleLimits): Promise<Unpacked> {
  const out = await timedAsync('unpackBundle', 1000, () => unpackBundle(record, bundle, limits));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(uncaught, [], 'uncaught exception during unpackBundle');
  if (out.kind === 'rejected') assert.ok(typeof out.reason === 'string' && out.reason.length > 0);
  return out;
}

/** ok ⇒ exactly the declared files. */
function assertExact(out: Unpacked, files: Map<string, Buffer>): void {
  if (out.kind !== 'ok') return;
  assert.deepEqual([...out.files.keys()].sort(), [...files.keys()].sort(), 'ok with other names than declared');
  for (const [n, d] of files) assert.ok(out.files.get(n)!.equals(d), `ok with other bytes for ${n}`);
}

// ---------------------------------------------------------------------------------------------
// Structural bundles

type EntryType = 'file' | 'symlink' | 'link' | 'directory' | 'character-device' | 'block-device' | 'fifo' | 'contiguous-file';
interface ModelEntry {
  /** Index of a declared file the entry stands for. */
  of: number;
  name: 'declared' | '../x' | '/abs' | 'a/b' | 'slash' | 'dot' | 'other-declared' | 'undeclared';
  type: EntryType;
  content: 'right' | 'flipped' | 'short' | 'long' | 'other';
  /** Puts the name in a pax header (over a bogus ustar name), or overrides a good name. */
  pax: 'none' | 'carry' | 'override-evil' | 'override-good';
  /** A non-file entry carries the data (packed as a file, then its typeflag rewritten). */
  carriesData: boolean;
}
const modelEntryArb: fc.Arbitrary<ModelEntry> = fc.record({
  of: fc.nat({ max: 3 }),
  name: fc.oneof(
    { weight: 12, arbitrary: fc.constant('declared' as const) },
    { weight: 1, arbitrary: fc.constantFrom('../x', '/abs', 'a/b', 'slash', 'dot', 'other-declared', 'undeclared') as fc.Arbitrary<ModelEntry['name']> },
  ),
  type: fc.oneof(
    { weight: 12, arbitrary: fc.constant('file' as const) },
    { weight: 1, arbitrary: fc.constantFrom('symlink', 'link', 'directory', 'character-device', 'block-device', 'fifo', 'contiguous-file') as fc.Arbitrary<EntryType> },
  ),
  content: fc.oneof(
    { weight: 12, arbitrary: fc.constant('right' as const) },
    { weight: 1, arbitrary: fc.constantFrom('flipped', 'short', 'long', 'other') as fc.Arbitrary<ModelEntry['content']> },
  ),
  pax: fc.oneof(
    { weight: 8, arbitrary: fc.constant('none' as const) },
    { weight: 1, arbitrary: fc.constantFrom('carry', 'override-evil', 'override-good') as fc.Arbitrary<ModelEntry['pax']> },
  ),
  carriesData: fc.boolean(),
});

type Edit = { kind: 'add'; index: number; entry: ModelEntry } | { kind: 'remove'; index: number } | { kind: 'modify'; index: number; patch: Partial<ModelEntry> };
const editArb: fc.Arbitrary<Edit> = fc.oneof(
  fc.record({ kind: fc.constant('add' as const), index: fc.nat(), entry: modelEntryArb }),
  fc.record({ kind: fc.constant('remove' as const), index: fc.nat() }),
  fc.record({
    kind: fc.constant('modify' as const),
    index: fc.nat(),
    patch: fc.oneof(
      fc.record({ name: fc.constantFrom('../x', '/abs', 'a/b', 'slash', 'dot', 'other-declared', 'undeclared') as fc.Arbitrary<ModelEntry['name']> }),
      fc.record({
        type: fc.constantFrom('symlink', 'link', 'directory', 'character-device', 'block-device', 'fifo', 'contiguous-file') as fc.Arbitrary<EntryType>,
        carriesData: fc.boolean(),
      }),
      fc.record({ content: fc.constantFrom('flipped', 'short', 'long', 'other') as fc.Arbitrary<ModelEntry['content']> }),
      fc.record({ pax: fc.constantFrom('carry', 'override-evil', 'override-good') as fc.Arbitrary<ModelEntry['pax']> }),
    ),
  }),
);

const TYPEFLAG: Record<EntryType, number> = {
  file: 0x30,
  link: 0x31,
  symlink: 0x32,
  'character-device': 0x33,
  'block-device': 0x34,
  directory: 0x35,
  fifo: 0x36,
  'contiguous-file': 0x37,
};

interface Built {
  bundle: Buffer;
  /** What the spec says: ok iff this is true. */
  mustBeOk: boolean;
}

async function buildStructural(files: Map<string, Buffer>, entries: ModelEntry[], limits: BundleLimits): Promise<Built> {
  const names = [...files.keys()];
  const datas = [...files.values()];
  const pack = tar.pack();
  const done = packedBytes(pack);
  const seen = new Set<string>();
  const patches: (number | null)[] = [];
  let conforming = entries.length <= limits.maxEntries;
  for (const e of entries) {
    const i = e.of % names.length;
    const declared = names[i]!;
    const real = datas[i]!;
    const name = {
      declared,
      '../x': '../x',
      '/abs': `/${declared}`,
      'a/b': `sub/${declared}`,
      slash: `${declared}/`,
      dot: `./${declared}`,
      'other-declared': names[(i + 1) % names.length]!,
      undeclared: `${declared}.extra`,
    }[e.name];
    let data: Buffer = real;
    if (e.content === 'flipped' && real.length > 0) data = Buffer.from(real).fill(real[0]! ^ 1, 0, 1);
    if (e.content === 'short' && real.length > 0) data = real.subarray(0, real.length - 1);
    if (e.content === 'long') data = Buffer.concat([real, Buffer.from([0])]);
    if (e.content === 'other') data = datas[(i + 1) % datas.length]!;
    const isFile = e.type === 'file';
    const patchType = !isFile && e.carriesData;
    if (!isFile && !patchType) data = Buffer.alloc(0);
    // The name the extractor will report.
    let header: Parameters<typeof pack.entry>[0] = { name, type: patchType ? 'file' : e.type, mode: 0o644, mtime: new Date(0), size: data.length };
    patches.push(patchType ? TYPEFLAG[e.type] : null);
    let effective = name;
    if (e.type === 'symlink' || e.type === 'link') header.linkname = e.name === 'declared' ? '../../etc/passwd' : declared;
    if (e.pax === 'carry') header = { ...header, pax: {} };
    if (e.pax === 'override-evil') {
      header = { ...header, pax: { path: '../evil' } };
      effective = '../evil';
    }
    if (e.pax === 'override-good') {
      header = { ...header, name: 'decoy', pax: { path: declared } };
      effective = declared;
    }
    await new Promise<void>((res, rej) => pack.entry(header, data, (err) => (err ? rej(err) : res())));
    const fileOk = isFile && files.has(effective) && !seen.has(effective) && files.get(effective)!.equals(data);
    if (!fileOk) conforming = false;
    seen.add(effective);
  }
  pack.finalize();
  const bundle = await done;
  const offs = entryHeaderOffsets(bundle);
  patches.forEach((flag, i) => {
    if (flag === null) return;
    bundle[offs[i]! + 156] = flag;
    fixChecksum(bundle, offs[i]!);
  });
  if (seen.size !== files.size || ![...files.keys()].every((n) => seen.has(n))) conforming = false;
  if (bundle.length > limits.maxBundleBytes) conforming = false;
  return { bundle, mustBeOk: conforming };
}

// ---------------------------------------------------------------------------------------------
// Header-aware byte mutations

/** Offsets of the 512-byte headers of a well-formed tar. */
function headerOffsets(b: Buffer): number[] {
  const out: number[] = [];
  let off = 0;
  while (off + 512 <= b.length) {
    const h = b.subarray(off, off + 512);
    if (h.every((x) => x === 0)) break;
    out.push(off);
    const size = parseInt(h.subarray(124, 136).toString('latin1').replace(/\0.*$/s, '').trim() || '0', 8);
    off += 512 + Math.ceil(size / 512) * 512;
  }
  return out;
}

/** Offsets of the entries' own headers (pax and GNU long-name headers skipped). */
function entryHeaderOffsets(b: Buffer): number[] {
  return headerOffsets(b).filter((off) => !'xgLK'.includes(String.fromCharCode(b[off + 156]!)));
}

function fixChecksum(b: Buffer, off: number): void {
  const h = b.subarray(off, off + 512);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const x of h) sum += x;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
}

type HeaderEdit =
  | { field: 'size'; value: string }
  | { field: 'size256'; value: number }
  | { field: 'type'; value: number }
  | { field: 'name'; value: string }
  | { field: 'magic'; value: string }
  | { field: 'raw'; at: number; value: number };
const headerEditArb: fc.Arbitrary<HeaderEdit> = fc.oneof(
  fc.record({
    field: fc.constant('size' as const),
    value: fc.oneof(
      fc.constantFrom('77777777777', '00000000000', '-1', 'zzzz', '1e3', ' 17', '0000000001\0'),
      fc.nat({ max: 1 << 20 }).map((n) => n.toString(8).padStart(11, '0')),
    ),
  }),
  fc.record({ field: fc.constant('size256' as const), value: fc.oneof(fc.constantFrom(0, 1, 2 ** 40, 2 ** 53, -1), fc.nat()) }),
  fc.record({
    field: fc.constant('type' as const),
    value: fc.oneof(fc.constantFrom(0, 0x30, 0x31, 0x32, 0x35, 0x37, 0x4c, 0x4b, 0x78, 0x67, 0x53, 0x56), fc.integer({ min: 0, max: 255 })),
  }),
  fc.record({ field: fc.constant('name' as const), value: fc.constantFrom('../x', '/abs', 'a/b', '', 'obj/', 'obj\0x', '\u00ff\u00fe', 'PaxHeader') }),
  fc.record({ field: fc.constant('magic' as const), value: fc.constantFrom('ustar  \0', 'ustar\x0000', 'xxxxxx00', '\0\0\0\0\0\0\0\0') }),
  fc.record({ field: fc.constant('raw' as const), at: fc.nat({ max: 511 }), value: fc.integer({ min: 0, max: 255 }) }),
);

function applyHeaderEdit(b: Buffer, off: number, e: HeaderEdit): void {
  const h = b.subarray(off, off + 512);
  switch (e.field) {
    case 'size':
      h.fill(0, 124, 136);
      h.write(e.value.slice(0, 12), 124, 'latin1');
      break;
    case 'size256': {
      // GNU base-256: high bit of the first byte set, big-endian two's complement.
      h.fill(e.value < 0 ? 0xff : 0, 124, 136);
      h[124] = 0x80 | (e.value < 0 ? 0x7f : 0);
      let v = BigInt(Math.abs(Math.trunc(e.value)));
      if (e.value < 0) v = (1n << 88n) - v;
      for (let i = 135; i > 124 && v > 0n; i--) {
        h[i] = Number(v & 0xffn);
        v >>= 8n;
      }
      break;
    }
    case 'type':
      h[156] = e.value;
      break;
    case 'name':
      h.fill(0, 0, 100);
      h.write(e.value, 0, 'latin1');
      break;
    case 'magic':
      h.write(e.value, 257, 'latin1');
      break;
    case 'raw':
      h[e.at] = e.value;
      break;
  }
  fixChecksum(b, off);
}

describe('fuzz: unpackBundle', () => {
  before(async () => {
    await initHash();
  });

  test('packBundle output unpacks to exactly the declared files', async (t) => {
    await fuzz(
      t,
      'bundle round trip',
      fc.asyncProperty(filesArb, async (files) => {
        const record = recordFor(files);
        const out = await unpack(record, await packBundle(record, files), GENEROUS);
        assert.equal(out.kind, 'ok', out.kind === 'rejected' ? out.reason : '');
        assertExact(out, files);
      }),
      { seed: 0xb0d1e1, numRuns: 1000, timeLimitMs: 1_500 },
    );
  });

  test('structural bundles: ok exactly when the model says the tar is conforming', async (t) => {
    let oks = 0;
    const r = await fuzz(
      t,
      'bundle structural',
      fc.asyncProperty(
        filesArb,
        fc.oneof(
          // a free-form list of entries
          { weight: 1, arbitrary: fc.array(modelEntryArb, { maxLength: 6 }).map((list) => ({ free: list, edits: [] as Edit[] })) },
          // one right entry per declared file, then 0..2 single faults (most cases conform, or
          // miss conforming by exactly one thing: the sharpest test of each check)
          { weight: 3, arbitrary: fc.array(editArb, { maxLength: 2 }).map((edits) => ({ free: null, edits })) },
        ),
        fc.oneof(
          { weight: 3, arbitrary: fc.constant(GENEROUS) },
          { weight: 1, arbitrary: fc.record({ maxBundleBytes: fc.integer({ min: 512, max: 8192 }), maxEntries: fc.integer({ min: 1, max: 6 }) }) },
        ),
        fc.nat(),
        async (files, plan, limits, rot) => {
          let entries: ModelEntry[];
          if (plan.free) entries = plan.free;
          else {
            const n = files.size;
            entries = [...files.keys()].map((_, i) => ({ of: (i + rot) % n, name: 'declared', type: 'file', content: 'right', pax: 'none', carriesData: false }));
            for (const e of plan.edits) {
              const at = e.index % Math.max(1, entries.length);
              if (e.kind === 'add') entries.splice(at, 0, e.entry);
              else if (e.kind === 'remove') entries.splice(at, 1);
              else if (entries[at]) entries[at] = { ...entries[at]!, ...e.patch };
            }
          }
          const record = recordFor(files);
          const built = await buildStructural(files, entries, limits);
          const out = await unpack(record, built.bundle, limits);
          assertExact(out, files);
          assert.equal(out.kind, built.mustBeOk ? 'ok' : 'rejected', `model says ${built.mustBeOk ? 'ok' : 'reject'}: ${out.kind === 'rejected' ? out.reason : 'ok'}`);
          if (out.kind === 'ok') oks++;
        },
      ),
      { seed: 0xb0d1e2, numRuns: 4000, timeLimitMs: 3_000 },
    );
    t.diagnostic(`ok: ${oks} of ${r.runs}`);
    assert.ok(oks > r.runs / 10 && oks < r.runs * 0.9, `ok ${oks} of ${r.runs}: the generator is unbalanced`);
  });

  test('arbitrary bytes and damaged bundles: ok only with exactly the declared files', async (t) => {
    await fuzz(
      t,
      'bundle damaged',
      fc.asyncProperty(
        filesArb,
        fc.oneof(
          fc.record({ kind: fc.constant('bytes' as const), ms: fc.array(mutationArb, { minLength: 1, maxLength: 4 }) }),
          fc.record({ kind: fc.constant('header' as const), which: fc.nat(), edits: fc.array(headerEditArb, { minLength: 1, maxLength: 3 }) }),
          fc.record({ kind: fc.constant('random' as const), bytes: fc.uint8Array({ maxLength: 2048 }) }),
        ),
        async (files, how) => {
          const record = recordFor(files);
          const good = await packBundle(record, files);
          let bad: Buffer;
          if (how.kind === 'bytes') bad = mutateAll(good, how.ms);
          else if (how.kind === 'random') bad = Buffer.from(how.bytes);
          else {
            bad = Buffer.from(good);
            const offs = headerOffsets(bad);
            const off = offs[how.which % offs.length]!;
            for (const e of how.edits) applyHeaderEdit(bad, off, e);
          }
          assertExact(await unpack(record, bad, GENEROUS), files);
        },
      ),
      { seed: 0xb0d1e3, numRuns: 10000, timeLimitMs: 4_000 },
    );
  });

  test('regressions', async () => {
    for (const r of BUNDLE_REGRESSIONS) {
      const files = new Map(r.files.map(([n, hex]) => [n, Buffer.from(hex, 'hex')]));
      const record = recordFor(files);
      const bundle = await packBundle(record, files);
      const offs = headerOffsets(bundle);
      for (const e of r.edits) applyHeaderEdit(bundle, offs[e.entry]!, e);
      const out = await unpack(record, bundle, GENEROUS);
      assertExact(out, files);
      assert.equal(out.kind, r.expect, r.name);
    }
  });
});
