import { join } from 'node:path';
import { DIGEST_RE, type Digest, hashBytes } from '../key/hash.js';
import { MEMO_MAX_BYTES, TEAM_PACK_MAX_BLOBS, TEAM_PACK_MAX_MEMOS } from '../protocol/limits.js';
import { decodeMemo, MemoError, memoDir, Reader, Writer } from './memoFormat.js';

/**
 * The team pack (cache-schema/teampack.v1.md): many memos and their blobs in one file, so that a
 * machine's first build from the team cache creates one file instead of two per job. Encoded
 * here, read by client/pack.c; decodeTeamPack reads one whole, for tests.
 */

export const TEAM_PACK_MAGIC = Buffer.from('LTOPACK\x01', 'latin1');
const HEADER_BYTES = 16;
const MEMO_ENTRY_BYTES = 44;
const BLOB_ENTRY_BYTES = 48;
const HEX_BYTES = 32;

export interface PackMemo {
  lookup: Digest;
  /** A whole memo v1 file. */
  memo: Buffer;
}

export interface PackBlob {
  digest: Digest;
  bytes: Buffer;
}

export function teamPackPath(cacheDir: string): string {
  return join(memoDir(cacheDir), 'team.pack');
}

function byName<T>(name: (x: T) => string): (a: T, b: T) => number {
  return (a, b) => (name(a) < name(b) ? -1 : name(a) > name(b) ? 1 : 0);
}

/** The pack's bytes as pieces to write in order (header+indexes first). Sorts both lists; a blob
 *  digest given more than once is stored once; throws MemoError over a limit, for a malformed
 *  digest/lookup, or for a lookup given twice. */
export function encodeTeamPack(memos: readonly PackMemo[], blobs: readonly PackBlob[]): Buffer[] {
  for (const m of memos) if (!DIGEST_RE.test(m.lookup)) throw new MemoError(`not a lookup digest: ${m.lookup}`);
  for (const b of blobs) if (!DIGEST_RE.test(b.digest)) throw new MemoError(`not a blob digest: ${b.digest}`);
  const sortedMemos = [...memos].sort(byName((m) => m.lookup));
  const unique = new Map<Digest, PackBlob>();
  for (const b of blobs) if (!unique.has(b.digest)) unique.set(b.digest, b);
  const sortedBlobs = [...unique.values()].sort(byName((b) => b.digest));
  if (sortedMemos.length > TEAM_PACK_MAX_MEMOS) throw new MemoError(`${sortedMemos.length} memos in a pack, limit ${TEAM_PACK_MAX_MEMOS}`);
  if (sortedBlobs.length > TEAM_PACK_MAX_BLOBS) throw new MemoError(`${sortedBlobs.length} blobs in a pack, limit ${TEAM_PACK_MAX_BLOBS}`);

  const w = new Writer();
  w.raw(TEAM_PACK_MAGIC);
  w.u32(sortedMemos.length);
  w.u32(sortedBlobs.length);
  let at = HEADER_BYTES + MEMO_ENTRY_BYTES * sortedMemos.length + BLOB_ENTRY_BYTES * sortedBlobs.length;
  const pieces: Buffer[] = [];
  for (const [i, m] of sortedMemos.entries()) {
    if (i > 0 && sortedMemos[i - 1]!.lookup === m.lookup) throw new MemoError(`lookup ${m.lookup} twice in a pack`);
    if (m.memo.length > MEMO_MAX_BYTES) throw new MemoError(`memo of ${m.memo.length} bytes over the limit`);
    const length = HEX_BYTES + m.memo.length;
    w.hex(m.lookup);
    w.u64(at);
    w.u32(length);
    pieces.push(Buffer.from(m.lookup, 'latin1'), m.memo);
    at += length;
  }
  for (const b of sortedBlobs) {
    w.hex(b.digest);
    w.u64(at);
    w.u64(b.bytes.length);
    pieces.push(b.bytes);
    at += b.bytes.length;
  }
  return [w.done(), ...pieces];
}

/** Where an index entry's range lies, checked against the file: after the indexes, inside it. */
function range(offset: bigint, length: bigint, indexEnd: number, fileSize: number, what: string): [number, number] {
  if (offset < BigInt(indexEnd) || offset + length > BigInt(fileSize)) throw new MemoError(`${what}: range ${offset}+${length} outside ${indexEnd}..${fileSize}`);
  return [Number(offset), Number(offset + length)];
}

/** Every memo and blob of a pack (views into `b`); throws MemoError for anything that is not
 *  exactly a valid pack. */
export function decodeTeamPack(b: Buffer): { memos: Map<Digest, Buffer>; blobs: Map<Digest, Buffer> } {
  const r = new Reader(b);
  r.need(HEADER_BYTES);
  if (!b.subarray(0, TEAM_PACK_MAGIC.length).equals(TEAM_PACK_MAGIC)) throw new MemoError('not a team pack (magic or version)');
  r.at = TEAM_PACK_MAGIC.length;
  const nmemos = r.u32();
  const nblobs = r.u32();
  if (nmemos > TEAM_PACK_MAX_MEMOS || nblobs > TEAM_PACK_MAX_BLOBS) throw new MemoError(`${nmemos} memos, ${nblobs} blobs: over the limits`);
  const indexEnd = HEADER_BYTES + MEMO_ENTRY_BYTES * nmemos + BLOB_ENTRY_BYTES * nblobs;
  if (indexEnd > b.length) throw new MemoError(`indexes end at ${indexEnd}, past the file's ${b.length} bytes`);

  const memos = new Map<Digest, Buffer>();
  let last = '';
  for (let i = 0; i < nmemos; i++) {
    const lookup = r.hex();
    const offset = r.u64();
    const length = r.u32();
    if (lookup <= last) throw new MemoError(`memo index not strictly ascending at ${lookup}`);
    last = lookup;
    if (length <= HEX_BYTES || length > HEX_BYTES + MEMO_MAX_BYTES) throw new MemoError(`memo ${lookup}: record length ${length}`);
    const [start, end] = range(offset, BigInt(length), indexEnd, b.length, `memo ${lookup}`);
    if (b.toString('latin1', start, start + HEX_BYTES) !== lookup) throw new MemoError(`memo ${lookup}: record names another lookup`);
    const memo = b.subarray(start + HEX_BYTES, end);
    decodeMemo(memo);
    memos.set(lookup, memo);
  }
  const blobs = new Map<Digest, Buffer>();
  last = '';
  for (let i = 0; i < nblobs; i++) {
    const digest = r.hex();
    const offset = r.u64();
    const size = r.u64();
    if (digest <= last) throw new MemoError(`blob index not strictly ascending at ${digest}`);
    last = digest;
    const [start, end] = range(offset, size, indexEnd, b.length, `blob ${digest}`);
    const bytes = b.subarray(start, end);
    if (hashBytes(bytes) !== digest) throw new MemoError(`blob ${digest}: content digest mismatch`);
    blobs.set(digest, bytes);
  }
  return { memos, blobs };
}
