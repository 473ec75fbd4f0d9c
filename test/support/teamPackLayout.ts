/**
 * Where things are in a team pack's bytes (cache-schema/teampack.v1.md), for tests that edit a
 * pack by hand (test/unit/teamPack.test.ts, test/e2e/packClient.test.ts).
 */
export const HEADER = 16;
export const MEMO_ENTRY = 44;
export const BLOB_ENTRY = 48;

export function packLayout(b: Buffer) {
  const nmemos = b.readUInt32LE(8);
  const nblobs = b.readUInt32LE(12);
  const blobIndex = HEADER + MEMO_ENTRY * nmemos;
  const find = (base: number, n: number, width: number, hex: string) => {
    for (let i = 0; i < n; i++) if (b.toString('latin1', base + width * i, base + width * i + 32) === hex) return i;
    throw new Error(`${hex} not in the index`);
  };
  /** Offset of the memo index entry of `lookup`. */
  const memoEntry = (lookup: string) => HEADER + MEMO_ENTRY * find(HEADER, nmemos, MEMO_ENTRY, lookup);
  /** Offset of the blob index entry of `digest`. */
  const blobEntry = (digest: string) => blobIndex + BLOB_ENTRY * find(blobIndex, nblobs, BLOB_ENTRY, digest);
  return {
    nmemos,
    nblobs,
    blobIndex,
    indexEnd: blobIndex + BLOB_ENTRY * nblobs,
    memoEntry,
    blobEntry,
    /** Offset and length of the record of `lookup`. */
    record: (lookup: string) => ({ offset: Number(b.readBigUInt64LE(memoEntry(lookup) + 32)), length: b.readUInt32LE(memoEntry(lookup) + 40) }),
    /** Offset of the bytes of the blob `digest`. */
    blobOffset: (digest: string) => Number(b.readBigUInt64LE(blobEntry(digest) + 32)),
  };
}

/** Flips bits of the byte at `at`. */
export function flipByte(b: Buffer, at: number, mask = 1): void {
  b[at] = b[at]! ^ mask;
}

/** Swaps the first two entries of an index of `width`-byte entries at `at` (putting it out of order). */
export function swapFirstEntries(b: Buffer, at: number, width: number): Buffer {
  const first = Buffer.from(b.subarray(at, at + width));
  b.copy(b, at, at + width, at + 2 * width);
  first.copy(b, at + width);
  return b;
}
