/**
 * Fuzz: the ThinLTO index reader (src/key/moduleTable.ts over src/key/bitstream.ts).
 *
 *  1. Grammar-generated bitstreams, well formed by construction (nested blocks, BLOCKINFO,
 *     DEFINE_ABBREV with literal/fixed/vbr/char6/array/blob operands, zero-width fields,
 *     abbreviated and unabbreviated records, module-table ENTRY/HASH records with valid,
 *     non-UTF-8, out-of-range and duplicate paths). An independent bit writer encodes them and
 *     computes, as it goes, what readIndexParts must return: the exact module table, the table's
 *     bit range and the summary block bodies, or `invalid`. The reader must agree exactly.
 *  2. The same streams made hostile (wrong/huge length words, spurious END_BLOCKs, undefined
 *     abbrev ids, self-referencing BLOCKINFO abbrevs, raw bits, byte mutations), arbitrary
 *     bytes with and without the magic and the wrapper header, and mutations of real index files
 *     written by ld.lld-19: `ok` or `invalid` (with a bit offset), never an exception, never an
 *     internal error, each call under 200 ms; a full BitstreamReader walk (entering every block,
 *     reading every record) throws only BitstreamError and does bounded work.
 *  3. End to end through the real daemon: a backend job whose -fthinlto-index= file is garbage
 *     gets exactly clang's own exit code and stderr from bin/ltocache, is counted uncacheable
 *     with reason `bad-index`, and the daemon lives on.
 */

import assert from 'node:assert/strict';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { ThinBuild } from '../../src/demo/thinBuild.js';
import { BitstreamError, BitstreamReader } from '../../src/key/bitstream.js';
import { type ModuleEntry, readIndexParts, readModuleTable } from '../../src/key/moduleTable.js';
import { fuzz, mutateAll, mutationArb, timed } from '../fuzz/common.js';
import { INDEX_REGRESSIONS } from '../fuzz/regressions/moduleTable.js';
import { CacheEnv, CLIENT, FIXTURE, tempDir } from '../support/env.js';

// ---------------------------------------------------------------------------------------------
// An independent bitstream writer

class BitWriter {
  private bytes: number[] = [];
  bits = 0;
  private bit(b: number): void {
    const i = this.bits >> 3;
    if (i >= this.bytes.length) this.bytes.push(0);
    if (b) this.bytes[i]! |= 1 << (this.bits & 7);
    this.bits++;
  }
  fixed(v: number, w: number): void {
    for (let i = 0; i < w; i++) this.bit(Math.floor(v / 2 ** i) % 2);
  }
  vbr(v: number, w: number): void {
    const hi = 2 ** (w - 1);
    do {
      const chunk = v % hi;
      v = Math.floor(v / hi);
      this.fixed(v > 0 ? chunk + hi : chunk, w);
    } while (v > 0);
  }
  align32(): void {
    while (this.bits % 32) this.bit(0);
  }
  word(at: number, v: number): void {
    for (let i = 0; i < 4; i++) this.bytes[at / 8 + i] = Math.floor(v / 2 ** (8 * i)) % 256;
  }
  buffer(): Buffer {
    const b = Buffer.alloc(Math.ceil(this.bytes.length / 4) * 4);
    Buffer.from(this.bytes).copy(b);
    return b;
  }
}

// ---------------------------------------------------------------------------------------------
// Grammar

type Scalar = { k: 'lit'; v: number } | { k: 'fixed'; w: number } | { k: 'vbr'; w: number } | { k: 'char6' };
type Elt = { k: 'fixed'; w: number } | { k: 'vbr'; w: number } | { k: 'char6' };
type Op = Scalar | { k: 'array'; elt: Elt } | { k: 'blob' };
type Abbrev = Op[];
type Rec = { t: 'record'; code: number; ops: number[]; blob: number[]; pick: number | null };
type Item =
  | { t: 'block'; id: number; width: number; items: Item[] }
  | { t: 'blockinfo'; width: number; groups: { bid: number; abbrevs: Abbrev[] }[] }
  | { t: 'define'; abbrev: Abbrev }
  | Rec
  /** Hostile only: noise the grammar would never produce. */
  | { t: 'raw'; v: number; w: number }
  | { t: 'end' };
type Hostility = { lengthDelta: number; lengthOverride: number | null };

const CHAR6 = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._';

const eltArb: fc.Arbitrary<Elt> = fc.oneof(
  fc.record({ k: fc.constant('fixed' as const), w: fc.oneof(fc.constantFrom(7, 8), fc.integer({ min: 1, max: 32 })) }),
  fc.record({ k: fc.constant('vbr' as const), w: fc.integer({ min: 2, max: 32 }) }),
  fc.constant({ k: 'char6' as const }),
);
const scalarArb: fc.Arbitrary<Scalar> = fc.oneof(
  fc.record({ k: fc.constant('lit' as const), v: fc.oneof(fc.constantFrom(1, 2), fc.nat({ max: 300 })) }),
  fc.record({ k: fc.constant('fixed' as const), w: fc.integer({ min: 0, max: 32 }) }),
  fc.record({ k: fc.constant('vbr' as const), w: fc.oneof(fc.constant(0), fc.integer({ min: 2, max: 32 })) }),
  fc.constant({ k: 'char6' as const }),
);
const abbrevArb: fc.Arbitrary<Abbrev> = fc.oneof(
  // the shapes LLVM uses for module-table entries
  fc.constantFrom<Abbrev>(
    [
      { k: 'lit', v: 1 },
      { k: 'vbr', w: 8 },
      { k: 'array', elt: { k: 'fixed', w: 8 } },
    ],
    [
      { k: 'lit', v: 1 },
      { k: 'vbr', w: 8 },
      { k: 'array', elt: { k: 'fixed', w: 7 } },
    ],
    [
      { k: 'lit', v: 1 },
      { k: 'vbr', w: 8 },
      { k: 'array', elt: { k: 'char6' } },
    ],
    [
      { k: 'lit', v: 2 },
      { k: 'fixed', w: 32 },
      { k: 'fixed', w: 32 },
      { k: 'fixed', w: 32 },
      { k: 'fixed', w: 32 },
      { k: 'fixed', w: 32 },
    ],
    [
      { k: 'lit', v: 2 },
      { k: 'array', elt: { k: 'vbr', w: 6 } },
    ],
  ),
  fc
    .tuple(
      fc.array(scalarArb, { minLength: 1, maxLength: 4 }),
      fc.option(
        fc.oneof(
          eltArb.map((elt) => ({ k: 'array' as const, elt })),
          fc.constant({ k: 'blob' as const }),
        ),
      ),
    )
    .map(([s, tail]) => (tail ? [...s, tail] : s)),
);

const pathBytesArb: fc.Arbitrary<number[]> = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom('/tmp/a.o', 'main.o', 'sub/lib-b.o', 'c.o', 'x', 'ünï.o', '').map((s) => [...Buffer.from(s, 'utf8')]) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 8 }).map((s) => [...Buffer.from(s, 'utf8')]) },
  { weight: 1, arbitrary: fc.array(fc.nat({ max: 255 }), { maxLength: 6 }) },
  { weight: 1, arbitrary: fc.array(fc.nat({ max: 400 }), { maxLength: 4 }) },
);
const recordArb: fc.Arbitrary<Rec> = fc.oneof<fc.Arbitrary<Rec>[]>(
  fc.record({
    t: fc.constant('record' as const),
    code: fc.constant(1),
    ops: fc.tuple(fc.nat({ max: 9 }), pathBytesArb).map(([id, p]) => [id, ...p]),
    blob: fc.constant([]),
    pick: fc.option(fc.nat(), { freq: 2 }),
  }),
  fc.record({
    t: fc.constant('record' as const),
    code: fc.constant(2),
    ops: fc.oneof(
      { weight: 6, arbitrary: fc.array(fc.nat({ max: 0xffffffff }), { minLength: 5, maxLength: 5 }) },
      { weight: 1, arbitrary: fc.array(fc.oneof(fc.nat({ max: 0xffffffff }), fc.constant(2 ** 40)), { maxLength: 7 }) },
    ),
    blob: fc.constant([]),
    pick: fc.option(fc.nat(), { freq: 2 }),
  }),
  fc.record({
    t: fc.constant('record' as const),
    code: fc.nat({ max: 12 }),
    ops: fc.array(fc.nat({ max: 1000 }), { maxLength: 5 }),
    blob: fc.array(fc.nat({ max: 255 }), { maxLength: 9 }),
    pick: fc.option(fc.nat(), { freq: 2 }),
  }),
);
const blockIdArb = fc.oneof({ weight: 3, arbitrary: fc.constantFrom(8, 19, 20) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 40 }) });
const blockInfoArb: fc.Arbitrary<Item> = fc.record({
  t: fc.constant('blockinfo' as const),
  width: fc.integer({ min: 2, max: 4 }),
  groups: fc.array(fc.record({ bid: fc.oneof(fc.constantFrom(19, 8, 20, 0), fc.nat({ max: 30 })), abbrevs: fc.array(abbrevArb, { maxLength: 3 }) }), { maxLength: 3 }),
});

const itemArb: fc.Arbitrary<Item> = fc.letrec<{ item: Item; block: Item }>((tie) => ({
  block: fc.record({
    t: fc.constant('block' as const),
    id: blockIdArb,
    width: fc.integer({ min: 2, max: 6 }),
    items: fc.array(tie('item'), { maxLength: 5, depthIdentifier: 'blocks' }),
  }),
  item: fc.oneof(
    { maxDepth: 3, depthIdentifier: 'blocks', depthSize: 'small' },
    { weight: 4, arbitrary: recordArb },
    { weight: 2, arbitrary: fc.record({ t: fc.constant('define' as const), abbrev: abbrevArb }) },
    { weight: 1, arbitrary: blockInfoArb },
    { weight: 2, arbitrary: tie('block') },
  ),
})).item;

/** A stream: top-level blocks (BLOCKINFO allowed), biased towards the shape lld writes. */
const streamArb: fc.Arbitrary<Item[]> = fc.oneof(
  fc.array(fc.oneof({ weight: 4, arbitrary: itemArb.filter((i) => i.t === 'block') }, { weight: 1, arbitrary: blockInfoArb }), { minLength: 1, maxLength: 3 }),
  fc
    .tuple(fc.array(itemArb, { maxLength: 4 }), fc.array(recordArb, { maxLength: 6 }), fc.array(itemArb, { maxLength: 3 }), fc.array(abbrevArb, { maxLength: 2 }))
    .map(([before, strtab, afterItems, defs]): Item[] => [
      { t: 'block', id: 13, width: 5, items: [] },
      {
        t: 'block',
        id: 8,
        width: 3,
        items: [...before, { t: 'block', id: 19, width: 4, items: [...defs.map((abbrev): Item => ({ t: 'define', abbrev })), ...strtab] }, ...afterItems],
      },
    ]),
);

// ---------------------------------------------------------------------------------------------
// Encoder + model of readIndexParts

type Expected =
  | {
      kind: 'ok';
      modules: ModuleEntry[];
      moduleTableBits: { start: number; end: number };
      enclosingLengthWords: number[];
      summaries: { start: number; end: number; abbrevWidth: number }[];
    }
  | { kind: 'invalid' };

type Ctx = 'top' | 'module' | 'strtab' | 'skipped' | 'blockinfo';

class Encoder {
  readonly w = new BitWriter();
  private blockInfo = new Map<number, Abbrev[]>();
  private invalid = false;
  private strtabs = 0;
  private modules: ModuleEntry[] = [];
  private seen = new Set<string>();
  private awaiting: ModuleEntry | undefined;
  private tableBits = { start: 0, end: 0 };
  /** Byte offsets of the length words of the MODULE_BLOCKs open now, and around the table. */
  private openModules: number[] = [];
  private tableEnclosed: number[] = [];
  private summaries: { start: number; end: number; abbrevWidth: number }[] = [];
  /** Hostile mode: apply length changes to the n-th block (0-based, in stream order). */
  constructor(private readonly hostile: Map<number, Hostility> = new Map()) {}
  private blockCount = 0;

  encode(items: Item[]): Buffer {
    for (const b of [0x42, 0x43, 0xc0, 0xde]) this.w.fixed(b, 8);
    for (const it of items) this.item(it, 2, 'top', [], [], 0);
    return this.w.buffer();
  }

  expected(): Expected {
    if (this.invalid || this.strtabs === 0) return { kind: 'invalid' };
    return { kind: 'ok', modules: this.modules, moduleTableBits: this.tableBits, enclosingLengthWords: this.tableEnclosed, summaries: this.summaries };
  }

  private item(it: Item, width: number, ctx: Ctx, info: Abbrev[], local: Abbrev[], blockId: number): void {
    const w = this.w;
    switch (it.t) {
      case 'block': {
        if (ctx === 'top' && it.id === 0) return;
        let inner: Ctx = 'skipped';
        if (ctx === 'top' || ctx === 'module') {
          if (it.id === 19) inner = 'strtab';
          else if (it.id === 8 && ctx === 'top') inner = 'module';
        }
        const start = w.bits;
        w.fixed(1, width);
        w.vbr(it.id, 8);
        w.vbr(it.width, 4);
        w.align32();
        const lenAt = w.bits;
        w.fixed(0, 32);
        const body = w.bits;
        const n = this.blockCount++;
        if (inner === 'strtab') {
          this.strtabs++;
          if (this.strtabs > 1) this.invalid = true;
          this.awaiting = undefined;
        }
        const innerInfo = inner === 'skipped' ? [] : (this.blockInfo.get(it.id) ?? []);
        const innerLocal: Abbrev[] = [];
        if (inner === 'module') this.openModules.push(lenAt / 8);
        if (inner === 'strtab' && this.strtabs === 1) this.tableEnclosed = [...this.openModules];
        for (const c of it.items) this.item(c, it.width, inner, innerInfo, innerLocal, it.id);
        if (inner === 'module') this.openModules.pop();
        w.fixed(0, it.width); // END_BLOCK
        w.align32();
        const words = (w.bits - body) / 32;
        const h = this.hostile.get(n);
        w.word(lenAt, h ? (h.lengthOverride ?? Math.max(0, words + h.lengthDelta)) : words);
        if (inner === 'strtab' && this.strtabs === 1) this.tableBits = { start, end: w.bits };
        if ((ctx === 'top' || ctx === 'module') && inner === 'skipped' && it.id === 20) {
          this.summaries.push({ start: body / 8, end: w.bits / 8, abbrevWidth: it.width });
        }
        return;
      }
      case 'blockinfo': {
        w.fixed(1, width);
        w.vbr(0, 8);
        w.vbr(it.width, 4);
        w.align32();
        const lenAt = w.bits;
        w.fixed(0, 32);
        const body = w.bits;
        this.blockCount++;
        const processed = ctx !== 'skipped';
        const fresh = new Map<number, Abbrev[]>();
        for (const g of it.groups) {
          // SETBID, unabbreviated
          w.fixed(3, it.width);
          w.vbr(1, 6);
          w.vbr(1, 6);
          w.vbr(g.bid, 6);
          let list = fresh.get(g.bid);
          if (!list) fresh.set(g.bid, (list = []));
          for (const a of g.abbrevs) {
            w.fixed(2, it.width);
            this.abbrevDef(a);
            list.push(a);
          }
        }
        w.fixed(0, it.width);
        w.align32();
        w.word(lenAt, (w.bits - body) / 32);
        if (processed) this.blockInfo = fresh; // a later BLOCKINFO replaces an earlier one
        return;
      }
      case 'define':
        if (ctx === 'top') return;
        if (3 + info.length + local.length + 1 >= 2 ** width) return; // its id would not fit
        w.fixed(2, width);
        this.abbrevDef(it.abbrev);
        local.push(it.abbrev);
        return;
      case 'record': {
        if (ctx === 'top') return;
        const visible = [...info, ...local];
        let decoded: { code: number; ops: number[] };
        if (it.pick === null || visible.length === 0 || 4 + (it.pick % visible.length) >= 2 ** width) {
          w.fixed(3, width);
          w.vbr(it.code, 6);
          w.vbr(it.ops.length, 6);
          for (const o of it.ops) w.vbr(o, 6);
          decoded = { code: it.code, ops: it.ops };
        } else {
          const idx = it.pick % visible.length;
          w.fixed(4 + idx, width);
          decoded = this.abbreviated(visible[idx]!, [it.code, ...it.ops], it.blob);
        }
        if (ctx === 'strtab' && blockId === 19) this.strtabRecord(decoded);
        return;
      }
      case 'raw':
        w.fixed(it.v, it.w);
        return;
      case 'end':
        w.fixed(0, width);
        return;
    }
  }

  private abbrevDef(a: Abbrev): void {
    const w = this.w;
    const count = a.length + a.filter((o) => o.k === 'array').length;
    w.vbr(count, 5);
    const op = (o: Op) => {
      if (o.k === 'lit') {
        w.fixed(1, 1);
        w.vbr(o.v, 8);
        return;
      }
      w.fixed(0, 1);
      const enc = { fixed: 1, vbr: 2, array: 3, char6: 4, blob: 5 }[o.k];
      w.fixed(enc, 3);
      if (o.k === 'fixed' || o.k === 'vbr') w.vbr(o.w, 5);
      if (o.k === 'array') op(o.elt);
    };
    a.forEach(op);
  }

  /** Writes one value per scalar operand (taking them from `values` in order), the rest as the
   *  array; returns the record as the reader must decode it. */
  private abbreviated(a: Abbrev, values: number[], blob: number[]): { code: number; ops: number[] } {
    const w = this.w;
    const out: number[] = [];
    let vi = 0;
    const next = () => values[vi++] ?? 0;
    const scalar = (o: Scalar | Elt, v: number): number => {
      switch (o.k) {
        case 'lit':
          return o.v;
        case 'fixed': {
          if (o.w === 0) return 0;
          const x = v % 2 ** o.w;
          w.fixed(x, o.w);
          return x;
        }
        case 'vbr':
          if (o.w === 0) return 0;
          w.vbr(v, o.w);
          return v;
        case 'char6': {
          const i = v % 64;
          w.fixed(i, 6);
          return CHAR6.charCodeAt(i);
        }
      }
    };
    for (const o of a) {
      if (o.k === 'array') {
        const rest = values.slice(vi);
        vi = values.length;
        w.vbr(rest.length, 6);
        for (const v of rest) out.push(scalar(o.elt, v));
      } else if (o.k === 'blob') {
        w.vbr(blob.length, 6);
        w.align32();
        for (const b of blob) w.fixed(b, 8);
        w.align32();
      } else {
        out.push(scalar(o, o.k === 'lit' ? 0 : next()));
      }
    }
    return { code: out[0]!, ops: out.slice(1) };
  }

  /** What readStrtab does with one record. */
  private strtabRecord(r: { code: number; ops: number[] }): void {
    if (this.invalid) return;
    if (r.code === 1) {
      if (r.ops.length < 1) return void (this.invalid = true);
      const chars = r.ops.slice(1);
      if (chars.some((c) => c > 0xff)) return void (this.invalid = true);
      const raw = Buffer.from(chars);
      const path = raw.toString('utf8');
      if (!Buffer.from(path, 'utf8').equals(raw) || this.seen.has(path)) return void (this.invalid = true);
      this.seen.add(path);
      this.awaiting = { path, hash: '0'.repeat(40) };
      this.modules.push(this.awaiting);
    } else if (r.code === 2) {
      if (!this.awaiting || r.ops.length !== 5 || r.ops.some((x) => x > 0xffffffff)) return void (this.invalid = true);
      this.awaiting.hash = r.ops.map((x) => x.toString(16).padStart(8, '0')).join('');
      this.awaiting = undefined;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Robustness checks shared by every input

const HEX40 = /^[0-9a-f]{40}$/;

/** readModuleTable / readIndexParts on any input: the contract, plus consistency. */
function checkAny(bytes: Buffer): 'ok' | 'invalid' {
  const parts = timed(`readIndexParts(${bytes.length} bytes)`, 200, () => readIndexParts(bytes));
  const table = timed('readModuleTable', 200, () => readModuleTable(bytes));
  assert.equal(table.kind, parts.kind);
  if (parts.kind === 'invalid') {
    assert.doesNotMatch(parts.reason, /^internal error/, 'an exception other than BitstreamError escaped');
    assert.match(parts.reason, /at bit \d+$/, 'reason names no bit offset');
    return 'invalid';
  }
  assert.deepEqual(table.kind === 'ok' && table.modules, parts.modules);
  const seen = new Set<string>();
  for (const m of parts.modules) {
    assert.match(m.hash, HEX40);
    assert.ok(!seen.has(m.path), 'duplicate path accepted');
    seen.add(m.path);
  }
  const bits = bytes.length * 8;
  const { start, end } = parts.moduleTableBits;
  assert.ok(0 <= start && start < end && end <= bits, `table bits ${start}..${end} outside 0..${bits}`);
  for (const s of parts.summaries) {
    assert.ok(Number.isInteger(s.start) && s.start <= s.end && s.end <= bytes.length, 'summary range');
    assert.ok(s.abbrevWidth >= 1 && s.abbrevWidth <= 32);
  }
  return 'ok';
}

/** Enters every block and reads every record: only BitstreamError may escape, work is bounded. */
function walk(bytes: Buffer): void {
  const started = performance.now();
  let steps = 0;
  try {
    const r = BitstreamReader.open(bytes);
    for (;;) {
      steps++;
      const e = r.next();
      if (e.kind === 'eof') break;
      if (e.kind === 'end') continue;
      if (e.kind === 'block') r.enterBlock(e);
      else r.readRecord(e.abbrevId);
    }
  } catch (e) {
    if (!(e instanceof BitstreamError)) throw e;
  }
  assert.ok(steps <= bytes.length * 8 * 4 + 4096 + 1, `${steps} steps for ${bytes.length} bytes`);
  assert.ok(performance.now() - started < 200, 'walk too slow');
}

// ---------------------------------------------------------------------------------------------
// Real index files

interface Corpus {
  dir: string;
  files: { name: string; bytes: Buffer; modules: number }[];
}

function buildCorpus(b: ThinBuild): Corpus['files'] {
  const files: Corpus['files'] = [];
  for (const m of b.modules) {
    files.push({ name: `${m}.o.thinlto.bc`, bytes: readFileSync(join(b.dir, `${m}.o.thinlto.bc`)), modules: -1 });
    files.push({ name: `${m}.o`, bytes: readFileSync(join(b.dir, `${m}.o`)), modules: -1 });
  }
  return files;
}

describe('fuzz: ThinLTO index reader', () => {
  let b: ThinBuild;
  let corpus: Corpus['files'];
  before(() => {
    b = ThinBuild.fromFixture(FIXTURE, join(tempDir('fuzz-index'), 'src'));
    b.frontEnd();
    b.thinLink();
    corpus = buildCorpus(b);
  });
  after(() => rmSync(join(b.dir, '..'), { recursive: true, force: true }));

  test('real index files read ok; their module tables name the linked objects', () => {
    for (const f of corpus.filter((c) => c.name.endsWith('.thinlto.bc'))) {
      const t = readModuleTable(f.bytes);
      assert.equal(t.kind, 'ok', f.name);
      if (t.kind !== 'ok') continue;
      assert.ok(t.modules.length >= 1);
      const own = f.name.replace(/\.thinlto\.bc$/, '');
      assert.ok(
        t.modules.some((m) => m.path === own),
        `${f.name}: its own module is not in the table`,
      );
      for (const m of t.modules)
        assert.ok(
          b.modules.some((x) => m.path === `${x}.o`),
          m.path,
        );
    }
    // A module's own bitcode has no MODULE_STRTAB_BLOCK.
    for (const f of corpus.filter((c) => c.name.endsWith('.o'))) assert.equal(readModuleTable(f.bytes).kind, 'invalid', f.name);
  });

  test('grammar-generated streams: readIndexParts returns exactly what the encoder says', async (t) => {
    const kinds = { ok: 0, invalid: 0 };
    const r = await fuzz(
      t,
      'index grammar (exact)',
      fc.property(streamArb, (items) => {
        const enc = new Encoder();
        const bytes = enc.encode(items);
        const want = enc.expected();
        const got = timed('readIndexParts', 200, () => readIndexParts(bytes));
        if (want.kind === 'invalid') {
          assert.equal(got.kind, 'invalid', `encoder says invalid, reader says ${JSON.stringify(got)}`);
        } else {
          assert.equal(got.kind, 'ok', got.kind === 'invalid' ? got.reason : '');
          if (got.kind !== 'ok') return;
          const { tableRecords, ...rest } = got;
          assert.deepEqual(rest, want);
          // The records, when given, are the table's entries (and hashes) in order.
          if (tableRecords) {
            assert.deepEqual(
              tableRecords.filter((r) => r[0] === 'entry').map((r) => r[2]),
              want.modules.map((m) => m.path),
            );
          }
        }
        checkAny(bytes);
        walk(bytes);
        kinds[want.kind]++;
      }),
      { seed: 0x1d0001, numRuns: 3000, timeLimitMs: 4_000 },
    );
    t.diagnostic(`expected ok ${kinds.ok}, invalid ${kinds.invalid} (of ${r.runs})`);
    assert.ok(kinds.ok > r.runs / 10 && kinds.invalid > r.runs / 20, JSON.stringify(kinds));
  });

  test('hostile streams, arbitrary bytes, mutated real indexes: ok or invalid, fast, never an exception', async (t) => {
    const hostileItem: fc.Arbitrary<Item> = fc.oneof<fc.Arbitrary<Item>[]>(
      fc.record({ t: fc.constant('raw' as const), v: fc.nat({ max: 0xffffffff }), w: fc.integer({ min: 1, max: 32 }) }),
      fc.constant({ t: 'end' as const }),
      // an abbreviated record whose id is not defined
      fc.record({ t: fc.constant('record' as const), code: fc.nat({ max: 3 }), ops: fc.constant([]), blob: fc.constant([]), pick: fc.constant(1 << 20) }),
    );
    const inputArb: fc.Arbitrary<Buffer> = fc.oneof(
      // grammar streams with broken length words and noise spliced in
      fc
        .tuple(
          streamArb,
          fc.array(
            fc.tuple(
              fc.nat({ max: 12 }),
              fc.record({ lengthDelta: fc.integer({ min: -2, max: 2 }), lengthOverride: fc.option(fc.constantFrom(0, 1, 0x7fffffff, 0xffffffff, 0x40000000), { freq: 3 }) }),
            ),
            { maxLength: 2 },
          ),
          fc.array(fc.tuple(fc.nat(), hostileItem), { maxLength: 2 }),
          fc.array(mutationArb, { maxLength: 2 }),
        )
        .map(([items, lengths, noise, ms]) => {
          const spliced = structuredClone(items);
          for (const [at, it] of noise) insertSomewhere(spliced, at, it);
          return mutateAll(new Encoder(new Map(lengths)).encode(spliced), ms);
        }),
      // mutated real index files (and module bitcode)
      fc.tuple(fc.nat(), fc.array(mutationArb, { minLength: 1, maxLength: 4 })).map(([i, ms]) => mutateAll(corpus[i % corpus.length]!.bytes, ms)),
      // truncations of real files
      fc.tuple(fc.nat(), fc.nat()).map(([i, n]) => {
        const f = corpus[i % corpus.length]!.bytes;
        return f.subarray(0, n % (f.length + 1));
      }),
      // arbitrary bytes, with and without the magic, with a wrapper header
      fc.uint8Array({ maxLength: 256 }).map((a) => Buffer.from(a)),
      fc.uint8Array({ maxLength: 256 }).map((a) => Buffer.concat([Buffer.from([0x42, 0x43, 0xc0, 0xde]), Buffer.from(a)])),
      fc.tuple(fc.nat({ max: 64 }), fc.nat({ max: 0xffffffff }), fc.nat(), fc.array(mutationArb, { maxLength: 2 })).map(([off, size, i, ms]) => {
        const inner = corpus[i % corpus.length]!.bytes;
        const head = Buffer.alloc(20);
        head.writeUInt32LE(0x0b17c0de, 0);
        head.writeUInt32LE(20 + off, 8);
        head.writeUInt32LE(size % 3 === 0 ? inner.length : size, 12);
        return mutateAll(Buffer.concat([head, Buffer.alloc(off), inner]), ms);
      }),
    );
    const kinds = { ok: 0, invalid: 0 };
    const r = await fuzz(
      t,
      'index hostile',
      fc.property(inputArb, (bytes) => {
        kinds[checkAny(bytes)]++;
        walk(bytes);
      }),
      { seed: 0x1d0002, numRuns: 4000, timeLimitMs: 5_000 },
    );
    t.diagnostic(`ok ${kinds.ok}, invalid ${kinds.invalid} (of ${r.runs})`);
    assert.ok(kinds.ok > r.runs / 100, 'hostile inputs never got through: the generator is too blunt');
  });

  test('regressions', () => {
    for (const r of INDEX_REGRESSIONS) {
      const bytes = Buffer.from(r.hex, 'hex');
      assert.equal(checkAny(bytes), r.expect, r.name);
      walk(bytes);
    }
  });

  test("end to end: a garbage -fthinlto-index= file gets clang's own answer, counted bad-index", async (t) => {
    const cache = new CacheEnv('fuzz-index');
    try {
      cache.start();
      const pid = cache.daemonPid();
      const index = join(b.dir, 'strx.o.thinlto.bc');
      const good = readFileSync(index);
      const cases = fc.sample(
        fc.oneof(
          fc.uint8Array({ minLength: 1, maxLength: 300 }).map((a) => ({ what: 'random bytes', bytes: Buffer.from(a) })),
          fc.nat().map((n) => ({ what: 'truncated index', bytes: good.subarray(0, 4 + (n % (good.length - 8))) })),
          fc.nat({ max: 255 }).map((x) => ({ what: 'wrong magic', bytes: Buffer.concat([Buffer.from([x === 0x42 ? 0x41 : x]), good.subarray(1)]) })),
        ),
        { numRuns: 8, seed: 0x1d0003 },
      );
      cases.push({ what: 'empty file', bytes: Buffer.alloc(0) }, { what: 'magic only', bytes: Buffer.from([0x42, 0x43, 0xc0, 0xde]) });
      let badIndex = 0;
      for (const c of cases) {
        if (readModuleTable(c.bytes).kind !== 'invalid') continue;
        writeFileSync(index, c.bytes);
        const direct = b.backend('strx', { out: 'strx.direct.o' });
        const before = cache.stats();
        const via = b.backend('strx', { wrapper: [CLIENT], env: cache.env });
        const afterStats = cache.stats();
        assert.equal(via.status, direct.status, `${c.what}: exit status`);
        // (clang 19 itself exits 0 here: "Error loading index file", then a plain compile.)
        assert.equal(via.stderr, direct.stderr, `${c.what}: stderr`);
        assert.equal(via.stdout, direct.stdout, `${c.what}: stdout`);
        const reason = (s: typeof before) => s.uncacheable_by_reason['bad-index'] ?? 0;
        assert.equal(reason(afterStats) - reason(before), 1, `${c.what}: not counted as bad-index`);
        assert.equal(afterStats.hits - before.hits + afterStats.misses - before.misses, 0, `${c.what}: treated as cacheable`);
        badIndex++;
      }
      t.diagnostic(`${badIndex} garbage indexes checked`);
      assert.ok(badIndex >= 6);
      writeFileSync(index, good);
      // Still the same daemon, and still serving: the restored index compiles and is cached.
      assert.equal(cache.daemonPid(), pid);
      const ok = b.backend('strx', { wrapper: [CLIENT], env: cache.env });
      assert.equal(ok.status, 0, ok.stderr);
      assert.equal(cache.stats().misses, 1);
    } finally {
      cache.destroy();
    }
  });
});

/** Inserts `it` at a pseudo-random place in the tree (position `at`, counting items). */
function insertSomewhere(items: Item[], at: number, it: Item): void {
  const lists: Item[][] = [];
  const collect = (l: Item[]) => {
    lists.push(l);
    for (const x of l) if (x.t === 'block') collect(x.items);
  };
  collect(items);
  const nested = lists.length > 1 ? lists.slice(1) : lists;
  const l = nested[at % nested.length]!;
  l.splice(at % (l.length + 1), 0, it);
}
