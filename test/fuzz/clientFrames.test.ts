/**
 * Fuzz: the client ↔ daemon wire format (src/protocol/clientFrames.ts).
 *
 *  - FrameDecoder: any byte stream, cut into chunks anywhere, yields exactly the frames a
 *    one-shot reference parse of the whole stream yields (chunking never changes the result),
 *    fails exactly where the reference fails, and never buffers more than one frame.
 *  - decodeCompileRequest: arbitrary payloads, structured-but-hostile requests and byte-level
 *    mutations of valid ones are decoded exactly as an independent reference decoder (written
 *    from docs/protocol.md) says: the same request, or a ProtocolError; a decoded request
 *    re-encodes to the same bytes unless the environment had duplicate names (first wins);
 *    no other exception; bounded time.
 *  - decodeReply: the client's acceptance rules, same style.
 */

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  CompileRequest,
  decodeCompileRequest,
  decodeJson,
  decodeReply,
  encodeCompileRequest,
  encodeCompileYourself,
  encodeFrame,
  encodeJson,
  encodePassthrough,
  encodeResult,
  encodeStoreYourself,
  FrameDecoder,
  OPAQUE_ENV_PREFIX,
  ProtocolError,
} from '../../src/protocol/clientFrames.js';
import { expectThrows, fuzz, mutateAll, mutationArb, timed } from './common.js';
import { FRAME_REGRESSIONS, REQUEST_REGRESSIONS } from './regressions/clientFrames.js';

// ---------------------------------------------------------------------------------------------
// FrameDecoder

/** Reference: parse the whole stream at once. */
function refFrames(stream: Buffer, maxFrame: number): { frames: Buffer[]; error: boolean; pending: number } {
  const frames: Buffer[] = [];
  let at = 0;
  for (;;) {
    if (at === stream.length) return { frames, error: false, pending: 0 };
    if (stream.length - at < 4) return { frames, error: false, pending: stream.length - at };
    const size = stream.readUInt32LE(at);
    if (size === 0 || size > maxFrame) return { frames, error: true, pending: 0 };
    if (stream.length - at - 4 < size) return { frames, error: false, pending: stream.length - at };
    frames.push(stream.subarray(at + 4, at + 4 + size));
    at += 4 + size;
  }
}

function cutAt(stream: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => Math.floor(c * stream.length)))].sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let last = 0;
  for (const p of points) {
    chunks.push(stream.subarray(last, p)); // empty chunks included: push(empty) must be harmless
    last = p;
  }
  chunks.push(stream.subarray(last));
  return chunks;
}

/** Feeds the chunks, then end(); returns every frame delivered and the first error thrown. */
function feed(dec: FrameDecoder, chunks: Buffer[]): { frames: Buffer[]; error: ProtocolError | null } {
  const frames: Buffer[] = [];
  try {
    for (const c of chunks) {
      frames.push(...dec.push(c));
      assert.ok(dec.pending <= dec.maxFrame + 4, `pending ${dec.pending} above one frame`);
    }
    dec.end();
    return { frames, error: null };
  } catch (e) {
    if (!(e instanceof ProtocolError)) throw e;
    return { frames, error: e };
  }
}

const BAD_HEADER = /empty frame|exceeds the limit/;
const CUT_SHORT = /stream ended inside a frame/;

function assertMatchesReference(stream: Buffer, chunks: Buffer[], maxFrame: number): void {
  const ref = refFrames(stream, maxFrame);
  const dec = new FrameDecoder(maxFrame);
  const got = feed(dec, chunks);
  assert.deepEqual(
    got.frames.map((f) => f.toString('hex')),
    ref.frames.map((f) => f.toString('hex')),
    'frames delivered differ from a one-shot parse of the stream',
  );
  if (ref.error) {
    // The bad header itself is reported (not mistaken for a frame still arriving) ...
    assert.match(got.error?.message ?? '(no error)', BAD_HEADER);
    // ... and the decoder stays failed.
    expectThrows(ProtocolError, () => dec.push(Buffer.from([1, 0, 0, 0, 0x4a])));
    expectThrows(ProtocolError, () => dec.end());
  } else if (ref.pending > 0) {
    assert.match(got.error?.message ?? '(no error)', CUT_SHORT);
  } else {
    assert.equal(got.error, null, `unexpected failure: ${got.error?.message}`);
  }
}

const payloadArb = fc.uint8Array({ minLength: 1, maxLength: 96 }).map((a) => Buffer.from(a));
const cutsArb = fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 12 });

describe('fuzz: FrameDecoder', () => {
  test('valid frames, cut anywhere, come out whole and in order', async (t) => {
    await fuzz(
      t,
      'FrameDecoder valid stream',
      fc.property(fc.array(payloadArb, { maxLength: 8 }), cutsArb, fc.boolean(), (payloads, cuts, oneByte) => {
        const stream = Buffer.concat(payloads.map(encodeFrame));
        const chunks = oneByte ? [...stream].map((b) => Buffer.from([b])) : cutAt(stream, cuts);
        const dec = new FrameDecoder(96);
        const got = feed(dec, chunks);
        assert.equal(got.error, null);
        assert.deepEqual(got.frames, payloads);
      }),
      { seed: 0x5eed01, numRuns: 5000, timeLimitMs: 1_500 },
    );
  });

  test('valid frames then garbage: same frames and same failure for every chunking', async (t) => {
    await fuzz(
      t,
      'FrameDecoder frames+garbage',
      fc.property(
        fc.array(payloadArb, { maxLength: 5 }),
        fc.oneof(
          fc.uint8Array({ maxLength: 64 }),
          // headers that are exactly at the limits
          fc.constantFrom([0, 0, 0, 0], [96, 0, 0, 0], [97, 0, 0, 0], [255, 255, 255, 255], [1, 0, 0]).map((a) => Uint8Array.from(a)),
        ),
        fc.array(payloadArb, { maxLength: 3 }),
        cutsArb,
        cutsArb,
        (before, garbage, afterFrames, cutsA, cutsB) => {
          const stream = Buffer.concat([...before.map(encodeFrame), garbage, ...afterFrames.map(encodeFrame)]);
          // Two different chunkings plus the whole stream at once must all agree with the reference.
          assertMatchesReference(stream, cutAt(stream, cutsA), 96);
          assertMatchesReference(stream, cutAt(stream, cutsB), 96);
          assertMatchesReference(stream, [stream], 96);
        },
      ),
      { seed: 0x5eed02, numRuns: 5000, timeLimitMs: 2_000 },
    );
  });

  test('regressions', () => {
    for (const r of FRAME_REGRESSIONS) {
      const stream = Buffer.from(r.streamHex, 'hex');
      assertMatchesReference(stream, r.chunksAt.length ? cutAt(stream, r.chunksAt) : [stream], r.maxFrame);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// decodeCompileRequest

type RefReq = { ok: true; value: CompileRequest; canonical: boolean } | { ok: false; why: string };

/** Independent decoder from docs/protocol.md; strict UTF-8 by re-encoding. */
function refDecode(p: Buffer): RefReq {
  let at = 0;
  const bad = (why: string): RefReq => ({ ok: false, why });
  const u32 = (): number | null => {
    if (p.length - at < 4) return null;
    const v = p.readUInt32LE(at);
    at += 4;
    return v;
  };
  const str = (): string | null => {
    const n = u32();
    if (n === null || p.length - at < n) return null;
    const b = p.subarray(at, at + n);
    at += n;
    if (b.includes(0)) return null;
    const s = b.toString('utf8');
    return Buffer.from(s, 'utf8').equals(b) ? s : null;
  };
  if (p.length < 2 || p[0] !== 0x43) return bad('type/short');
  if (p[1] !== 2) return bad('version');
  at = 2;
  const flags = u32();
  if (flags === null || (flags & ~31) !== 0) return bad('flags');
  const umask = u32();
  if (umask === null || umask > 0o777) return bad('umask');
  const compiler = str();
  const cwd = str();
  if (compiler === null || cwd === null || !compiler.startsWith('/') || !cwd.startsWith('/')) return bad('paths');
  const argc = u32();
  if (argc === null) return bad('argc');
  const args: string[] = [];
  for (let i = 0; i < argc; i++) {
    const a = str();
    if (a === null) return bad('arg');
    args.push(a);
  }
  const envc = u32();
  if (envc === null) return bad('envc');
  const names: string[] = [];
  const env: Record<string, string> = {};
  /** Re-encoding gives other bytes: duplicate names, or an entry left out or carried opaque. */
  let lossy = false;
  const utf8 = (b: Buffer): string | null => {
    const s = b.toString('utf8');
    return Buffer.from(s, 'utf8').equals(b) ? s : null;
  };
  for (let i = 0; i < envc; i++) {
    const n = u32();
    if (n === null || p.length - at < n) return bad('env');
    const e = p.subarray(at, at + n);
    at += n;
    if (e.includes(0)) return bad('env');
    const eq = e.indexOf(0x3d);
    if (eq <= 0) return bad('env form');
    // A name that is not UTF-8 is left out; a value that is not is carried opaque (docs/protocol.md).
    const k = utf8(e.subarray(0, eq));
    if (k === null) {
      lossy = true;
      continue;
    }
    if (k === '__proto__') return bad('env __proto__');
    let v = utf8(e.subarray(eq + 1));
    if (v === null) {
      v = OPAQUE_ENV_PREFIX + e.subarray(eq + 1).toString('hex');
      lossy = true;
    }
    if (names.includes(k)) {
      lossy = true;
      continue;
    }
    names.push(k);
    Object.defineProperty(env, k, { value: v, enumerable: true, writable: true, configurable: true });
  }
  if (at !== p.length) return bad('trailing');
  return {
    ok: true,
    value: {
      version: 2,
      stderrTty: (flags & 1) !== 0,
      compilesOnMiss: (flags & 2) !== 0,
      storesOnMiss: (flags & 4) !== 0,
      compileOptions: (flags & 8) !== 0,
      redirectsOutput: (flags & 16) !== 0,
      umask,
      compiler,
      cwd,
      args,
      env,
    },
    canonical: !lossy,
  };
}

/** Plain-object view for deep comparison (env order is not part of a request's meaning). */
function view(r: CompileRequest): unknown {
  return { ...r, env: new Map(Object.entries(r.env)) };
}

/** Decodes `payload` and checks it against the reference. Returns the outcome kind. */
function checkPayload(payload: Buffer): 'ok' | 'rejected' {
  const ref = refDecode(payload);
  let got: CompileRequest | undefined;
  let err: unknown;
  timed('decodeCompileRequest', 200, () => {
    try {
      got = decodeCompileRequest(payload);
    } catch (e) {
      err = e;
    }
  });
  if (err !== undefined && !(err instanceof ProtocolError)) throw err; // never another exception
  if (!ref.ok) {
    assert.ok(err instanceof ProtocolError, `reference rejects (${ref.why}) but decode accepted ${JSON.stringify(got)}`);
    assert.ok((err as Error).message.length > 0);
    return 'rejected';
  }
  assert.equal(err, undefined, `reference accepts but decode threw: ${(err as Error | undefined)?.message}`);
  const value = got!;
  assert.ok(CompileRequest.safeParse(value).success, 'decoded request fails its own schema');
  assert.deepEqual(view(value), view(ref.value));
  const again = encodeCompileRequest(value);
  assert.equal(again.readUInt32LE(0), again.length - 4);
  if (ref.canonical) {
    // Same names once each: the bytes round-trip, up to the order of the environment entries
    // (a JS object lists integer-like names first; execve does not care about the order).
    const sameBytes = again.subarray(4).equals(payload);
    if (!sameBytes) {
      assert.deepEqual(view(decodeCompileRequest(again.subarray(4))), view(value));
      assert.equal(again.length - 4, payload.length, 're-encoding changed the size');
      assert.ok(
        Object.keys(value.env).some((k) => /^(0|[1-9]\d*)$/.test(k)),
        're-encoding differs without an env reorder',
      );
    }
  } else {
    assert.deepEqual(view(decodeCompileRequest(again.subarray(4))), view(value));
  }
  return 'ok';
}

/** Hostile-but-framed fields: valid strings, arbitrary bytes, NULs, overlong UTF-8, surrogates. */
const fieldArb: fc.Arbitrary<Buffer> = fc.oneof(
  { weight: 6, arbitrary: fc.string({ unit: 'binary', maxLength: 12 }).map((s) => Buffer.from(s, 'utf8')) },
  { weight: 2, arbitrary: fc.uint8Array({ maxLength: 12 }).map((a) => Buffer.from(a)) },
  {
    weight: 2,
    arbitrary: fc
      .constantFrom('\0', 'a\0b', '\xc0\x80', '\xed\xa0\x80', '\xef\xbb\xbf', '\xf4\x90\x80\x80', '\xe2\x82', '\xef\xbf\xbd', '\xff')
      .map((s) => Buffer.from(s, 'latin1')),
  },
);
const pathArb: fc.Arbitrary<Buffer> = fc.oneof({ weight: 5, arbitrary: fieldArb.map((b) => Buffer.concat([Buffer.from('/'), b])) }, { weight: 1, arbitrary: fieldArb });
const envEntryArb: fc.Arbitrary<Buffer> = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(fc.constantFrom('PATH', 'HOME', 'A', '0', '1', '10', 'x y', 'Ü'), fieldArb).map(([k, v]) => Buffer.concat([Buffer.from(`${k}=`), v])) },
  { weight: 1, arbitrary: fc.constantFrom('=x', 'NOEQ', '__proto__=1', 'constructor=1', '=', 'A==', 'A=\0').map((s) => Buffer.from(s)) },
  { weight: 1, arbitrary: fieldArb },
);

interface RawRequest {
  type: number;
  version: number;
  flags: number;
  umask: number;
  compiler: Buffer;
  cwd: Buffer;
  args: Buffer[];
  env: Buffer[];
}
const hostileRawRequestArb: fc.Arbitrary<RawRequest> = fc.record({
  type: fc.oneof({ weight: 9, arbitrary: fc.constant(0x43) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 255 }) }),
  version: fc.oneof({ weight: 9, arbitrary: fc.constant(2) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 255 }) }),
  flags: fc.oneof({ weight: 8, arbitrary: fc.constantFrom(0, 1) }, { weight: 1, arbitrary: fc.nat({ max: 0xffffffff }) }),
  umask: fc.oneof({ weight: 8, arbitrary: fc.integer({ min: 0, max: 0o777 }) }, { weight: 1, arbitrary: fc.nat({ max: 0xffffffff }) }),
  compiler: pathArb,
  cwd: pathArb,
  args: fc.array(fieldArb, { maxLength: 6 }),
  env: fc.array(envEntryArb, { maxLength: 6 }),
});

/** A valid request with at most one hostile field (so that most inputs reach the end). */
const oneHostileFieldArb: fc.Arbitrary<RawRequest> = fc
  .tuple(
    fc.record({
      compiler: fc.string({ maxLength: 10 }).map((s) => Buffer.from(`/${s.replaceAll('\0', '')}`)),
      cwd: fc.string({ maxLength: 10 }).map((s) => Buffer.from(`/${s.replaceAll('\0', '')}`)),
      args: fc.array(
        fc.string({ unit: 'binary', maxLength: 10 }).map((s) => Buffer.from(s.replaceAll('\0', ''))),
        { maxLength: 6 },
      ),
      env: fc.array(
        fc.tuple(fc.constantFrom('PATH', 'HOME', 'A', '0', '1', '10', 'x y', 'Ü'), fc.string({ maxLength: 8 })).map(([k, v]) => Buffer.from(`${k}=${v.replaceAll('\0', '')}`)),
        { maxLength: 6 },
      ),
      flags: fc.constantFrom(0, 1),
      umask: fc.integer({ min: 0, max: 0o777 }),
    }),
    fc.option(fc.tuple(fc.constantFrom('compiler', 'cwd', 'arg', 'env', 'flags', 'umask', 'version'), fieldArb, envEntryArb, fc.nat({ max: 0xffffffff })), { freq: 2 }),
  )
  .map(([r, hostile]) => {
    const out: RawRequest = { type: 0x43, version: 2, ...r };
    if (!hostile) return out;
    const [where, field, entry, n] = hostile;
    if (where === 'compiler') out.compiler = field;
    else if (where === 'cwd') out.cwd = field;
    else if (where === 'arg') out.args = [...out.args, field];
    else if (where === 'env') out.env = [...out.env, entry];
    else if (where === 'flags') out.flags = n;
    else if (where === 'umask') out.umask = n;
    else out.version = n & 0xff;
    return out;
  });

const rawRequestArb = fc.oneof(oneHostileFieldArb, hostileRawRequestArb);

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0, 0);
  return b;
}
function serialize(r: RawRequest): Buffer {
  const str = (b: Buffer) => Buffer.concat([u32(b.length), b]);
  return Buffer.concat([
    Buffer.from([r.type, r.version]),
    u32(r.flags),
    u32(r.umask),
    str(r.compiler),
    str(r.cwd),
    u32(r.args.length),
    ...r.args.map(str),
    u32(r.env.length),
    ...r.env.map(str),
  ]);
}

/** Schema-valid requests (the C client's view of the world). */
const validRequestArb: fc.Arbitrary<CompileRequest> = fc.record({
  version: fc.constant(2 as const),
  stderrTty: fc.boolean(),
  compilesOnMiss: fc.boolean(),
  storesOnMiss: fc.boolean(),
  compileOptions: fc.boolean(),
  redirectsOutput: fc.boolean(),
  umask: fc.integer({ min: 0, max: 0o777 }),
  compiler: fc.string({ unit: 'binary', maxLength: 20 }).map((s) => `/${s.replaceAll('\0', '')}`),
  cwd: fc.string({ unit: 'binary', maxLength: 20 }).map((s) => `/${s.replaceAll('\0', '')}`),
  args: fc.array(
    fc.string({ unit: 'binary', maxLength: 16 }).map((s) => s.replaceAll('\0', '')),
    { maxLength: 8 },
  ),
  env: fc.dictionary(
    fc.string({ unit: 'binary', minLength: 1, maxLength: 8 }).filter((k) => !k.includes('=') && !k.includes('\0') && k !== '__proto__'),
    fc.string({ unit: 'binary', maxLength: 12 }).map((s) => s.replaceAll('\0', '')),
    { maxKeys: 6 },
  ),
});

describe('fuzz: decodeCompileRequest', () => {
  test('valid requests round-trip exactly', async (t) => {
    await fuzz(
      t,
      'compile request round trip',
      fc.property(validRequestArb, (req) => {
        const frame = encodeCompileRequest(req);
        assert.equal(checkPayload(frame.subarray(4)), 'ok');
        assert.deepEqual(view(decodeCompileRequest(frame.subarray(4))), view(req));
      }),
      { seed: 0x5eed03, numRuns: 2000, timeLimitMs: 1_500 },
    );
  });

  test('arbitrary bytes: the reference decoder decides', async (t) => {
    await fuzz(
      t,
      'compile request arbitrary bytes',
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 128 }),
          fc.uint8Array({ maxLength: 128 }).map((a) => Uint8Array.from([0x43, 1, ...a])),
        ),
        (a) => void checkPayload(Buffer.from(a)),
      ),
      { seed: 0x5eed04, numRuns: 10000, timeLimitMs: 1_000 },
    );
  });

  test('hostile fields and mutated valid requests: the reference decoder decides', async (t) => {
    let accepted = 0;
    const r = await fuzz(
      t,
      'compile request hostile+mutated',
      fc.property(rawRequestArb, fc.oneof(fc.constant([]), fc.array(mutationArb, { minLength: 1, maxLength: 3 })), (raw, ms) => {
        if (checkPayload(mutateAll(serialize(raw), ms)) === 'ok') accepted++;
      }),
      { seed: 0x5eed05, numRuns: 20000, timeLimitMs: 3_000 },
    );
    t.diagnostic(`accepted ${accepted} of ${r.runs}`);
    // The generator must reach both sides of the decoder, or the property tests little.
    assert.ok(accepted > r.runs / 20, `only ${accepted} of ${r.runs} inputs were valid`);
  });

  test('huge counts and lengths are rejected in time linear in the payload', () => {
    const base = encodeCompileRequest({ version: 2, stderrTty: false, umask: 0o22, compiler: '/c', cwd: '/d', args: [], env: {} }).subarray(4);
    const argcAt = 1 + 1 + 4 + 4 + 4 + 2 + 4 + 2;
    for (const v of [0xffffffff, 0x40000000, 0x3fffffff, 0x80000000]) {
      const p = Buffer.from(base);
      p.writeUInt32LE(v, argcAt);
      expectThrows(ProtocolError, () => timed('huge argc', 20, () => decodeCompileRequest(p)));
      const q = Buffer.from(base);
      q.writeUInt32LE(v, 10); // compiler length
      expectThrows(ProtocolError, () => timed('huge length', 20, () => decodeCompileRequest(q)));
    }
    // A 4 MiB payload of the cheapest items (a million empty arguments) decodes in linear time:
    // well under the bound even on a loaded machine (a quadratic decoder would take minutes).
    const n = ((4 << 20) - base.length) >> 2;
    const many = Buffer.concat([base.subarray(0, argcAt), u32(n), Buffer.alloc(n * 4), u32(0)]);
    const ok = timed('1M empty arguments', 3000, () => decodeCompileRequest(many));
    assert.equal(ok.args.length, n);
  });

  test('regressions', () => {
    for (const hex of REQUEST_REGRESSIONS) checkPayload(Buffer.from(hex, 'hex'));
  });
});

// ---------------------------------------------------------------------------------------------
// decodeReply / decodeJson (what the client and the CLI accept from the daemon)

describe('fuzz: replies', () => {
  test('results and passthroughs round-trip; arbitrary bytes are a Reply or a ProtocolError', async (t) => {
    await fuzz(
      t,
      'reply round trip + garbage',
      fc.property(
        fc.integer({ min: 0, max: 255 }),
        fc.uint8Array({ maxLength: 40 }),
        fc.uint8Array({ maxLength: 40 }),
        fc.string({ maxLength: 30 }),
        fc.array(mutationArb, { maxLength: 3 }),
        fc.integer({ min: 0, max: 64 }),
        (exit, out, err, reason, ms, signal) => {
          const r = decodeReply(encodeResult({ exit, signal }, Buffer.from(out), Buffer.from(err)).subarray(4));
          assert.deepEqual(r, { kind: 'result', exit, signal, stdout: Buffer.from(out), stderr: Buffer.from(err) });
          const p = decodeReply(encodePassthrough(reason).subarray(4));
          assert.deepEqual(p, { kind: 'passthrough', reason: Buffer.from(reason, 'utf8').toString('utf8') });
          for (const frame of [encodeResult({ exit, signal }, Buffer.from(out), Buffer.from(err)), encodePassthrough(reason)]) {
            const m = mutateAll(frame.subarray(4), ms);
            let got: ReturnType<typeof decodeReply> | undefined;
            try {
              got = decodeReply(m);
            } catch (e) {
              if (!(e instanceof ProtocolError)) throw e;
              continue;
            }
            // Accepted: it re-encodes to the same bytes (the reply format has no slack).
            const again =
              got.kind === 'result'
                ? encodeResult(got, got.stdout, got.stderr)
                : got.kind === 'passthrough'
                  ? encodePassthrough(got.reason)
                  : got.kind === 'store-yourself'
                    ? encodeStoreYourself(got.memo)
                    : encodeCompileYourself();
            if (got.kind !== 'passthrough' || Buffer.from(got.reason, 'utf8').equals(m.subarray(5))) assert.ok(again.subarray(4).equals(m));
          }
        },
      ),
      { seed: 0x5eed06, numRuns: 3000, timeLimitMs: 1_000 },
    );
  });

  test('JSON frames: decodeJson returns what encodeJson got, or a ProtocolError', async (t) => {
    await fuzz(
      t,
      'json frames',
      fc.property(fc.jsonValue(), fc.array(mutationArb, { maxLength: 2 }), (v, ms) => {
        const frame = encodeJson(v);
        assert.deepEqual(decodeJson(frame.subarray(4)), JSON.parse(JSON.stringify(v)));
        const m = mutateAll(frame.subarray(4), ms);
        try {
          decodeJson(m);
        } catch (e) {
          if (!(e instanceof ProtocolError)) throw e;
        }
      }),
      { seed: 0x5eed07, numRuns: 1500, timeLimitMs: 1_000 },
    );
  });
});
