/**
 * Fuzz: the team-cache wire contract (src/protocol/remote.ts).
 *
 *  - parseClientMessage / parseServerMessage on arbitrary strings, arbitrary JSON and values
 *    (fc.json, fc.anything → JSON.stringify) and on mutated valid messages (fields replaced by
 *    arbitrary values, deleted, added, swapped, type renamed, prototype-ish names, text-level
 *    edits): either a RemoteProtocolError naming the side, or a value that passes its zod
 *    schema, is made only of what the input said (no invented or transformed fields), and
 *    round-trips through JSON unchanged. Valid messages always parse to themselves.
 *  - decodeBinary on arbitrary buffers: RemoteProtocolError exactly when shorter than 4 bytes,
 *    otherwise encodeBinary(id, bundle) gives back the input.
 */

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { ClientMessage, decodeBinary, encodeBinary, parseClientMessage, parseServerMessage, RemoteProtocolError, ServerMessage } from '../../src/protocol/remote.js';
import { expectThrows, fuzz, mutateAll, mutationArb, timed } from './common.js';
import { REMOTE_REGRESSIONS } from './regressions/remote.js';

const hex = (n: number) => fc.string({ unit: fc.constantFrom(...'0123456789abcdef'), minLength: n, maxLength: n });
const keyArb = hex(32);
const idArb = fc.nat({ max: 0xffffffff });
const nameArb = fc.tuple(fc.constantFrom(...'abcXYZ019'), fc.string({ unit: fc.constantFrom(...'az09._-'), maxLength: 10 })).map(([a, b]) => a + b);
const entryArb = fc.record({
  v: fc.constant(1),
  outputs: fc.array(fc.record({ name: nameArb, digest: hex(32), size: fc.nat() }), { minLength: 1, maxLength: 4 }),
  stdout: fc.base64String({ maxLength: 40 }),
  stderr: fc.base64String({ maxLength: 40 }),
  exitCode: fc.constant(0),
  compileMs: fc.double({ min: 0, max: 1e9, noNaN: true }).map((x) => (x === 0 ? 0 : x)),
  createdAt: fc.nat(),
});
const clientMsgArb: fc.Arbitrary<Record<string, unknown>> = fc.oneof(
  fc.record({ type: fc.constant('hello'), protocol: fc.integer(), client: fc.string({ maxLength: 200 }) }),
  fc.record({ type: fc.constant('get'), id: idArb, key: keyArb }),
  fc.record({ type: fc.constant('put'), id: idArb, key: keyArb, entry: entryArb, bundleBytes: fc.nat() }),
  fc.record({ type: fc.constant('stats'), id: idArb }),
  fc.record({ type: fc.constant('ping'), id: idArb }),
  fc.record({ type: fc.constant('admin'), id: idArb, op: fc.constantFrom('reset-stats', 'clear') }),
  fc.record({ type: fc.constant('memo'), id: idArb, scope: keyArb, memo: fc.base64String({ minLength: 4, maxLength: 400 }) }),
  fc.record({ type: fc.constant('scope'), id: idArb, scope: keyArb }),
);
const positive = fc.integer({ min: 1, max: 2 ** 31 });
const statsArb = fc.record({
  entries: fc.integer(),
  bytes: fc.integer(),
  max_bytes: fc.integer(),
  hits: fc.integer(),
  misses: fc.integer(),
  puts: fc.integer(),
  puts_refused: fc.integer(),
  rejected_bundles: fc.integer(),
  bad_messages: fc.integer(),
  auth_failures: fc.integer(),
  connected_clients: fc.integer(),
  evictions: fc.integer(),
  bytes_served: fc.integer(),
  bytes_received: fc.integer(),
  memos_stored: fc.integer(),
  memos_served: fc.integer(),
  rejected_memos: fc.integer(),
  since: fc.string(),
});
const serverMsgArb: fc.Arbitrary<Record<string, unknown>> = fc.oneof(
  fc.record({
    type: fc.constant('welcome'),
    protocol: fc.integer(),
    scope: fc.constantFrom('read', 'write', 'admin'),
    limits: fc.record({ maxMessageBytes: positive, maxBundleBytes: positive, maxEntries: positive, maxStreams: positive, idleTimeoutMs: positive }),
  }),
  fc.record({ type: fc.constant('hit'), id: idArb, key: keyArb, entry: entryArb, bundleBytes: fc.nat() }),
  fc.record({ type: fc.constantFrom('miss', 'stored'), id: idArb, key: keyArb }),
  fc.record({ type: fc.constant('stats'), id: idArb, stats: statsArb }),
  fc.record({ type: fc.constantFrom('pong', 'ok'), id: idArb }),
  fc.record({ type: fc.constant('memos'), id: idArb, scope: keyArb, count: fc.nat({ max: 20_000 }), bundleBytes: fc.nat() }),
  fc.record(
    {
      type: fc.constant('error'),
      id: idArb,
      code: fc.constantFrom('version', 'bad-message', 'forbidden', 'bad-bundle', 'too-large', 'too-many-streams', 'unknown-id', 'internal', 'shutting-down'),
      message: fc.string(),
    },
    { requiredKeys: ['type', 'code', 'message'] },
  ),
);

/** Values a hostile peer would try in a field. */
const hostileValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }),
  fc.constantFrom(
    -1,
    -0,
    0.5,
    2 ** 32,
    2 ** 53,
    2 ** 53 + 2,
    1e308,
    0xffffffff,
    null,
    '',
    '0',
    [],
    {},
    true,
    '__proto__',
    'constructor',
    'toString',
    'hasOwnProperty',
    'hello',
    'put',
    'hit',
    'error',
    'A'.repeat(32),
    '0'.repeat(31),
    '0'.repeat(33),
    '../x',
    { __proto__: null },
  ),
);
const fieldName = fc.constantFrom(
  'type',
  'id',
  'key',
  'entry',
  'bundleBytes',
  'protocol',
  'client',
  'op',
  'scope',
  'limits',
  'stats',
  'code',
  'message',
  '__proto__',
  'constructor',
  'extra',
);

type ObjMutation = { op: 'set'; path: string[]; value: unknown } | { op: 'delete'; path: string[] } | { op: 'swap'; a: string; b: string };
const objMutationArb: fc.Arbitrary<ObjMutation> = fc.oneof(
  fc.record({ op: fc.constant('set' as const), path: fc.array(fieldName, { minLength: 1, maxLength: 1 }), value: hostileValue }),
  fc.record({
    op: fc.constant('set' as const),
    path: fc
      .tuple(fc.constantFrom('entry', 'limits', 'stats'), fc.constantFrom('v', 'outputs', 'stdout', 'exitCode', 'compileMs', 'maxEntries', 'hits', 'since'))
      .map((t) => [...t]),
    value: hostileValue,
  }),
  fc.record({ op: fc.constant('delete' as const), path: fc.array(fieldName, { minLength: 1, maxLength: 1 }) }),
  fc.record({ op: fc.constant('swap' as const), a: fieldName, b: fieldName }),
);

function applyObj(msg: Record<string, unknown>, ms: ObjMutation[]): Record<string, unknown> {
  const m = structuredClone(msg) as Record<string, unknown>;
  for (const x of ms) {
    if (x.op === 'swap') {
      const va = m[x.a];
      const vb = m[x.b];
      define(m, x.a, vb);
      define(m, x.b, va);
      continue;
    }
    let target: Record<string, unknown> = m;
    for (const p of x.path.slice(0, -1)) {
      const next = target[p];
      if (!next || typeof next !== 'object') {
        target = {};
        break;
      }
      target = next as Record<string, unknown>;
    }
    const last = x.path[x.path.length - 1]!;
    if (x.op === 'delete') delete target[last];
    else define(target, last, structuredClone(x.value));
  }
  return m;
}
/** Own data property even for '__proto__' (as JSON.parse would create). */
function define(o: Record<string, unknown>, k: string, v: unknown): void {
  Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
}

/** Every field of `out` is present in `input` with an equal value (zod may only drop fields). */
function isSubObject(out: unknown, input: unknown, path = '(root)'): void {
  if (out !== null && typeof out === 'object' && !Array.isArray(out)) {
    assert.ok(input !== null && typeof input === 'object' && !Array.isArray(input), `${path}: object from non-object`);
    for (const [k, v] of Object.entries(out)) {
      assert.ok(Object.hasOwn(input, k), `${path}.${k} invented`);
      isSubObject(v, (input as Record<string, unknown>)[k], `${path}.${k}`);
    }
  } else if (Array.isArray(out)) {
    assert.ok(Array.isArray(input) && input.length === out.length, `${path}: array changed`);
    for (const [i, v] of out.entries()) isSubObject(v, (input as unknown[])[i], `${path}[${i}]`);
  } else {
    assert.ok(Object.is(out, input), `${path}: ${String(out)} vs ${String(input)}`);
  }
}

type Side = { name: 'client' | 'server'; parse: (s: string) => unknown; schema: typeof ClientMessage | typeof ServerMessage };
const SIDES: Side[] = [
  { name: 'client', parse: parseClientMessage, schema: ClientMessage },
  { name: 'server', parse: parseServerMessage, schema: ServerMessage },
];

/** The property for one text on both sides. Returns how many sides accepted it. */
function checkText(text: string): number {
  let accepted = 0;
  for (const side of SIDES) {
    let out: unknown;
    try {
      out = timed(`parse ${side.name}`, 200, () => side.parse(text));
    } catch (e) {
      if (!(e instanceof RemoteProtocolError)) throw e;
      assert.ok(e.message.startsWith(`${side.name}: `), e.message);
      continue;
    }
    accepted++;
    const again = side.schema.safeParse(out);
    assert.ok(again.success, 'parsed value fails its schema');
    assert.deepEqual(again.data, out, 'parsed value carries fields its schema does not know');
    // A few invariants checked independently of the schema.
    const o = out as Record<string, unknown>;
    if ('id' in o && o.id !== undefined) assert.ok(Number.isInteger(o.id) && (o.id as number) >= 0 && (o.id as number) <= 0xffffffff, `id ${String(o.id)}`);
    if ('key' in o) assert.match(String(o.key), /^[0-9a-f]{32}$/);
    if ('bundleBytes' in o) assert.ok(Number.isSafeInteger(o.bundleBytes) && (o.bundleBytes as number) >= 0);
    isSubObject(out, JSON.parse(text));
    assert.deepEqual(side.parse(JSON.stringify(out)), out, 'not stable through JSON');
  }
  return accepted;
}

describe('fuzz: remote protocol messages', () => {
  test('valid messages parse to themselves', async (t) => {
    await fuzz(
      t,
      'remote valid round trip',
      fc.property(clientMsgArb, serverMsgArb, (c, s) => {
        // (via JSON: fc.record may build null-prototype objects)
        assert.deepEqual(parseClientMessage(JSON.stringify(c)), JSON.parse(JSON.stringify(c)));
        assert.deepEqual(parseServerMessage(JSON.stringify(s)), JSON.parse(JSON.stringify(s)));
        checkText(JSON.stringify(c));
        checkText(JSON.stringify(s));
      }),
      { seed: 0x7e0001, numRuns: 1500, timeLimitMs: 1_500 },
    );
  });

  test('arbitrary strings, JSON and values: schema-valid or RemoteProtocolError', async (t) => {
    await fuzz(
      t,
      'remote arbitrary text',
      fc.property(
        fc.oneof(
          fc.string({ unit: 'binary', maxLength: 60 }),
          fc.json({ maxDepth: 4 }),
          fc.anything({ maxDepth: 3 }).map((v) => JSON.stringify(v) ?? 'undefined'),
          fc.constantFrom(
            '[',
            '{'.repeat(1000),
            '['.repeat(2000),
            `{"type":"hello","protocol":1,"client":${'['.repeat(3000)}${']'.repeat(3000)}}`,
            '"\\ud800"',
            '1e999',
            '{"type":"__proto__"}',
            '{"type":"constructor","id":1}',
          ),
        ),
        (text) => void checkText(text),
      ),
      { seed: 0x7e0002, numRuns: 3000, timeLimitMs: 1_500 },
    );
  });

  test('mutated valid messages: schema-valid subsets or RemoteProtocolError', async (t) => {
    let accepted = 0;
    const r = await fuzz(
      t,
      'remote mutated messages',
      fc.property(fc.oneof(clientMsgArb, serverMsgArb), fc.array(objMutationArb, { minLength: 1, maxLength: 3 }), fc.array(mutationArb, { maxLength: 2 }), (msg, objMs, byteMs) => {
        const mutated = JSON.stringify(applyObj(msg, objMs));
        if (checkText(mutated) > 0) accepted++;
        // text-level edits on top (most make it non-JSON; some land in strings and numbers)
        const edited = mutateAll(Buffer.from(mutated, 'utf8'), byteMs).toString('utf8');
        checkText(edited);
      }),
      { seed: 0x7e0003, numRuns: 4000, timeLimitMs: 2_500 },
    );
    t.diagnostic(`accepted after mutation: ${accepted} of ${r.runs}`);
    assert.ok(accepted > r.runs / 20, 'mutations too destructive to test the accepting side');
  });

  test('decodeBinary: RemoteProtocolError below 4 bytes, else an exact split', async (t) => {
    await fuzz(
      t,
      'remote decodeBinary',
      fc.property(fc.uint8Array({ maxLength: 64 }), (a) => {
        const buf = Buffer.from(a);
        if (buf.length < 4) {
          expectThrows(RemoteProtocolError, () => decodeBinary(buf));
          return;
        }
        const { id, bundle } = decodeBinary(buf);
        assert.ok(Number.isInteger(id) && id >= 0 && id <= 0xffffffff);
        assert.ok(encodeBinary(id, bundle).equals(buf));
      }),
      { seed: 0x7e0004, numRuns: 2000, timeLimitMs: 500 },
    );
  });

  test('regressions', () => {
    for (const text of REMOTE_REGRESSIONS) checkText(text);
  });
});
