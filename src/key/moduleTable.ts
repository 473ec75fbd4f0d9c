import { errorMessage } from '../util/errorMessage.js';
import { BitstreamError, BitstreamReader } from './bitstream.js';
import { Hasher } from './hash.js';

/**
 * The module string table of a ThinLTO per-module index (`X.o.thinlto.bc`): the path and
 * module hash of X and of every module X imports from, in file order.
 *
 * Contract: never throws; any malformed input yields `{ kind: 'invalid' }` with a reason that
 * names a bit offset. Work is O(input size); blocks other than the module table are skipped
 * by their length words.
 */

export type ModuleEntry = {
  path: string;
  /** 40 hex digits: the five 32-bit words of the module hash, each as 8 big-endian hex digits.
   *  All zeros when the index has no HASH record for the module (built without a hash). */
  hash: string;
};
export type ModuleTable = { kind: 'ok'; modules: ModuleEntry[] } | { kind: 'invalid'; reason: string };

/** Absolute bit range in the input. */
export type BitRange = { start: number; end: number };
/** Absolute byte range of a block body (after its length word, to its end); `abbrevWidth` is
 *  the only header field the body's meaning depends on. */
export type BlockBody = { start: number; end: number; abbrevWidth: number };

export type IndexParts =
  | {
      kind: 'ok';
      modules: ModuleEntry[];
      /** The whole MODULE_STRTAB_BLOCK, from its ENTER_SUBBLOCK abbrev id to its end. */
      moduleTableBits: BitRange;
      /** Byte offsets of the length words of the blocks that enclose the module table: the only
       *  bytes outside it whose values follow from its length. */
      enclosingLengthWords: number[];
      /** The module table's records in order, when it holds only ENTRY and HASH records (module
       *  ids below 2^32) in an unwrapped bitstream; else null. */
      tableRecords: TableRecord[] | null;
      /** Bodies of the GLOBALVAL_SUMMARY_BLOCKs (the combined summary), in file order. */
      summaries: BlockBody[];
    }
  | { kind: 'invalid'; reason: string };

/** A module table record: `[ 'entry', module id, path ]` or `[ 'hash', 40 hex digits ]`. */
export type TableRecord = readonly ['entry', number, string] | readonly ['hash', string];

export const MODULE_BLOCK_ID = 8;
export const MODULE_STRTAB_BLOCK_ID = 19;
export const GLOBALVAL_SUMMARY_BLOCK_ID = 20;
const MST_CODE_ENTRY = 1;
const MST_CODE_HASH = 2;
const ZERO_HASH = '0'.repeat(40);

export function readModuleTable(bytes: Uint8Array): ModuleTable {
  const parts = readIndexParts(bytes);
  return parts.kind === 'ok' ? { kind: 'ok', modules: parts.modules } : parts;
}

/** The module table plus the locations of the other summary content, so that a caller can
 *  hash "the index without the module table". */
export function readIndexParts(bytes: Uint8Array): IndexParts {
  try {
    return parse(bytes);
  } catch (e) {
    if (e instanceof BitstreamError) return { kind: 'invalid', reason: e.message };
    return { kind: 'invalid', reason: `internal error: ${errorMessage(e)}` };
  }
}

function parse(bytes: Uint8Array): IndexParts {
  const r = BitstreamReader.open(bytes);
  let modules: ModuleEntry[] | undefined;
  let moduleTableBits: BitRange = { start: 0, end: 0 };
  let enclosingLengthWords: number[] = [];
  let tableRecords: TableRecord[] | null = null;
  const summaries: BlockBody[] = [];
  const open: number[] = [];
  for (;;) {
    const e = r.next();
    if (e.kind === 'eof') break;
    if (e.kind === 'end') {
      open.pop();
      continue;
    }
    if (e.kind === 'record') {
      r.skipRecord(e.abbrevId);
      continue;
    }
    // lld writes the table inside the top-level MODULE_BLOCK; a top-level one is accepted too.
    if (e.id === MODULE_STRTAB_BLOCK_ID) {
      if (modules) throw new BitstreamError('second MODULE_STRTAB_BLOCK', e.bit);
      const ext = r.enterBlock(e);
      const table = readStrtab(r);
      modules = table.modules;
      tableRecords = table.plain && r.bit === ext.endBit && !wrapped(bytes) ? table.records : null;
      moduleTableBits = { start: e.bit, end: ext.endBit };
      enclosingLengthWords = [...open];
    } else if (e.id === MODULE_BLOCK_ID && r.depth === 0) {
      open.push(r.enterBlock(e).bodyBit / 8 - 4);
    } else {
      const ext = r.skipBlock(e);
      if (e.id === GLOBALVAL_SUMMARY_BLOCK_ID) {
        summaries.push({ start: ext.bodyBit / 8, end: ext.endBit / 8, abbrevWidth: ext.abbrevWidth });
      }
    }
  }
  if (!modules) throw new BitstreamError('no MODULE_STRTAB_BLOCK in the input', r.bit);
  return { kind: 'ok', modules, moduleTableBits, enclosingLengthWords, tableRecords, summaries };
}

function wrapped(bytes: Uint8Array): boolean {
  return !(bytes[0] === 0x42 && bytes[1] === 0x43 && bytes[2] === 0xc0 && bytes[3] === 0xde);
}

/**
 * A digest of an index with its module paths renamed by `rename`, or null when the index is not
 * one this can be said of (unreadable, wrapped, a module table with records other than ENTRY and
 * HASH). Two indexes get the same digest exactly when they are byte for byte the same outside the
 * module table (the enclosing blocks' length words aside, which follow from the table's length)
 * and their tables list the same renamed paths with the same hashes in the same order. Distinct
 * from every content digest of the same bytes (another tag).
 */
export function renamedIndexDigest(bytes: Uint8Array, rename: (path: string) => string): string | null {
  const parts = readIndexParts(bytes);
  if (parts.kind !== 'ok' || !parts.tableRecords) return null;
  const { start, end } = parts.moduleTableBits;
  const head = Buffer.from(bytes.subarray(0, Math.ceil(start / 8)));
  if (start % 8) head[head.length - 1]! &= (1 << (start % 8)) - 1;
  for (const at of parts.enclosingLengthWords) head.fill(0, at, at + 4);
  const table = JSON.stringify(parts.tableRecords.map((t) => (t[0] === 'entry' ? [t[0], t[1], rename(t[2])] : t)));
  return new Hasher()
    .update(`ltocache-renamed-index-v1\0${head.length}\0${start}\0`)
    .update(head)
    .update(`\0${Buffer.byteLength(table)}\0${table}\0`)
    .update(bytes.subarray(end / 8))
    .digest();
}

/** Reads records up to the END_BLOCK of the entered MODULE_STRTAB_BLOCK. Unknown record codes
 *  are ignored, as LLVM does; `plain` is false when there were any, or a nested block. */
function readStrtab(r: BitstreamReader): { modules: ModuleEntry[]; records: TableRecord[]; plain: boolean } {
  const modules: ModuleEntry[] = [];
  const records: TableRecord[] = [];
  let plain = true;
  const seen = new Set<string>();
  let awaitingHash: ModuleEntry | undefined;
  for (;;) {
    const e = r.next();
    if (e.kind === 'end') return { modules, records, plain };
    if (e.kind === 'eof') throw new BitstreamError('unexpected end of stream in MODULE_STRTAB_BLOCK', r.bit);
    if (e.kind === 'block') {
      r.skipBlock(e);
      plain = false;
      continue;
    }
    const rec = r.readRecord(e.abbrevId);
    if (rec.code === MST_CODE_ENTRY) {
      // [modid, chars...]; summary records name modules by modid.
      if (rec.ops.length < 1) throw new BitstreamError('MST_CODE_ENTRY without a module id', e.bit);
      if (rec.ops[0]! > 0xffffffff) plain = false;
      const chars = rec.ops.slice(1);
      if (chars.some((c) => c > 0xff)) throw new BitstreamError('MST_CODE_ENTRY path character above 255', e.bit);
      const raw = Buffer.from(chars);
      const path = raw.toString('utf8');
      // A lossy decode would name a different file than the backend opens.
      if (!Buffer.from(path, 'utf8').equals(raw)) {
        throw new BitstreamError(`module path is not valid UTF-8: ${JSON.stringify(path)}`, e.bit);
      }
      if (seen.has(path)) throw new BitstreamError(`duplicate module path ${JSON.stringify(path)}`, e.bit);
      seen.add(path);
      awaitingHash = { path, hash: ZERO_HASH };
      modules.push(awaitingHash);
      records.push(['entry', rec.ops[0]!, path]);
    } else if (rec.code === MST_CODE_HASH) {
      if (!awaitingHash) throw new BitstreamError('MST_CODE_HASH without a preceding MST_CODE_ENTRY', e.bit);
      if (rec.ops.length !== 5) throw new BitstreamError(`MST_CODE_HASH with ${rec.ops.length} words, expected 5`, e.bit);
      if (rec.ops.some((w) => w > 0xffffffff)) throw new BitstreamError('MST_CODE_HASH word above 32 bits', e.bit);
      awaitingHash.hash = rec.ops.map((w) => w.toString(16).padStart(8, '0')).join('');
      records.push(['hash', awaitingHash.hash]);
      awaitingHash = undefined;
    } else {
      plain = false;
    }
  }
}
