import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { BitstreamError, BitstreamReader } from '../../src/key/bitstream.js';
import { DIGEST_RE, hashBytes, initHash } from '../../src/key/hash.js';
import { linkRenamer, mentionsLink, PID_PLACEHOLDER } from '../../src/key/linkNames.js';
import { type ModuleEntry, readIndexParts, readModuleTable, renamedIndexDigest } from '../../src/key/moduleTable.js';
import { tempDir } from '../support/env.js';

const CLANG = process.env.LTOCACHE_TEST_CLANG ?? 'clang-19';
const LLD = process.env.LTOCACHE_TEST_LLD ?? 'ld.lld-19';
const BCANALYZER = process.env.LTOCACHE_TEST_BCANALYZER ?? 'llvm-bcanalyzer-19';
const OPT = process.env.LTOCACHE_TEST_OPT ?? 'opt-19';

const HEX40 = /^[0-9a-f]{40}$/;
const ZERO = '0'.repeat(40);

// ---------------------------------------------------------------------------------------------
// Fixture: main.o imports from sub/lib-b.o (linked by absolute path: 7-bit path abbrev) and
// c.o (char6 path abbrev); leaf.o is linked but imports nothing.

type Fixture = { dir: string; libB: string; index: (obj: string) => string };
let fixtureCache: Fixture | undefined;

function run(cmd: string, args: string[], cwd: string): string {
  return execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function fixture(): Fixture {
  if (fixtureCache) return fixtureCache;
  const dir = tempDir('bitstream');
  fs.mkdirSync(path.join(dir, 'sub'));
  const sources: Record<string, string> = {
    'main.c': 'int lib_b(int); int lib_c(int);\nint entry(int x) { return lib_b(x) + lib_c(x); }\n',
    'sub/lib-b.c': 'int lib_b(int x) { return x * 3 + 1; }\n',
    'c.c': 'int lib_c(int x) { return x ^ 7; }\n',
    'leaf.c': 'int leaf(int x) { return x + 100; }\n',
  };
  for (const [name, text] of Object.entries(sources)) {
    fs.writeFileSync(path.join(dir, name), text);
    run(CLANG, ['-O2', '-flto=thin', '-c', name, '-o', name.replace(/\.c$/, '.o')], dir);
  }
  const libB = path.join(dir, 'sub/lib-b.o');
  run(LLD, ['-r', '--thinlto-index-only=list', 'main.o', libB, 'c.o', 'leaf.o', '-o', '/dev/null'], dir);
  fixtureCache = { dir, libB, index: (obj) => path.resolve(dir, `${obj}.thinlto.bc`) };
  return fixtureCache;
}

process.on('exit', () => {
  if (fixtureCache) fs.rmSync(fixtureCache.dir, { recursive: true, force: true });
});

/** The module table as llvm-bcanalyzer-19 -dump prints it (the oracle), plus the abbrev ids. */
function oracle(file: string): { modules: ModuleEntry[]; abbrevIds: Set<string> } {
  const modules: ModuleEntry[] = [];
  const abbrevIds = new Set<string>();
  let inTable = false;
  for (const line of run(BCANALYZER, ['-dump', file], os.tmpdir()).split('\n')) {
    if (line.includes('<MODULE_STRTAB_BLOCK')) inTable = true;
    if (line.includes('</MODULE_STRTAB_BLOCK>')) inTable = false;
    const m = /^\s*<(ENTRY|HASH)\b([^>]*)\/>/.exec(line);
    if (!inTable || !m) continue;
    const ops = [...m[2]!.matchAll(/op\d+=(\d+)/g)].map((x) => Number(x[1]));
    const abbrev = /abbrevid=(\d+)/.exec(m[2]!);
    if (abbrev) abbrevIds.add(`${m[1]}:${abbrev[1]}`);
    if (m[1] === 'ENTRY') modules.push({ path: Buffer.from(ops.slice(1)).toString('utf8'), hash: ZERO });
    else modules[modules.length - 1]!.hash = ops.map((w) => w.toString(16).padStart(8, '0')).join('');
  }
  return { modules, abbrevIds };
}

/** Walks every block and record with the generic reader; returns the module's own
 *  MODULE_CODE_HASH (code 17 in MODULE_BLOCK) and the number of blocks entered. */
function walkAll(bytes: Uint8Array): { moduleHash?: string; blocks: number; records: number } {
  const r = BitstreamReader.open(bytes);
  let moduleHash: string | undefined;
  let blocks = 0;
  let records = 0;
  for (;;) {
    const e = r.next();
    if (e.kind === 'eof') return moduleHash === undefined ? { blocks, records } : { moduleHash, blocks, records };
    if (e.kind === 'block') {
      r.enterBlock(e);
      blocks++;
    } else if (e.kind === 'record') {
      const blockId = r.blockId;
      const rec = r.readRecord(e.abbrevId);
      records++;
      if (blockId === 8 && rec.code === 17 && r.depth === 1) {
        moduleHash = rec.ops.map((w) => w.toString(16).padStart(8, '0')).join('');
      }
    }
  }
}

function ok(bytes: Uint8Array): ModuleEntry[] {
  const t = readModuleTable(bytes);
  assert.equal(t.kind, 'ok', t.kind === 'invalid' ? t.reason : '');
  return t.kind === 'ok' ? t.modules : [];
}

function invalid(bytes: Uint8Array, reason: RegExp): void {
  const t = readModuleTable(bytes);
  assert.equal(t.kind, 'invalid');
  if (t.kind === 'invalid') {
    assert.match(t.reason, reason);
    assert.match(t.reason, / at bit \d+$/);
  }
}

// ---------------------------------------------------------------------------------------------
// A minimal bitstream writer for hand-made inputs.

const CHAR6 = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._';
type Op = { lit: number } | { fixed: number } | { vbr: number } | 'array' | 'char6' | 'blob';

class Writer {
  readonly bits: number[] = [];
  private readonly stack: { width: number; lengthAt: number }[] = [{ width: 2, lengthAt: -1 }];
  get width(): number {
    return this.stack[this.stack.length - 1]!.width;
  }
  fixed(v: number, w: number): this {
    for (let i = 0; i < w; i++) this.bits.push(Math.floor(v / 2 ** i) % 2);
    return this;
  }
  vbr(v: number, w: number): this {
    const hi = 2 ** (w - 1);
    do {
      const chunk = v % hi;
      v = Math.floor(v / hi);
      this.fixed(chunk + (v > 0 ? hi : 0), w);
    } while (v > 0);
    return this;
  }
  align(): this {
    while (this.bits.length % 32) this.bits.push(0);
    return this;
  }
  enter(id: number, width: number): this {
    this.fixed(1, this.width).vbr(id, 8).vbr(width, 4).align();
    this.stack.push({ width, lengthAt: this.bits.length });
    return this.fixed(0, 32);
  }
  end(lengthOverride?: number): this {
    this.fixed(0, this.width).align();
    const { lengthAt } = this.stack.pop()!;
    const words = lengthOverride ?? (this.bits.length - lengthAt - 32) / 32;
    for (let i = 0; i < 32; i++) this.bits[lengthAt + i] = Math.floor(words / 2 ** i) % 2;
    return this;
  }
  record(code: number, ops: number[]): this {
    this.fixed(3, this.width).vbr(code, 6).vbr(ops.length, 6);
    for (const o of ops) this.vbr(o, 6);
    return this;
  }
  define(ops: Op[]): this {
    this.fixed(2, this.width).vbr(ops.length, 5);
    for (const op of ops) {
      if (typeof op === 'string') this.fixed(0, 1).fixed({ array: 3, char6: 4, blob: 5 }[op], 3);
      else if ('lit' in op) this.fixed(1, 1).vbr(op.lit, 8);
      else if ('fixed' in op) this.fixed(0, 1).fixed(1, 3).vbr(op.fixed, 5);
      else this.fixed(0, 1).fixed(2, 3).vbr(op.vbr, 5);
    }
    return this;
  }
  abbrev(id: number): this {
    return this.fixed(id, this.width);
  }
  bytes(): Uint8Array {
    const out = new Uint8Array(4 + Math.ceil(this.bits.length / 8));
    out.set([0x42, 0x43, 0xc0, 0xde]);
    for (const [i, b] of this.bits.entries()) out[4 + (i >> 3)]! |= b << (i & 7);
    return out;
  }
}

const char6 = (s: string) => [...s].map((c) => CHAR6.indexOf(c));
const codes = (s: string) => [...Buffer.from(s, 'utf8')];

/** PRNG for deterministic mutations (xorshift32). */
function prng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 32;
  };
}

// ---------------------------------------------------------------------------------------------
// Real index files from clang-19 + ld.lld-19.

test('module table of an importing module equals bcanalyzer output and the modules own hashes', () => {
  const fx = fixture();
  const file = fx.index('main.o');
  const modules = ok(fs.readFileSync(file));
  const expected = oracle(file).modules;
  assert.equal(expected.length, 3);
  assert.deepEqual(modules, expected);
  assert.deepEqual(modules.map((m) => m.path).sort(), ['main.o', 'c.o', fx.libB].sort());
  for (const m of modules) {
    assert.match(m.hash, HEX40);
    assert.notEqual(m.hash, ZERO);
    // The hash in the index is the MODULE_CODE_HASH inside each object, read independently.
    const own = walkAll(fs.readFileSync(path.resolve(fx.dir, m.path))).moduleHash;
    assert.equal(m.hash, own, m.path);
  }
});

test('modules that import nothing list only themselves', () => {
  const fx = fixture();
  for (const obj of ['leaf.o', 'c.o', fx.libB]) {
    const file = fx.index(obj);
    const modules = ok(fs.readFileSync(file));
    assert.equal(modules.length, 1);
    assert.equal(modules[0]!.path, obj);
    assert.deepEqual(modules, oracle(file).modules);
  }
});

test('the fixture exercises the char6 and 7-bit path abbrevs and the hash abbrev', () => {
  const fx = fixture();
  const ids = oracle(fx.index('main.o')).abbrevIds;
  for (const want of ['ENTRY:5', 'ENTRY:6', 'HASH:7']) assert.ok(ids.has(want), `${want} in ${[...ids]}`);
});

test('non-ASCII module paths: lld-19 writes them corrupted, which reads as invalid', () => {
  // LLVM 19 sign-extends path chars >= 0x80 into the 8-bit path abbrev (ENTRY abbrev 4); the
  // excess bits are ORed into the following fields, so the path reads as "\xc3\xff\xff\xff"
  // and the backend fails to open it. Should a fixed LLVM write the path intact, it must read.
  const dir = path.join(fixture().dir, 'nonascii');
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'user.c'), 'int lib_c(int);\nint user(int x) { return lib_c(x) + 1; }\n');
  fs.writeFileSync(path.join(dir, 'ç.c'), 'int lib_c(int x) { return x ^ 7; }\n');
  for (const f of ['user', 'ç']) run(CLANG, ['-O2', '-flto=thin', '-c', `${f}.c`, '-o', `${f}.o`], dir);
  run(LLD, ['-r', '--thinlto-index-only=list', 'user.o', 'ç.o', '-o', '/dev/null'], dir);
  for (const file of ['user.o.thinlto.bc', 'ç.o.thinlto.bc'].map((f) => path.join(dir, f))) {
    const { modules, abbrevIds } = oracle(file);
    assert.ok(abbrevIds.has('ENTRY:4'), `8-bit path abbrev used in ${file}`);
    if (modules.some((m) => m.path === 'ç.o')) assert.deepEqual(ok(fs.readFileSync(file)), modules);
    else invalid(fs.readFileSync(file), /module path is not valid UTF-8/);
  }
});

test('a module built without a hash has no HASH record and reads as all zeros', (t) => {
  try {
    execFileSync(OPT, ['--version'], { stdio: 'ignore' });
  } catch {
    t.skip(`${OPT} not available`);
    return;
  }
  const dir = path.join(fixture().dir, 'nohash');
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'user.c'), 'int nh(int);\nint user(int x) { return nh(x) + 1; }\n');
  fs.writeFileSync(path.join(dir, 'nh.c'), 'int nh(int x) { return x * 5; }\n');
  run(CLANG, ['-O2', '-flto=thin', '-c', 'user.c', '-o', 'user.o'], dir);
  run(CLANG, ['-O2', '-S', '-emit-llvm', 'nh.c', '-o', 'nh.ll'], dir);
  run(OPT, ['-module-summary', 'nh.ll', '-o', 'nh.o'], dir); // no -module-hash
  run(LLD, ['-r', '--thinlto-index-only=list', 'user.o', 'nh.o', '-o', '/dev/null'], dir);
  const file = path.join(dir, 'user.o.thinlto.bc');
  const modules = ok(fs.readFileSync(file));
  assert.deepEqual(modules, oracle(file).modules);
  assert.deepEqual(
    modules.map((m) => [m.path, m.hash === ZERO]),
    [
      ['nh.o', true],
      ['user.o', false],
    ],
  );
});

test('readIndexParts locates the module table and the summary block', () => {
  const fx = fixture();
  const bytes = fs.readFileSync(fx.index('main.o'));
  const parts = readIndexParts(bytes);
  assert.equal(parts.kind, 'ok');
  if (parts.kind !== 'ok') return;
  assert.deepEqual(parts.modules, ok(bytes));
  const { start, end } = parts.moduleTableBits;
  assert.ok(start > 32 && start < end && end % 32 === 0 && end <= bytes.length * 8);
  assert.equal(parts.summaries.length, 1);
  const s = parts.summaries[0]!;
  assert.ok(s.start % 4 === 0 && s.end % 4 === 0 && s.start >= end / 8 && s.end <= bytes.length);
  assert.equal(s.abbrevWidth, 4);
  // The body starts right after the length word, which counts the body's words.
  assert.equal(bytes.readUInt32LE(s.start - 4), (s.end - s.start) / 4);
  // Damaging the summary body does not change the module table.
  const copy = Buffer.from(bytes);
  copy.fill(0xff, s.start + 4, s.end - 4);
  assert.deepEqual(readModuleTable(copy), { kind: 'ok', modules: parts.modules });
});

test('the generic reader walks a full bitcode object (BLOCKINFO, function blocks)', () => {
  const fx = fixture();
  const file = path.join(fx.dir, 'main.o');
  const walk = walkAll(fs.readFileSync(file));
  const dump = run(BCANALYZER, ['-dump', file], fx.dir);
  assert.ok(dump.includes('<BLOCKINFO_BLOCK/>'));
  assert.equal(walk.blocks, (dump.match(/NumWords=/g) ?? []).length);
  assert.match(walk.moduleHash ?? '', HEX40);
  // A bitcode object is not an index.
  invalid(fs.readFileSync(file), /no MODULE_STRTAB_BLOCK/);
});

test('peekCode, readRecordText and skipRecord agree with readRecord on every record of real bitcode', () => {
  const fx = fixture();
  // Inline and module asm (one operand per character, many above 31: two VBR6 chunks), 64-bit
  // constants (operands past the 30-bit fast path), strings and arrays.
  const src = [
    'asm(".globl probe_sym\\nprobe_sym: .quad 0x123456789abcdef0");',
    'static const char msg[] = "a string constant with ~ and \\x7f and \\xff bytes";',
    'unsigned long long big(unsigned long long x) { return x * 0xfedcba9876543210ULL + 0x7fffffffffffffffULL; }',
    'int with_asm(int x) { int y; __asm__ volatile("movl %1, %0\\n\\taddl $12345, %0 # a comment ~~~" : "=r"(y) : "r"(x)); return y + msg[x & 7]; }',
  ].join('\n');
  fs.writeFileSync(path.join(fx.dir, 'asmrec.c'), `${src}\n`);
  run(CLANG, ['-O2', '-flto=thin', '-c', 'asmrec.c', '-o', 'asmrec.o'], fx.dir);
  const bytes = fs.readFileSync(path.join(fx.dir, 'asmrec.o'));
  const a = BitstreamReader.open(bytes);
  const b = BitstreamReader.open(bytes);
  const c = BitstreamReader.open(bytes);
  let records = 0;
  let multiChunk = 0;
  let wide = 0;
  for (;;) {
    const [ea, eb, ec] = [a.next(), b.next(), c.next()];
    assert.deepEqual(eb, ea);
    assert.deepEqual(ec, ea);
    if (ea.kind === 'eof') break;
    if (ea.kind === 'block') {
      a.enterBlock(ea);
      b.enterBlock(ea);
      c.enterBlock(ea);
      continue;
    }
    if (ea.kind !== 'record') continue;
    records++;
    const code = b.peekCode(ea.abbrevId);
    assert.equal(c.peekCode(ea.abbrevId), code);
    const rec = a.readRecord(ea.abbrevId);
    assert.equal(code, rec.code);
    const text = b.readRecordText(ea.abbrevId);
    assert.equal(text.code, rec.code);
    assert.equal(text.text, Buffer.from(rec.ops.map((v) => (v >= 0 && v < 256 ? v : 0))).toString('latin1'));
    c.skipRecord(ea.abbrevId);
    assert.equal(b.bit, a.bit);
    assert.equal(c.bit, a.bit);
    if (rec.ops.some((v) => v >= 32)) multiChunk++;
    if (rec.ops.some((v) => v >= 2 ** 30)) wide++;
  }
  assert.ok(records > 100, `${records} records`);
  assert.ok(multiChunk > 10 && wide > 0, `records with operands of two or more chunks: ${multiChunk}, past 30 bits: ${wide}`);
});

test('bitcode wrapper header is unwrapped', () => {
  const inner = fs.readFileSync(fixture().index('main.o'));
  const header = Buffer.alloc(20);
  header.writeUInt32LE(0x0b17c0de, 0);
  header.writeUInt32LE(24, 8); // offset: 4 bytes of slack after the header
  header.writeUInt32LE(inner.length, 12);
  const wrapped = Buffer.concat([header, Buffer.alloc(4), inner, Buffer.alloc(12)]);
  assert.deepEqual(ok(wrapped), ok(inner));
  const parts = readIndexParts(wrapped);
  const plain = readIndexParts(inner);
  assert.ok(parts.kind === 'ok' && plain.kind === 'ok');
  assert.equal(parts.summaries[0]!.start, plain.summaries[0]!.start + 24);
  header.writeUInt32LE(inner.length + 100, 12);
  invalid(Buffer.concat([header, Buffer.alloc(4), inner]), /wrapper offset 24 \+ size/);
});

// ---------------------------------------------------------------------------------------------
// Hand-made inputs.

test('BLOCKINFO abbrevs, local abbrevs, char6 arrays, unabbreviated records, missing hash', () => {
  const w = new Writer();
  w.enter(0, 2)
    .record(1, [19])
    .define([{ lit: 1 }, { vbr: 8 }, 'array', 'char6'])
    .end();
  w.enter(8, 3).record(1, [2]);
  w.enter(19, 3).define([{ lit: 2 }, { fixed: 32 }, { fixed: 32 }, { fixed: 32 }, { fixed: 32 }, { fixed: 32 }]);
  w.abbrev(4).vbr(0, 8).vbr(3, 6);
  for (const c of char6('a.o')) w.fixed(c, 6);
  w.abbrev(5).fixed(1, 32).fixed(0xabcdef, 32).fixed(3, 32).fixed(0xffffffff, 32).fixed(0x80000000, 32);
  w.record(1, [1, ...codes('dir/é.o')]); // no HASH follows
  w.record(9, [1, 2, 3]); // unknown code: ignored
  w.end();
  w.enter(20, 4).record(1, [10]).end();
  w.end();
  w.enter(23, 3).end();
  const bytes = w.bytes();
  assert.deepEqual(ok(bytes), [
    { path: 'a.o', hash: '0000000100abcdef00000003ffffffff80000000' },
    { path: 'dir/é.o', hash: ZERO },
  ]);
  const parts = readIndexParts(bytes);
  assert.ok(parts.kind === 'ok');
  assert.equal(parts.summaries.length, 1);
});

test('blobs, fixed and vbr fields through the reader API', () => {
  const w = new Writer();
  w.enter(23, 3).define([{ lit: 1 }, { vbr: 6 }, { fixed: 20 }, 'blob']);
  w.abbrev(4)
    .vbr(2 ** 52 + 5, 6)
    .fixed(0xfffff, 20)
    .vbr(5, 6)
    .align();
  for (const b of codes('hello')) w.fixed(b, 8);
  w.align();
  w.abbrev(4).vbr(7, 6).fixed(1, 20).vbr(0, 6).align();
  w.end();
  const r = BitstreamReader.open(w.bytes());
  const b = r.next();
  assert.ok(b.kind === 'block' && b.id === 23);
  r.enterBlock(b);
  const first = r.next();
  assert.ok(first.kind === 'record');
  const rec = r.readRecord(first.abbrevId);
  assert.equal(rec.code, 1);
  assert.deepEqual(rec.ops, [2 ** 52 + 5, 0xfffff]);
  assert.equal(Buffer.from(rec.blob ?? []).toString(), 'hello');
  const second = r.next();
  assert.ok(second.kind === 'record');
  r.skipRecord(second.abbrevId);
  assert.deepEqual(r.next(), { kind: 'end' });
  assert.deepEqual(r.next(), { kind: 'eof' });
});

test('malformed inputs are reported with a reason and a bit offset', () => {
  invalid(new Uint8Array(), /magic/);
  invalid(Buffer.from('BD\xc0\xde', 'latin1'), /magic/);
  invalid(Buffer.from('\x7fELF\x02\x01\x01\x00', 'latin1'), /magic/);
  invalid(new Writer().fixed(0, 30).bytes().subarray(0, 7), /multiple of 4/);
  invalid(new Writer().fixed(0, 2).align().bytes(), /END_BLOCK at top level/);
  invalid(new Writer().fixed(3, 2).align().bytes(), /abbrev id 3 at top level/);

  const huge = new Writer().enter(8, 3).record(1, [2]).end(0xffffffff).bytes();
  invalid(huge, /block length 4294967295 words runs .* past/);

  const wrongEnd = new Writer().enter(8, 3).record(1, [2]).end(5);
  invalid(wrongEnd.fixed(0, 128).bytes(), /length word says/);

  const strtab = (body: (w: Writer) => void) => {
    const w = new Writer().enter(8, 3).enter(19, 3);
    body(w);
    return w.end().end().bytes();
  };
  invalid(
    strtab((w) => w.fixed(3, 3).vbr(1, 6).vbr(1000, 6)),
    /operand count 1000 exceeds the \d+ bits left/,
  );
  const ones = (w: Writer, chunks: number) => {
    for (let i = 0; i < chunks; i++) w.fixed(0x3f, 6);
    return w;
  };
  invalid(
    strtab((w) => ones(w.fixed(3, 3).vbr(1, 6).vbr(1, 6), 14)),
    /unterminated VBR \(more than 64 bits\)/,
  );
  invalid(
    strtab((w) => ones(w.fixed(3, 3), 7)),
    /unterminated VBR \(more than 32 bits\)/,
  );
  invalid(
    strtab((w) => w.abbrev(6)),
    /abbrev id 6 not defined \(0 abbrevs in scope\)/,
  );
  invalid(
    strtab((w) =>
      w
        .define([{ lit: 1 }, 'array', { fixed: 8 }])
        .abbrev(4)
        .vbr(1e6, 6),
    ),
    /array length 1000000 exceeds/,
  );
  invalid(
    strtab((w) =>
      w
        .define([{ lit: 1 }, 'blob'])
        .abbrev(4)
        .vbr(1000, 6),
    ),
    /blob of 1000 bytes runs past/,
  );
  invalid(
    strtab((w) => w.define([{ lit: 1 }, 'array', 'blob'])),
    /array must be second to last/,
  );
  invalid(
    strtab((w) => w.define([{ lit: 1 }, { vbr: 33 }])),
    /width 33 above 32/,
  );
  invalid(
    strtab((w) => w.define([{ lit: 1 }, { vbr: 1 }])),
    /VBR width 1/,
  );
  invalid(
    strtab((w) => w.define(['array', 'char6'])),
    /starts with an array/,
  );
  invalid(
    strtab((w) => w.record(2, [1, 2, 3, 4, 5])),
    /HASH without a preceding/,
  );
  invalid(
    strtab((w) => w.record(1, [0, 97]).record(2, [1, 2, 3])),
    /with 3 words, expected 5/,
  );
  invalid(
    strtab((w) => w.record(1, [0, 97]).record(1, [1, 97])),
    /duplicate module path "a"/,
  );
  invalid(
    strtab((w) => w.record(1, [0, 0xff, 0xfe])),
    /not valid UTF-8/,
  );
  invalid(
    strtab((w) => w.record(1, [0, 300])),
    /above 255/,
  );
  invalid(
    strtab((w) => w.record(1, [])),
    /without a module id/,
  );
  invalid(
    new Writer()
      .enter(0, 2)
      .define([{ lit: 1 }])
      .end()
      .bytes(),
    /before SETBID/,
  );

  const two = new Writer().enter(19, 3).end().enter(19, 3).end().bytes();
  invalid(two, /second MODULE_STRTAB_BLOCK/);
  assert.deepEqual(readModuleTable(new Writer().enter(19, 3).end().bytes()), { kind: 'ok', modules: [] });
});

test('records whose literals cost no bits hit the work limit', () => {
  const w = new Writer().enter(8, 3).define(Array.from({ length: 400 }, () => ({ lit: 1 })));
  for (let i = 0; i < 4000; i++) w.abbrev(4);
  const bytes = w.end().bytes();
  const t0 = performance.now();
  invalid(bytes, /work limit exceeded/);
  assert.ok(performance.now() - t0 < 1000);
});

test('deep nesting: skipped in O(1), capped when entered', () => {
  const w = new Writer().enter(8, 3);
  for (let i = 0; i < 5000; i++) w.enter(7, 3);
  for (let i = 0; i < 5000; i++) w.end();
  const bytes = w.end().bytes();
  invalid(bytes, /no MODULE_STRTAB_BLOCK/);

  const r = BitstreamReader.open(bytes);
  assert.throws(
    () => {
      for (;;) {
        const e = r.next();
        if (e.kind === 'block') r.enterBlock(e);
        else assert.fail(`unexpected ${e.kind}`);
      }
    },
    (e: unknown) => e instanceof BitstreamError && /nesting deeper than 64/.test(e.message),
  );
  assert.equal(r.depth, 64);
});

// ---------------------------------------------------------------------------------------------
// Truncations and mutations of real files.

test('every truncation of a real index is invalid or a consistent prefix', () => {
  const bytes = fs.readFileSync(fixture().index('main.o'));
  const full = ok(bytes);
  const parts = readIndexParts(bytes);
  assert.ok(parts.kind === 'ok');
  let oks = 0;
  for (let n = 0; n < bytes.length; n++) {
    const t = readModuleTable(bytes.subarray(0, n));
    if (t.kind === 'ok') {
      oks++;
      // Only a cut at a top-level block boundary after the module table parses.
      assert.ok(n * 8 >= parts.moduleTableBits.end, `prefix ${n} parsed`);
      assert.deepEqual(t.modules, full);
    } else {
      assert.match(t.reason, / at bit \d+$/, `prefix ${n}: ${t.reason}`);
    }
  }
  assert.ok(oks <= 1, `${oks} prefixes parsed`); // lld writes MODULE_BLOCK then STRTAB_BLOCK
});

test('every truncation of a bitcode object fails cleanly in the generic reader', () => {
  const bytes = fs.readFileSync(path.join(fixture().dir, 'main.o'));
  // A cut right after the magic or after a top-level block is a valid, shorter stream.
  const boundaries = new Set([4]);
  const r = BitstreamReader.open(bytes);
  for (let e = r.next(); e.kind === 'block'; e = r.next()) boundaries.add(r.skipBlock(e).endBit / 8);
  assert.equal(boundaries.size, 5); // magic, then IDENTIFICATION, MODULE, SYMTAB, STRTAB blocks
  const t0 = performance.now();
  for (let n = 0; n < bytes.length; n++) {
    const prefix = bytes.subarray(0, n);
    assert.equal(readModuleTable(prefix).kind, 'invalid');
    if (boundaries.has(n)) walkAll(prefix);
    else assert.throws(() => walkAll(prefix), BitstreamError, `prefix ${n}`);
  }
  assert.ok(performance.now() - t0 < 10_000);
});

test('thousands of seeded mutations never throw and stay fast', () => {
  const fx = fixture();
  const index = fs.readFileSync(fx.index('main.o'));
  const object = fs.readFileSync(path.join(fx.dir, 'main.o'));
  const rand = prng(0x1badb002);
  const pick = (n: number) => Math.floor(rand() * n);
  const full = ok(index);
  let sameAsOriginal = 0;
  let invalidCount = 0;
  const t0 = performance.now();
  for (let i = 0; i < 4000; i++) {
    const src = i % 4 === 3 ? object : index;
    const m = Buffer.from(src);
    for (let k = 1 + pick(3); k > 0; k--) {
      const at = pick(m.length);
      if (rand() < 0.5) m[at]! ^= 1 << pick(8);
      else m[at] = pick(256);
    }
    const t = readModuleTable(m);
    if (t.kind === 'ok') {
      for (const e of t.modules) assert.match(e.hash, HEX40);
      if (src === index && JSON.stringify(t.modules) === JSON.stringify(full)) sameAsOriginal++;
    } else {
      invalidCount++;
      assert.match(t.reason, / at bit \d+$/, `mutation ${i}: ${t.reason}`);
    }
    // The generic reader, entering every block, may only fail with BitstreamError.
    try {
      walkAll(m);
    } catch (e) {
      if (!(e instanceof BitstreamError)) throw e;
    }
  }
  const elapsed = performance.now() - t0;
  assert.ok(elapsed < 20_000, `${elapsed} ms`);
  assert.ok(invalidCount > 100, `${invalidCount} invalid`);
  assert.ok(sameAsOriginal > 100, `${sameAsOriginal} unchanged tables`);
});

// ---------------------------------------------------------------------------------------------
// Renamed index digests (src/key/linkNames.ts): lld's DTLTO names an archive member's file after
// its PID, so two links write indexes that differ only in those names.

test('linkRenamer replaces only the PID of a name lld gives a serialised input', () => {
  const rename = linkRenamer('14338')!; // 0x3802
  assert.equal(rename('libab.a(a.o at 84).2.3802.o'), `libab.a(a.o at 84).2.${PID_PLACEHOLDER}.o`);
  assert.equal(rename('out/dir/x.o.17.3802.o'), `out/dir/x.o.17.${PID_PLACEHOLDER}.o`);
  for (const same of ['m.o', 'libab.a(a.o at 84).2.3803.o', 'x.3802.o', 'libab.a(a.o at 84).2.3802.o.o', 'a.2.3802.bc']) assert.equal(rename(same), same);
  assert.equal(linkRenamer('not-a-pid'), null);
  assert.ok(mentionsLink(Buffer.from('warning: in libab.a(a.o at 84).2.3802.o: x'), '14338'));
  assert.ok(mentionsLink(Buffer.from('prog.1.14338.native.o'), '14338'));
  assert.ok(!mentionsLink(Buffer.from('warning: stack frame size (14338) exceeds'), '14338'));
});

test('renamedIndexDigest: equal for indexes that differ only in renamed paths, of any length; content still counts', async () => {
  await initHash();
  const dir = tempDir('renamed');
  try {
    const src: Record<string, string> = {
      'main.c': 'int f(int); int g(int);\nint entry(int x) { return f(x) + g(x); }\n',
      'f.c': 'static int h(int x) { return x * 5; }\nint f(int x) { return h(x) + 1; }\n',
      'g.c': 'int g(int x) { return x ^ 9; }\n',
    };
    for (const [name, text] of Object.entries(src)) {
      fs.writeFileSync(path.join(dir, name), text);
      run(CLANG, ['-O2', '-flto=thin', '-c', name, '-o', name.replace(/\.c$/, '.o')], dir);
    }
    /** Links with f.o and g.o copied to lld-style member names under `pid`; returns main.o's index. */
    const link = (pid: string, fObj = 'f.o'): Buffer => {
      const sub = path.join(dir, `link-${pid}-${fObj}`);
      fs.mkdirSync(sub);
      const hex = BigInt(pid).toString(16).toUpperCase();
      const f = `lib.a(f.o at 8).2.${hex}.o`;
      const g = `lib.a(g.o at 1000).3.${hex}.o`;
      fs.copyFileSync(path.join(dir, 'main.o'), path.join(sub, 'main.o'));
      fs.copyFileSync(path.join(dir, fObj), path.join(sub, f));
      fs.copyFileSync(path.join(dir, 'g.o'), path.join(sub, g));
      run(LLD, ['-r', '--thinlto-index-only=list', 'main.o', f, g, '-o', '/dev/null'], sub);
      return fs.readFileSync(path.join(sub, 'main.o.thinlto.bc'));
    };
    const a = link('4711'); // 0x1267
    const b = link('1193046'); // 0x123456: every later byte moves
    assert.notDeepEqual(a, b);
    assert.ok(ok(a).some((m) => m.path.endsWith('.1267.o')));
    const da = renamedIndexDigest(a, linkRenamer('4711')!);
    const db = renamedIndexDigest(b, linkRenamer('1193046')!);
    assert.ok(da && DIGEST_RE.test(da));
    assert.equal(da, db);
    // Renamed under the wrong PID: nothing is renamed, and the names differ.
    assert.notEqual(renamedIndexDigest(a, linkRenamer('4712')!), db);
    // Another f.o (another module hash, other summaries): another digest.
    fs.writeFileSync(path.join(dir, 'f2.c'), 'static int h(int x) { return x * 6; }\nint f(int x) { return h(x) + 1; }\n');
    run(CLANG, ['-O2', '-flto=thin', '-c', 'f2.c', '-o', 'f2.o'], dir);
    assert.notEqual(renamedIndexDigest(link('4711', 'f2.o'), linkRenamer('4711')!), da);
    // A flipped bit after the module table, or before it, changes the digest.
    const parts = readIndexParts(a);
    assert.ok(parts.kind === 'ok');
    if (parts.kind !== 'ok') return;
    const after = Buffer.from(a);
    after[parts.moduleTableBits.end / 8 + 9]! ^= 0x10;
    assert.notEqual(renamedIndexDigest(after, linkRenamer('4711')!), da);
    const beforeTable = Buffer.from(a);
    beforeTable[Math.floor(parts.moduleTableBits.start / 8) - 1]! ^= 0x01;
    const d = renamedIndexDigest(beforeTable, linkRenamer('4711')!);
    assert.notEqual(d, da);
    // Not a content digest of the same bytes.
    assert.notEqual(
      renamedIndexDigest(a, (p) => p),
      hashBytes(a),
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
