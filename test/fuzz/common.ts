/**
 * Shared harness of the fuzz suite (test/fuzz/*.test.ts and test/e2e/*Fuzz.test.ts; docs/reliability.md "## Fuzzing").
 *
 * Every property runs through `fuzz()`: fast-check's fc.assert with a fixed seed, a run count
 * and a time limit, so a CI run is deterministic and bounded in count AND time. The seed, the
 * runs actually made and the time taken are logged as test diagnostics; a failure message names
 * the seed and the shrunk counterexample, and how to replay it.
 *
 * Knobs (environment):
 *   LTOCACHE_FUZZ_SEED=<int>   use this seed for every property (default: each property's own)
 *   LTOCACHE_FUZZ_SCALE=<n>    multiply run counts and time limits by n (e.g. 20 for a soak)
 */
import type { TestContext } from 'node:test';
import fc from 'fast-check';

const envSeed = process.env.LTOCACHE_FUZZ_SEED;
const scaleText = process.env.LTOCACHE_FUZZ_SCALE;
export const SCALE = scaleText && Number(scaleText) > 0 ? Number(scaleText) : 1;

export interface FuzzOptions {
  /** Seed used unless LTOCACHE_FUZZ_SEED overrides it. */
  seed: number;
  numRuns: number;
  /** Wall-clock budget; the property stops (passing) when it runs out. */
  timeLimitMs: number;
}

export interface FuzzResult {
  runs: number;
  ms: number;
  interrupted: boolean;
}

/**
 * A run that is still in flight when the time limit interrupts fast-check is abandoned by it,
 * so its failure (typically: a hang caught by timedAsync) would go unreported. timedAsync
 * registers here; fuzz() waits for every registered promise and fails with any late error.
 */
const inflight = new Set<Promise<unknown>>();
const lateErrors: unknown[] = [];

/** Totals per test file, printed at exit for the docs table. */
const totals: { name: string; runs: number; ms: number }[] = [];
process.on('exit', () => {
  if (!process.env.LTOCACHE_FUZZ_REPORT) return;
  for (const t of totals) process.stderr.write(`fuzz-total\t${t.name}\t${t.runs}\t${t.ms}\n`);
});

/**
 * fc.assert with the suite's bounds. `prop` is an fc.property or fc.asyncProperty. Returns how
 * many runs were made; a failure throws with fast-check's report plus a replay hint.
 */
export async function fuzz<Ts>(t: TestContext | undefined, name: string, prop: fc.IProperty<Ts> | fc.IAsyncProperty<Ts>, o: FuzzOptions): Promise<FuzzResult> {
  const seed = envSeed !== undefined ? Number(envSeed) : o.seed;
  const numRuns = Math.max(1, Math.round(o.numRuns * SCALE));
  const interruptAfterTimeLimit = Math.round(o.timeLimitMs * SCALE);
  let details: fc.RunDetails<Ts> | undefined;
  const reporter = (d: fc.RunDetails<Ts>) => {
    details = d;
    if (d.failed) {
      const replay = `replay: LTOCACHE_FUZZ_SEED=${d.seed} node --test <this file> (path ${JSON.stringify(d.counterexamplePath)})`;
      const cause = d.errorInstance instanceof Error ? d.errorInstance.message : String(d.errorInstance);
      throw new Error(`${name}: ${fc.defaultReportMessage(d)}\nfailure: ${cause}\n${replay}`);
    }
  };
  const started = performance.now();
  const params = { seed, numRuns, interruptAfterTimeLimit, reporter, endOnFailure: false };
  lateErrors.length = 0;
  await fc.assert(prop as fc.IAsyncProperty<Ts>, params);
  await Promise.allSettled([...inflight]);
  if (lateErrors.length) {
    const e = lateErrors[0];
    throw new Error(`${name}: a run abandoned at the time limit failed (seed ${seed}): ${e instanceof Error ? e.message : String(e)}`);
  }
  const ms = Math.round(performance.now() - started);
  const runs = details?.numRuns ?? 0;
  const interrupted = details?.interrupted ?? false;
  t?.diagnostic(`${name}: ${runs} runs, seed ${seed}, ${ms} ms${interrupted ? ' (stopped by the time limit)' : ''}`);
  totals.push({ name, runs, ms });
  return { runs, ms, interrupted };
}

/** Runs fn and fails if it took longer than maxMs (a generous bound: catches super-linear work). */
export function timed<T>(what: string, maxMs: number, fn: () => T): T {
  const started = performance.now();
  const out = fn();
  const ms = performance.now() - started;
  if (ms > maxMs * SCALE_TIME) throw new Error(`${what} took ${ms.toFixed(1)} ms (bound ${maxMs} ms)`);
  return out;
}

/** Async variant of timed(); also turns a hang (2 × maxMs) into a failure, even in a run
 *  that fast-check abandoned at its time limit. */
export function timedAsync<T>(what: string, maxMs: number, fn: () => Promise<T>): Promise<T> {
  const p = (async () => {
    const started = performance.now();
    let timer: NodeJS.Timeout | undefined;
    const hang = new Promise<never>((_, rej) => {
      timer = setTimeout(() => rej(new Error(`${what} did not settle within ${maxMs * 2} ms`)), maxMs * 2 * SCALE_TIME);
    });
    try {
      const out = await Promise.race([fn(), hang]);
      const ms = performance.now() - started;
      if (ms > maxMs * SCALE_TIME) throw new Error(`${what} took ${ms.toFixed(1)} ms (bound ${maxMs} ms)`);
      return out;
    } finally {
      clearTimeout(timer);
    }
  })();
  inflight.add(p);
  p.then(
    () => inflight.delete(p),
    (e: unknown) => {
      inflight.delete(p);
      lateErrors.push(e);
    },
  );
  return p;
}

/** Time bounds stretch on slow machines (LTOCACHE_FUZZ_TIME_SCALE), never with SCALE. */
const SCALE_TIME = Number(process.env.LTOCACHE_FUZZ_TIME_SCALE ?? '1') || 1;

/** Asserts `fn` throws an instance of `cls`; any other exception is re-thrown (the bug we hunt). */
export function expectThrows(cls: abstract new (...a: never[]) => Error, fn: () => unknown): Error {
  try {
    fn();
  } catch (e) {
    if (e instanceof cls) return e;
    throw e;
  }
  throw new Error(`expected ${cls.name} to be thrown`);
}

/** Byte-level mutations shared by the binary decoders. */
export type Mutation =
  | { op: 'flip'; at: number; mask: number }
  | { op: 'set'; at: number; value: number }
  | { op: 'truncate'; at: number }
  | { op: 'insert'; at: number; bytes: Uint8Array }
  | { op: 'delete'; at: number; n: number }
  | { op: 'u32'; at: number; value: number }
  | { op: 'splice'; from: number; to: number; n: number };

/** Positions are fractions of the input length (0..1), so one arbitrary fits any input. */
export const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('flip' as const), at: fc.double({ min: 0, max: 1, noNaN: true }), mask: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ op: fc.constant('set' as const), at: fc.double({ min: 0, max: 1, noNaN: true }), value: fc.constantFrom(0, 1, 0x7f, 0x80, 0xff) }),
  fc.record({ op: fc.constant('truncate' as const), at: fc.double({ min: 0, max: 1, noNaN: true }) }),
  fc.record({ op: fc.constant('insert' as const), at: fc.double({ min: 0, max: 1, noNaN: true }), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
  fc.record({ op: fc.constant('delete' as const), at: fc.double({ min: 0, max: 1, noNaN: true }), n: fc.integer({ min: 1, max: 16 }) }),
  fc.record({
    op: fc.constant('u32' as const),
    at: fc.double({ min: 0, max: 1, noNaN: true }),
    value: fc.oneof(fc.constantFrom(0, 1, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff, 0x01000000, 0xffff), fc.nat({ max: 0xffffffff })),
  }),
  fc.record({
    op: fc.constant('splice' as const),
    from: fc.double({ min: 0, max: 1, noNaN: true }),
    to: fc.double({ min: 0, max: 1, noNaN: true }),
    n: fc.integer({ min: 1, max: 64 }),
  }),
);

function pos(frac: number, len: number): number {
  return Math.min(len, Math.floor(frac * len));
}

/** Applies a mutation; never throws (out-of-range positions clamp). */
export function mutate(input: Uint8Array, m: Mutation): Buffer {
  const b = Buffer.from(input);
  const len = b.length;
  switch (m.op) {
    case 'flip': {
      if (len === 0) return b;
      const at = Math.min(len - 1, pos(m.at, len));
      b[at] = b[at]! ^ m.mask;
      return b;
    }
    case 'set': {
      if (len === 0) return b;
      b[Math.min(len - 1, pos(m.at, len))] = m.value;
      return b;
    }
    case 'truncate':
      return b.subarray(0, pos(m.at, len));
    case 'insert': {
      const at = pos(m.at, len);
      return Buffer.concat([b.subarray(0, at), m.bytes, b.subarray(at)]);
    }
    case 'delete': {
      const at = pos(m.at, len);
      return Buffer.concat([b.subarray(0, at), b.subarray(at + m.n)]);
    }
    case 'u32': {
      if (len < 4) return b;
      // Aligned: most length fields of the formats fuzzed here sit on 4-byte boundaries.
      const at = Math.min(len - 4, pos(m.at, len)) & ~3;
      b.writeUInt32LE(m.value >>> 0, at);
      return b;
    }
    case 'splice': {
      // Copies a run of the input over another place in it (self-similar structure: nested
      // headers, repeated length words, an abbreviation referring to itself).
      const from = pos(m.from, len);
      const to = pos(m.to, len);
      const piece = Buffer.from(b.subarray(from, from + m.n));
      return Buffer.concat([b.subarray(0, to), piece, b.subarray(to + piece.length)]);
    }
  }
}

export function mutateAll(input: Uint8Array, ms: readonly Mutation[]): Buffer {
  let b: Buffer = Buffer.from(input);
  for (const m of ms) b = mutate(b, m);
  return b;
}
