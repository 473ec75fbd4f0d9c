import { BitstreamError, BitstreamReader } from './bitstream.js';

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
      /** Bodies of the GLOBALVAL_SUMMARY_BLOCKs (the combined summary), in file order. */
      summaries: BlockBody[];
    }
  | { kind: 'invalid'; reason: string };

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
    return { kind: 'invalid', reason: `internal error: ${e instanceof Error ? e.message : String(e)}` };
  }
}

function parse(bytes: Uint8Array): IndexParts {
  const r = BitstreamReader.open(bytes);
  let modules: ModuleEntry[] | undefined;
  let moduleTableBits: BitRange = { start: 0, end: 0 };
  const summaries: BlockBody[] = [];
  for (;;) {
    const e = r.next();
    if (e.kind === 'eof') break;
    if (e.kind === 'end') continue;
    if (e.kind === 'record') {
      r.skipRecord(e.abbrevId);
      continue;
    }
    // lld writes the table inside the top-level MODULE_BLOCK; a top-level one is accepted too.
    if (e.id === MODULE_STRTAB_BLOCK_ID) {
      if (modules) throw new BitstreamError('second MODULE_STRTAB_BLOCK', e.bit);
      const ext = r.enterBlock(e);
      modules = readStrtab(r);
      moduleTableBits = { start: e.bit, end: ext.endBit };
    } else if (e.id === MODULE_BLOCK_ID && r.depth === 0) {
      r.enterBlock(e);
    } else {
      const ext = r.skipBlock(e);
      if (e.id === GLOBALVAL_SUMMARY_BLOCK_ID) {
        summaries.push({ start: ext.bodyBit / 8, end: ext.endBit / 8, abbrevWidth: ext.abbrevWidth });
      }
    }
  }
  if (!modules) throw new BitstreamError('no MODULE_STRTAB_BLOCK in the input', r.bit);
  return { kind: 'ok', modules, moduleTableBits, summaries };
}

/** Reads records up to the END_BLOCK of the entered MODULE_STRTAB_BLOCK. Unknown record codes
 *  are ignored, as LLVM does. */
function readStrtab(r: BitstreamReader): ModuleEntry[] {
  const modules: ModuleEntry[] = [];
  const seen = new Set<string>();
  let awaitingHash: ModuleEntry | undefined;
  for (;;) {
    const e = r.next();
    if (e.kind === 'end') return modules;
    if (e.kind === 'eof') throw new BitstreamError('unexpected end of stream in MODULE_STRTAB_BLOCK', r.bit);
    if (e.kind === 'block') {
      r.skipBlock(e);
      continue;
    }
    const rec = r.readRecord(e.abbrevId);
    if (rec.code === MST_CODE_ENTRY) {
      // [modid, chars...]; modid is unused by LLVM 19's reader.
      if (rec.ops.length < 1) throw new BitstreamError('MST_CODE_ENTRY without a module id', e.bit);
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
    } else if (rec.code === MST_CODE_HASH) {
      if (!awaitingHash) throw new BitstreamError('MST_CODE_HASH without a preceding MST_CODE_ENTRY', e.bit);
      if (rec.ops.length !== 5) throw new BitstreamError(`MST_CODE_HASH with ${rec.ops.length} words, expected 5`, e.bit);
      if (rec.ops.some((w) => w > 0xffffffff)) throw new BitstreamError('MST_CODE_HASH word above 32 bits', e.bit);
      awaitingHash.hash = rec.ops.map((w) => w.toString(16).padStart(8, '0')).join('');
      awaitingHash = undefined;
    }
  }
}
