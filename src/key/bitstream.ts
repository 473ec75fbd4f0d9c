/**
 * A small, defensive reader for the LLVM bitstream container format
 * (https://llvm.org/docs/BitCodeFormat.html).
 *
 * Contract: every malformed input makes a method throw BitstreamError (message ends with the
 * absolute bit offset in the input); no other exception is expected. Work is O(input size):
 * every read is bounded by the enclosing block's length word, nesting is capped, and a work
 * budget proportional to the input size covers the cases that consume no bits (literal
 * operands). Skipping a block costs O(1) regardless of its content.
 *
 * Operand values are JS numbers: exact up to 2^53, approximate above (64-bit GUIDs lose low
 * bits). Structural fields (block ids, widths, counts, lengths) are 32-bit as in LLVM.
 */

export const END_BLOCK = 0;
export const ENTER_SUBBLOCK = 1;
export const DEFINE_ABBREV = 2;
export const UNABBREV_RECORD = 3;
export const BLOCKINFO_BLOCK_ID = 0;
const BLOCKINFO_CODE_SETBID = 1;

/** 2^i for every shift a VBR read takes (V8 compiles a variable `2 ** i` to a `pow` call). */
const POW2: readonly number[] = Array.from({ length: 65 }, (_, i) => 2 ** i);

/** LLVM's BitstreamCursor::MaxChunkSize: the widest fixed field or VBR chunk it accepts. */
const MAX_CHUNK = 32;
const TOP_LEVEL_ABBREV_WIDTH = 2;
const WRAPPER_MAGIC = 0x0b17c0de;
const WRAPPER_HEADER_BYTES = 20;

export class BitstreamError extends Error {
  constructor(
    message: string,
    readonly bit: number,
  ) {
    super(`${message} at bit ${bit}`);
    this.name = 'BitstreamError';
  }
}

export type AbbrevOp = { kind: 'literal'; value: number } | { kind: 'fixed' | 'vbr'; width: number } | { kind: 'array' | 'char6' | 'blob' };
export type Abbrev = readonly AbbrevOp[];

export type Entry =
  /** ENTER_SUBBLOCK read up to the block id; call enterBlock() or skipBlock() next. */
  | { kind: 'block'; id: number; bit: number }
  /** END_BLOCK consumed; the reader is back in the parent block. */
  | { kind: 'end' }
  /** A record's abbrev id; call readRecord() or skipRecord() next. */
  | { kind: 'record'; abbrevId: number; bit: number }
  /** End of the stream, only at top level. */
  | { kind: 'eof' };

export type BitRecord = { code: number; ops: number[]; blob?: Uint8Array };

/** Absolute bit offsets in the input: header = the ENTER_SUBBLOCK abbrev id, body = after the
 *  length word (32-bit aligned), end = after the block's END_BLOCK padding (32-bit aligned).
 *  The body's meaning depends on `abbrevWidth` (and on BLOCKINFO abbrevs, if any). */
export type BlockExtent = { id: number; abbrevWidth: number; headerBit: number; bodyBit: number; endBit: number };

export type Limits = {
  /** Maximum block nesting depth that may be entered. */
  maxDepth: number;
  /** Work units (records, operands, abbrev operations) allowed per input bit. */
  workPerBit: number;
};
export const DEFAULT_LIMITS: Limits = { maxDepth: 64, workPerBit: 4 };

type Scope = {
  id: number;
  width: number;
  /** Abbrevs from BLOCKINFO for this block id, as of entry (ids 4 .. 4+info.length-1). */
  info: readonly Abbrev[];
  /** Abbrevs defined inside the block (ids after the BLOCKINFO ones). */
  local: Abbrev[];
  /** Bit offset (relative to the stream) where this block's body ends. */
  end: number;
};

const CHAR6 = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._';

export class BitstreamReader {
  private pos: number;
  /** Reused by readRecordText. */
  private scratch = Buffer.allocUnsafe(4096);
  private readonly scopes: Scope[];
  private blockInfo = new Map<number, Abbrev[]>();
  private work: number;

  /**
   * @param bytes the bitstream, starting at its 4-byte magic ('BC' 0xC0DE for LLVM IR)
   * @param base absolute bit offset of `bytes` in the original input, for messages and extents
   */
  private constructor(
    private readonly bytes: Uint8Array,
    private readonly base: number,
    private readonly limits: Limits,
  ) {
    this.pos = 32;
    const end = bytes.length * 8;
    this.scopes = [{ id: -1, width: TOP_LEVEL_ABBREV_WIDTH, info: [], local: [], end }];
    this.work = limits.workPerBit * end + 4096;
  }

  /** Checks the magic (unwrapping the bitcode wrapper header if present) and positions the
   *  reader at the first top-level entry. */
  static open(input: Uint8Array, limits: Limits = DEFAULT_LIMITS): BitstreamReader {
    let bytes = input;
    let base = 0;
    if (input.length >= 4 && u32le(input, 0) === WRAPPER_MAGIC) {
      if (input.length < WRAPPER_HEADER_BYTES) throw new BitstreamError('truncated bitcode wrapper header', 0);
      const offset = u32le(input, 8);
      const size = u32le(input, 12);
      if (offset < WRAPPER_HEADER_BYTES || offset + size > input.length) {
        const what = `bitcode wrapper offset ${offset} + size ${size} outside the ${input.length}-byte input`;
        throw new BitstreamError(what, 64);
      }
      bytes = input.subarray(offset, offset + size);
      base = offset * 8;
    }
    if (bytes.length < 4 || bytes[0] !== 0x42 || bytes[1] !== 0x43 || bytes[2] !== 0xc0 || bytes[3] !== 0xde) {
      throw new BitstreamError("not LLVM bitcode: missing 'BC' 0xC0DE magic", base);
    }
    if (bytes.length % 4 !== 0) {
      throw new BitstreamError(`bitcode size ${bytes.length} is not a multiple of 4 bytes`, base + bytes.length * 8);
    }
    return new BitstreamReader(bytes, base, limits);
  }

  /** Absolute bit offset of the next read. */
  get bit(): number {
    return this.base + this.pos;
  }
  /** Number of blocks currently entered (0 at top level). */
  get depth(): number {
    return this.scopes.length - 1;
  }
  /** Id of the innermost entered block, or -1 at top level. */
  get blockId(): number {
    return this.scope().id;
  }

  /** Reads the next entry. DEFINE_ABBREV and BLOCKINFO blocks are consumed internally. */
  next(): Entry {
    for (;;) {
      const scope = this.scope();
      if (this.scopes.length === 1 && this.pos === scope.end) return { kind: 'eof' };
      this.charge(1);
      const at = this.pos;
      const id = this.read(scope.width);
      if (this.scopes.length === 1 && id !== ENTER_SUBBLOCK) {
        const what = id === END_BLOCK ? 'END_BLOCK' : `abbrev id ${id}`;
        this.fail(`${what} at top level (only blocks may appear there)`, at);
      }
      switch (id) {
        case END_BLOCK:
          this.endBlock(at);
          return { kind: 'end' };
        case ENTER_SUBBLOCK: {
          const blockId = this.vbr(8, 32);
          if (blockId === BLOCKINFO_BLOCK_ID) {
            this.readBlockInfo(this.base + at);
            continue;
          }
          return { kind: 'block', id: blockId, bit: this.base + at };
        }
        case DEFINE_ABBREV:
          scope.local.push(this.readAbbrev());
          continue;
        default:
          return { kind: 'record', abbrevId: id, bit: this.base + at };
      }
    }
  }

  /** After a 'block' entry: enters it, so that next() returns its contents. */
  enterBlock(entry: { id: number; bit: number }): BlockExtent {
    if (this.scopes.length > this.limits.maxDepth) {
      this.fail(`block nesting deeper than ${this.limits.maxDepth}`, entry.bit - this.base);
    }
    const { width, body, end } = this.blockHeader();
    this.charge(1);
    this.scopes.push({ id: entry.id, width, info: this.blockInfo.get(entry.id) ?? [], local: [], end });
    this.pos = body;
    return { id: entry.id, abbrevWidth: width, headerBit: entry.bit, bodyBit: this.base + body, endBit: this.base + end };
  }

  /** After a 'block' entry: jumps past the block using its length word, in O(1). */
  skipBlock(entry: { id: number; bit: number }): BlockExtent {
    const { width, body, end } = this.blockHeader();
    this.pos = end;
    return { id: entry.id, abbrevWidth: width, headerBit: entry.bit, bodyBit: this.base + body, endBit: this.base + end };
  }

  /** Inside a block: jumps to its end using its length word, in O(1), back in the parent. */
  leaveBlock(): void {
    if (this.scopes.length === 1) this.fail('leaveBlock at top level');
    this.pos = this.scope().end;
    this.scopes.pop();
  }

  /** After a 'record' entry: decodes the record. */
  readRecord(abbrevId: number): BitRecord {
    if (abbrevId === UNABBREV_RECORD) {
      const code = this.vbr(6, 32);
      const n = this.count(this.vbr(6, 32), 6, 'operand count');
      this.charge(n + 1);
      const ops: number[] = new Array(n);
      for (let i = 0; i < n; i++) ops[i] = this.vbr6();
      return { code, ops };
    }
    const abbrev = this.abbrev(abbrevId);
    this.charge(abbrev.length);
    const ops: number[] = [];
    let blob: Uint8Array | undefined;
    for (let i = 0; i < abbrev.length; i++) {
      const op = abbrev[i]!;
      if (op.kind === 'array') {
        const elt = abbrev[++i]!; // readAbbrev guarantees the element op exists and is scalar
        const n = this.count(this.vbr(6, 32), minBits(elt), 'array length');
        this.charge(n);
        for (let k = 0; k < n; k++) ops.push(this.scalar(elt));
      } else if (op.kind === 'blob') {
        const { start, end } = this.blobBounds();
        blob = this.bytes.subarray(start / 8, start / 8 + (end - start) / 8);
      } else {
        ops.push(this.scalar(op));
      }
    }
    const code = ops.shift()!; // readAbbrev guarantees the first op is scalar
    return blob === undefined ? { code, ops } : { code, ops, blob };
  }

  /**
   * After a 'record' entry: decodes the record with each operand as one byte (values above 255
   * become 0), as latin1 text: a long string record (an inline asm string is one operand per
   * character) costs one string, not an array of numbers.
   */
  readRecordText(abbrevId: number): { code: number; text: string } {
    if (abbrevId !== UNABBREV_RECORD) {
      const rec = this.readRecord(abbrevId);
      return { code: rec.code, text: Buffer.from(rec.ops.map((v) => (v >= 0 && v < 256 ? v : 0))).toString('latin1') };
    }
    const code = this.vbr(6, 32);
    const n = this.count(this.vbr(6, 32), 6, 'operand count');
    this.charge(n + 1);
    if (this.scratch.length < n) this.scratch = Buffer.allocUnsafe(Math.max(n, this.scratch.length * 2));
    for (let i = 0; i < n; i++) {
      const v = this.vbr6();
      this.scratch[i] = v < 256 ? v : 0;
    }
    return { code, text: this.scratch.toString('latin1', 0, n) };
  }

  /** After a 'record' entry: its code, leaving the record to readRecord or skipRecord. */
  peekCode(abbrevId: number): number {
    const at = this.pos;
    try {
      // readAbbrev guarantees an abbreviation's first operand (the code) is scalar.
      return abbrevId === UNABBREV_RECORD ? this.vbr(6, 32) : this.scalar(this.abbrev(abbrevId)[0]!);
    } finally {
      this.pos = at;
    }
  }

  /** After a 'record' entry: moves past the record, decoding only what the skip needs. */
  skipRecord(abbrevId: number): void {
    if (abbrevId === UNABBREV_RECORD) {
      this.vbr(6, 32);
      const n = this.count(this.vbr(6, 32), 6, 'operand count');
      for (let i = 0; i < n; i++) this.vbr(6, 64);
      return;
    }
    const abbrev = this.abbrev(abbrevId);
    this.charge(abbrev.length);
    for (let i = 0; i < abbrev.length; i++) {
      const op = abbrev[i]!;
      if (op.kind === 'array') {
        const elt = abbrev[++i]!;
        const n = this.count(this.vbr(6, 32), minBits(elt), 'array length');
        if (elt.kind === 'vbr') for (let k = 0; k < n; k++) this.vbr(elt.width, 64);
        else this.advance(n * minBits(elt));
      } else if (op.kind === 'blob') {
        this.blobBounds();
      } else {
        this.scalar(op);
      }
    }
  }

  // --- internals -------------------------------------------------------------------------

  private scope(): Scope {
    return this.scopes[this.scopes.length - 1]!;
  }

  private fail(message: string, relBit: number = this.pos): never {
    throw new BitstreamError(message, this.base + relBit);
  }

  private charge(units: number): void {
    this.work -= units;
    if (this.work < 0) this.fail('work limit exceeded (too many records or operands for the input size)');
  }

  /** Reads the rest of an ENTER_SUBBLOCK header: [newabbrevlen vbr4, align32, blocklen u32]. */
  private blockHeader(): { width: number; body: number; end: number } {
    const width = this.vbr(4, 32);
    if (width < 1 || width > MAX_CHUNK) this.fail(`block abbrev width ${width} outside 1..${MAX_CHUNK}`);
    this.align32();
    const words = this.read(32);
    const body = this.pos;
    const end = body + words * 32;
    const limit = this.scope().end;
    if (end > limit) this.fail(`block length ${words} words runs ${end - limit} bits past the enclosing block`, body - 32);
    return { width, body, end };
  }

  /** After an END_BLOCK abbrev id read at `at`: the padding must end exactly where the
   *  block's length word said. */
  private endBlock(at: number): void {
    const scope = this.scope();
    this.align32();
    if (this.pos !== scope.end) {
      const want = this.base + scope.end;
      this.fail(`END_BLOCK of block ${scope.id} ends at bit ${this.base + this.pos}, its length word says ${want}`, at);
    }
    this.scopes.pop();
  }

  private readBlockInfo(headerBit: number): void {
    this.enterBlock({ id: BLOCKINFO_BLOCK_ID, bit: headerBit });
    const info = new Map<number, Abbrev[]>();
    let current: Abbrev[] | undefined;
    for (;;) {
      this.charge(1);
      const at = this.pos;
      const id = this.read(this.scope().width);
      if (id === END_BLOCK) {
        this.endBlock(at);
        this.blockInfo = info; // a later BLOCKINFO replaces an earlier one, as in LLVM's reader
        return;
      }
      if (id === ENTER_SUBBLOCK) {
        const blockId = this.vbr(8, 32);
        this.skipBlock({ id: blockId, bit: this.base + at });
      } else if (id === DEFINE_ABBREV) {
        if (!current) this.fail('DEFINE_ABBREV in BLOCKINFO before SETBID', at);
        current.push(this.readAbbrev());
      } else {
        const rec = this.readRecord(id);
        if (rec.code === BLOCKINFO_CODE_SETBID) {
          const bid = rec.ops[0];
          if (rec.ops.length < 1 || bid === undefined || bid > 0xffffffff) this.fail('malformed SETBID record', at);
          current = info.get(bid);
          if (!current) info.set(bid, (current = []));
        }
      }
    }
  }

  private readAbbrev(): Abbrev {
    const at = this.pos;
    const n = this.count(this.vbr(5, 32), 4, 'abbrev operand count');
    if (n === 0) this.fail('abbrev with no operands', at);
    this.charge(n);
    const ops: AbbrevOp[] = [];
    for (let i = 0; i < n; i++) {
      if (this.read(1) === 1) {
        ops.push({ kind: 'literal', value: this.vbr(8, 64) });
        continue;
      }
      const enc = this.read(3);
      if (enc === 1 || enc === 2) {
        const width = this.vbr(5, 32);
        if (width > MAX_CHUNK) this.fail(`abbrev field width ${width} above ${MAX_CHUNK}`);
        if (enc === 2 && width === 1) this.fail('VBR width 1 cannot encode a value');
        // LLVM turns zero-width fields into literal zeros.
        ops.push(width === 0 ? { kind: 'literal', value: 0 } : { kind: enc === 1 ? 'fixed' : 'vbr', width });
      } else if (enc === 3) ops.push({ kind: 'array' });
      else if (enc === 4) ops.push({ kind: 'char6' });
      else if (enc === 5) ops.push({ kind: 'blob' });
      else this.fail(`unknown abbrev operand encoding ${enc}`);
    }
    for (let i = 0; i < ops.length; i++) {
      const k = ops[i]!.kind;
      if ((k === 'array' || k === 'blob') && i === 0) this.fail('abbrev starts with an array or blob', at);
      if (k === 'array') {
        const e = ops[i + 1]?.kind;
        if (i !== ops.length - 2 || (e !== 'fixed' && e !== 'vbr' && e !== 'char6')) {
          this.fail('array must be second to last and followed by a fixed, vbr or char6 element', at);
        }
      }
      if (k === 'blob' && i !== ops.length - 1) this.fail('blob must be the last abbrev operand', at);
    }
    return ops;
  }

  private abbrev(abbrevId: number): Abbrev {
    const { info, local } = this.scope();
    const i = abbrevId - 4;
    const a = i < info.length ? info[i] : local[i - info.length];
    if (a === undefined) this.fail(`abbrev id ${abbrevId} not defined (${info.length + local.length} abbrevs in scope)`);
    return a;
  }

  private scalar(op: AbbrevOp): number {
    switch (op.kind) {
      case 'literal':
        return op.value;
      case 'fixed':
        return this.read(op.width);
      case 'vbr':
        return this.vbr(op.width, 64);
      case 'char6':
        return CHAR6.charCodeAt(this.read(6));
      default:
        return this.fail(`${op.kind} used as a scalar operand`);
    }
  }

  /** A count of items each at least `bits` wide must fit in the rest of the block. */
  private count(n: number, bits: number, what: string): number {
    const left = this.scope().end - this.pos;
    if (n > left || n * bits > left) this.fail(`${what} ${n} exceeds the ${left} bits left in the block`);
    return n;
  }

  /** Blob: [len vbr6, align32, len bytes, pad to 32 bits]; returns its byte-aligned bit range. */
  private blobBounds(): { start: number; end: number } {
    const n = this.vbr(6, 32);
    this.align32();
    const start = this.pos;
    const padded = Math.ceil(n / 4) * 32;
    if (padded > this.scope().end - start) this.fail(`blob of ${n} bytes runs past the end of the block`);
    this.pos = start + padded;
    return { start, end: start + n * 8 };
  }

  private advance(bits: number): void {
    if (bits > this.scope().end - this.pos) {
      const where = this.scopes.length === 1 ? 'the input' : `block ${this.scope().id}`;
      this.fail(`read past the end of ${where}`);
    }
    this.pos += bits;
  }

  private align32(): void {
    this.advance((32 - (this.pos % 32)) % 32);
  }

  /** Reads `n` (0..32) bits, least significant first. */
  private read(n: number): number {
    const start = this.pos;
    this.advance(n);
    if (n === 0) return 0;
    const b = this.bytes;
    const i = Math.floor(start / 8);
    const shift = start % 8;
    // Bytes past the end read as 0; advance() has already checked the bits we keep are inside.
    const word = ((b[i] ?? 0) | ((b[i + 1] ?? 0) << 8) | ((b[i + 2] ?? 0) << 16) | ((b[i + 3] ?? 0) << 24)) >>> 0;
    const low = word >>> shift;
    const lowBits = 32 - shift;
    if (n < lowBits) return (low & ((1 << n) - 1)) >>> 0;
    if (n === lowBits) return low;
    const high = (b[i + 4] ?? 0) & ((1 << (n - lowBits)) - 1);
    return low + high * POW2[lowBits]!;
  }

  /** vbr(6, 64) with integer arithmetic while the value fits 30 bits: unabbreviated operands (an
   *  inline asm string is one per character) are most of what a scan decodes. */
  private vbr6(): number {
    const start = this.pos;
    const end = this.scope().end;
    const b = this.bytes;
    let value = 0;
    for (let shift = 0; shift < 30; shift += 5) {
      const at = this.pos;
      if (at + 6 > end) break;
      const i = at >>> 3;
      const chunk = ((b[i]! | ((b[i + 1] ?? 0) << 8)) >>> (at & 7)) & 63;
      this.pos = at + 6;
      value |= (chunk & 31) << shift;
      if (chunk < 32) return value;
    }
    this.pos = start;
    return this.vbr(6, 64);
  }

  private vbr(width: number, maxBits: number): number {
    const start = this.pos;
    const hi = POW2[width - 1]!;
    // Most values fit one chunk.
    const first = this.read(width);
    if (first < hi) return first;
    this.pos = start;
    let value = 0;
    for (let shift = 0; ; shift += width - 1) {
      if (shift >= maxBits) this.fail(`unterminated VBR (more than ${maxBits} bits)`, start);
      const chunk = this.read(width);
      value += (chunk % hi) * POW2[shift]!;
      if (chunk < hi) break;
    }
    if (maxBits <= 32 && value > 0xffffffff) this.fail('VBR value exceeds 32 bits', start);
    return value;
  }
}

function minBits(op: AbbrevOp): number {
  return op.kind === 'fixed' || op.kind === 'vbr' ? op.width : op.kind === 'char6' ? 6 : 0;
}

function u32le(b: Uint8Array, at: number): number {
  return (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;
}
