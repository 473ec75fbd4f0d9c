import assert from 'node:assert/strict';
import { test } from 'node:test';
import { hashBytes, initHash } from '../../src/key/hash.js';
import { encodeMemo, type Memo, MemoError } from '../../src/memo/memoFormat.js';
import { decodeTeamPack, encodeTeamPack, type PackBlob, type PackMemo, TEAM_PACK_MAGIC, teamPackPath } from '../../src/memo/teamPack.js';
import { TEAM_PACK_MAX_BLOBS, TEAM_PACK_MAX_MEMOS } from '../../src/protocol/limits.js';
import { retrail } from '../support/memoClient.js';
import { BLOB_ENTRY, flipByte, HEADER, MEMO_ENTRY, packLayout, swapFirstEntries } from '../support/teamPackLayout.js';

await initHash();

function blob(text: string): PackBlob {
  const bytes = Buffer.from(text);
  return { digest: hashBytes(bytes), bytes };
}

function memoFor(name: string, outputs: PackBlob[]): PackMemo {
  const memo: Memo = {
    key: hashBytes(`key ${name}`),
    checks: [{ kind: 'env', name: 'LTOCACHE_TEST', value: name }],
    outputs: outputs.map((b, i) => ({ path: `/out/${name}.${i}`, digest: b.digest, size: b.bytes.length })),
    stdout: Buffer.from(`stdout ${name}`),
    stderr: Buffer.alloc(0),
  };
  return { lookup: hashBytes(`lookup ${name}`), memo: encodeMemo(memo) };
}

/** Three memos, two of them sharing a blob. */
function sample(): { memos: PackMemo[]; blobs: PackBlob[] } {
  const shared = blob('shared object');
  const a = blob('object a');
  const c = blob('object c');
  return { memos: [memoFor('a', [a, shared]), memoFor('b', [shared]), memoFor('c', [c])], blobs: [a, shared, shared, c] };
}

function pack(memos: PackMemo[], blobs: PackBlob[]): Buffer {
  return Buffer.concat(encodeTeamPack(memos, blobs));
}

const rejects = (b: Buffer, what: string) => assert.throws(() => decodeTeamPack(b), MemoError, what);

test('round trip: every memo and blob, a shared blob stored once, input order irrelevant', () => {
  const { memos, blobs } = sample();
  const b = pack(memos, blobs);
  assert.deepEqual(b.subarray(0, 8), TEAM_PACK_MAGIC);
  assert.equal(b.readUInt32LE(8), 3);
  assert.equal(b.readUInt32LE(12), 3, 'the shared blob is indexed once');
  const { memos: m, blobs: bl } = decodeTeamPack(b);
  assert.deepEqual(new Map([...m].map(([k, v]) => [k, Buffer.from(v)])), new Map(memos.map((x) => [x.lookup, x.memo])));
  assert.deepEqual(new Map([...bl].map(([k, v]) => [k, Buffer.from(v)])), new Map(blobs.map((x) => [x.digest, x.bytes])));
  assert.deepEqual(pack([...memos].reverse(), [...blobs].reverse()), b);
  assert.equal(b.length, HEADER + 3 * MEMO_ENTRY + 3 * BLOB_ENTRY + memos.reduce((n, x) => n + 32 + x.memo.length, 0) + 'shared objectobject aobject c'.length);
});

test('an empty pack and a pack of memos only decode', () => {
  assert.deepEqual(decodeTeamPack(pack([], [])), { memos: new Map(), blobs: new Map() });
  const { memos } = sample();
  assert.equal(decodeTeamPack(pack(memos, [])).memos.size, 3);
});

test('teamPackPath is in the memo directory', () => {
  assert.equal(teamPackPath('/c'), '/c/memo/team.pack');
});

/** The layout of `b`, and the offset of the first memo index entry's record. */
function layout(b: Buffer) {
  return { ...packLayout(b), firstRecord: Number(b.readBigUInt64LE(HEADER + 32)) };
}

const edits: [string, (b: Buffer) => Buffer][] = [
  [
    'wrong magic',
    (b) => {
      b[7] = 2;
      return b;
    },
  ],
  ['truncated header', (b) => b.subarray(0, 12)],
  ['truncated index', (b) => b.subarray(0, HEADER + MEMO_ENTRY + 5)],
  ['truncated record', (b) => b.subarray(0, layout(b).indexEnd + 40)],
  ['truncated last blob', (b) => b.subarray(0, -1)],
  [
    'memo count over the limit',
    (b) => {
      b.writeUInt32LE(TEAM_PACK_MAX_MEMOS + 1, 8);
      return b;
    },
  ],
  [
    'blob count over the limit',
    (b) => {
      b.writeUInt32LE(TEAM_PACK_MAX_BLOBS + 1, 12);
      return b;
    },
  ],
  ['memo index out of order', (b) => swapFirstEntries(b, HEADER, MEMO_ENTRY)],
  ['blob index out of order', (b) => swapFirstEntries(b, layout(b).blobIndex, BLOB_ENTRY)],
  [
    'memo offset inside the indexes',
    (b) => {
      b.writeBigUInt64LE(BigInt(layout(b).indexEnd - 1), HEADER + 32);
      return b;
    },
  ],
  [
    'blob offset inside the indexes',
    (b) => {
      b.writeBigUInt64LE(0n, layout(b).blobIndex + 32);
      return b;
    },
  ],
  [
    'memo range past the end',
    (b) => {
      b.writeBigUInt64LE(BigInt(b.length - 40), HEADER + 32);
      return b;
    },
  ],
  [
    'blob size past the end',
    (b) => {
      b.writeBigUInt64LE(2n ** 64n - 1n, layout(b).blobIndex + 40);
      return b;
    },
  ],
  [
    'memo record length 32 (no memo)',
    (b) => {
      b.writeUInt32LE(32, HEADER + 40);
      return b;
    },
  ],
  [
    'record prefix names another lookup',
    (b) => {
      const at = layout(b).firstRecord;
      b[at] = b[at] === 0x30 ? 0x31 : 0x30;
      return b;
    },
  ],
  [
    'corrupt memo',
    (b) => {
      const at = layout(b).firstRecord + 32 + 20;
      flipByte(b, at);
      return b;
    },
  ],
  [
    'blob digest mismatch',
    (b) => {
      b[b.length - 1] = b[b.length - 1]! ^ 1;
      return b;
    },
  ],
  ['garbage after the magic', () => Buffer.from('LTOPACK\x01garbage garbage garbage')],
];

for (const [what, edit] of edits) {
  test(`decode rejects: ${what}`, () => {
    const { memos, blobs } = sample();
    const b = pack(memos, blobs);
    decodeTeamPack(b);
    rejects(edit(Buffer.from(b)), what);
  });
}

test('decode rejects a memo whose trailer is right but whose body is not a memo', () => {
  const { memos, blobs } = sample();
  const bad = { ...memos[0]!, memo: retrail(Buffer.from('LTOMEMO\x01 not a memo')) };
  rejects(pack([bad, ...memos.slice(1)], blobs), 'memo body');
});

test('encode rejects malformed digests, a lookup given twice and counts over the limits', () => {
  const { memos, blobs } = sample();
  assert.throws(() => encodeTeamPack([{ ...memos[0]!, lookup: 'A'.repeat(32) }], []), MemoError);
  assert.throws(() => encodeTeamPack([{ ...memos[0]!, lookup: 'ab' }], []), MemoError);
  assert.throws(() => encodeTeamPack([], [{ ...blobs[0]!, digest: `${blobs[0]!.digest}0` }]), MemoError);
  assert.throws(() => encodeTeamPack([memos[0]!, memos[0]!], []), MemoError);
  const many = Array.from({ length: TEAM_PACK_MAX_MEMOS + 1 }, (_, i) => ({ lookup: hashBytes(String(i)), memo: memos[0]!.memo }));
  assert.throws(() => encodeTeamPack(many, []), MemoError);
  const big = blobs[0]!.bytes;
  const tooMany = Array.from({ length: TEAM_PACK_MAX_BLOBS + 1 }, (_, i) => ({ digest: i.toString(16).padStart(32, '0'), bytes: big }));
  assert.throws(() => encodeTeamPack([], tooMany), MemoError);
  // At the limit is fine (shared blob bytes: the pieces reference one buffer).
  assert.equal(encodeTeamPack([], tooMany.slice(1)).length, 1 + TEAM_PACK_MAX_BLOBS);
});
