/**
 * Fuzz: the real daemon over its Unix socket.
 *
 * A few hundred connections each carry one hostile byte stream (random bytes, bad length
 * headers, frames of unknown types, mutated compile requests, malformed JSON control frames,
 * a valid frame followed by garbage, a stream cut inside a frame), written in arbitrary chunks.
 * Per connection, the daemon's answer must be what a model of the protocol predicts:
 *   - a framing error or an unknown frame type: the connection is closed, nothing is sent;
 *   - a 'C' frame: exactly one well-formed reply ('P' or 'R'), then close;
 *   - a 'J' frame: exactly one well-formed JSON control reply, then close;
 *   - an incomplete frame: nothing (the client gives up).
 * Afterwards the same daemon process (same pid) still answers `stats`, its protocol error
 * counter rose by exactly the number of protocol violations sent, nothing was counted as an
 * internal error, and it still serves a real distributed-ThinLTO backend job correctly (a miss,
 * then a hit, both byte-identical to direct clang).
 */

import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { askDaemon } from '../../src/cli/controlClient.js';
import { ThinBuild } from '../../src/demo/thinBuild.js';
import {
  type CompileRequest,
  DEFAULT_MAX_FRAME,
  decodeCompileRequest,
  decodeDistributeRequest,
  decodeJson,
  decodeReply,
  encodeCompileRequest,
  encodeDistributeRequest,
  encodeFrame,
  encodeJson,
  FrameDecoder,
  ProtocolError,
  socketPathFor,
} from '../../src/protocol/clientFrames.js';
import { ControlResponse } from '../../src/protocol/control.js';
import type { StatsView } from '../../src/stats/counters.js';
import { fuzz, mutateAll, mutationArb } from '../fuzz/common.js';
import { DAEMON_REGRESSIONS } from '../fuzz/regressions/daemon.js';
import { CacheEnv, CLIENT, FIXTURE, tempDir } from '../support/env.js';

const DAEMON_MAX_FRAME = 16 << 20;

type Expect = 'closed' | 'reply-C' | 'reply-J' | 'nothing';

/** What the daemon must do with this byte stream, and whether it counts a protocol error. */
function model(stream: Buffer): { expect: Expect; protocolError: boolean } {
  if (stream.length < 4) return { expect: 'nothing', protocolError: false };
  const size = stream.readUInt32LE(0);
  if (size === 0 || size > DAEMON_MAX_FRAME) return { expect: 'closed', protocolError: true };
  if (stream.length - 4 < size) return { expect: 'nothing', protocolError: false };
  const frame = stream.subarray(4, 4 + size);
  if (frame[0] === 0x43) {
    try {
      decodeCompileRequest(frame);
      return { expect: 'reply-C', protocolError: false };
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      return { expect: 'reply-C', protocolError: true };
    }
  }
  if (frame[0] === 0x54) {
    // A 'T' (distribution) request is decoded like a 'C' one; a malformed one is answered 'P'.
    try {
      decodeDistributeRequest(frame);
      return { expect: 'reply-C', protocolError: false };
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      return { expect: 'reply-C', protocolError: true };
    }
  }
  if (frame[0] === 0x4a) {
    // A 'J' frame that is not JSON is a protocol violation; JSON of the wrong shape is a
    // well-formed request the daemon answers with an error.
    try {
      decodeJson(frame);
      return { expect: 'reply-J', protocolError: false };
    } catch {
      return { expect: 'reply-J', protocolError: true };
    }
  }
  return { expect: 'closed', protocolError: true };
}

/** Control requests that change daemon state are not sent: the fuzzer must not stop it. */
function harmless(stream: Buffer): boolean {
  if (stream.length < 5 || stream[4] !== 0x4a) return true;
  const size = stream.readUInt32LE(0);
  try {
    const v = decodeJson(stream.subarray(4, 4 + size)) as { op?: unknown } | null;
    return !(v && typeof v === 'object' && ['stop', 'zero', 'clear'].includes(String(v.op)));
  } catch {
    return true;
  }
}

interface Exchange {
  reply: Buffer;
  closedByDaemon: boolean;
}

/** One connection: write the chunks, then wait for the daemon to close it (or give up). */
function exchange(socket: string, chunks: Buffer[], waitMs: number): Promise<Exchange> {
  return new Promise((resolve, reject) => {
    const sock = connect(socket);
    const got: Buffer[] = [];
    let done = false;
    const finish = (closedByDaemon: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      resolve({ reply: Buffer.concat(got), closedByDaemon });
    };
    const timer = setTimeout(() => finish(false), waitMs);
    sock.on('data', (c: Buffer) => got.push(c));
    sock.on('error', (e: NodeJS.ErrnoException) => {
      // The daemon may reset a connection it rejected while we are still writing.
      if (e.code === 'EPIPE' || e.code === 'ECONNRESET') return finish(true);
      if (!done) {
        done = true;
        clearTimeout(timer);
        reject(e);
      }
    });
    sock.on('close', () => finish(true));
    sock.on('connect', () => {
      for (const c of chunks) if (c.length) sock.write(c);
    });
  });
}

function cutAt(stream: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => Math.floor(c * stream.length)))].sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let last = 0;
  for (const p of points) {
    chunks.push(stream.subarray(last, p));
    last = p;
  }
  chunks.push(stream.subarray(last));
  return chunks;
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0, 0);
  return b;
}

describe('fuzz: the daemon over its socket', () => {
  let cache: CacheEnv;
  let work: string;
  let b: ThinBuild;

  before(() => {
    cache = new CacheEnv('fuzz-daemon');
    cache.start();
    work = tempDir('fuzz-daemon-work');
    mkdirSync(join(work, 'sub'));
    writeFileSync(join(work, 'x.c'), 'int x;\n');
    writeFileSync(join(work, 'm.o'), 'not bitcode');
    writeFileSync(join(work, 'm.o.thinlto.bc'), 'not an index');
    writeFileSync(join(work, 'args.rsp'), '-x ir -c\n');
    b = ThinBuild.fromFixture(FIXTURE, join(tempDir('fuzz-daemon-tree'), 'src'));
    b.frontEnd();
    b.thinLink();
  });
  after(() => {
    cache.destroy();
    rmSync(work, { recursive: true, force: true });
    rmSync(join(b.dir, '..'), { recursive: true, force: true });
  });

  test("an unknown flag bit is refused with the reason a client retries on ('malformed request: unknown flag bits')", async () => {
    const socket = socketPathFor(cache.dir, process.getuid!());
    const frame = encodeCompileRequest({
      version: 2,
      stderrTty: false,
      compilesOnMiss: true,
      storesOnMiss: true,
      umask: 0o22,
      compiler: '/usr/bin/true',
      cwd: work,
      args: ['-x', 'ir'],
      env: {},
    });
    frame.writeUInt32LE(frame.readUInt32LE(6) | 0x80, 6);
    const x = await exchange(socket, [frame], 10_000);
    const reply = decodeReply(new FrameDecoder(DEFAULT_MAX_FRAME).push(x.reply)[0]!);
    assert.equal(reply.kind, 'passthrough');
    assert.match(reply.kind === 'passthrough' ? reply.reason : '', /^malformed request: unknown flag bits 0x86$/);
  });

  test('regressions: streams that once misbehaved', async () => {
    const socket = socketPathFor(cache.dir, process.getuid!());
    for (const r of DAEMON_REGRESSIONS) {
      const s0 = await askDaemon(cache.dir, { op: 'stats' }, 10_000);
      const x = await exchange(socket, [Buffer.from(r.streamHex, 'hex')], 10_000);
      assert.ok(x.closedByDaemon, r.name);
      const dec = new FrameDecoder(DEFAULT_MAX_FRAME);
      const frames = dec.push(x.reply);
      assert.equal(frames.length, 1, `${r.name}: one reply frame`);
      if (r.reply === 'C') decodeReply(frames[0]!);
      else {
        const reply = ControlResponse.parse(decodeJson(frames[0]!));
        assert.equal(reply.ok, r.reply === 'J-ok', `${r.name}: ${JSON.stringify(reply)}`);
      }
      const s1 = await askDaemon(cache.dir, { op: 'stats' }, 10_000);
      const errs = (s: typeof s0) => (s as { result: StatsView }).result.errors_by_kind;
      assert.equal((errs(s1).protocol ?? 0) - (errs(s0).protocol ?? 0), r.protocolErrors, `${r.name}: protocol errors`);
      assert.equal((errs(s1).internal ?? 0) - (errs(s0).internal ?? 0), 0, `${r.name}: internal errors`);
    }
  });

  test('hostile connections: modelled answers, exact protocol error count, still serves a real job', async (t) => {
    const socket = socketPathFor(cache.dir, process.getuid!());
    const pid = cache.daemonPid();
    assert.ok(pid && pid > 0);
    const before = cache.stats();

    // Base requests: never runnable (the compiler does not exist), so a mutation that stays
    // valid is answered with a passthrough or a result, never by compiling something.
    const req = (args: string[], env: Record<string, string> = { PATH: '/usr/bin:/bin' }): CompileRequest => ({
      version: 2,
      stderrTty: false,
      compilesOnMiss: false,
      storesOnMiss: false,
      compileOptions: false,
      redirectsOutput: false,
      umask: 0o022,
      compiler: '/nonexistent/ltocache-fuzz/clang-19',
      cwd: work,
      args,
      env,
    });
    const bases = [
      req(['-c', 'x.c', '-o', 'x.o']),
      req(['-O2', '-x', 'ir', '-fno-lto', '-fthinlto-index=m.o.thinlto.bc', '-c', '-o', 'm.native.o', 'm.o']),
      req(['@args.rsp', '-fthinlto-index=m.o.thinlto.bc', '-o', 'sub/m.native.o', 'm.o'], { A: '1', PATH: '/bin' }),
      req([]),
    ]
      .map((r) => encodeCompileRequest(r))
      // A distribution request naming no file: refused with an 'R', mutated into a 'P'.
      .concat(encodeDistributeRequest({ ...req(['/nonexistent/ltocache-fuzz/prog.dist-file.json']), compiler: 'distribute' }));
    const controls = [{ op: 'stats' }, { op: 'status' }, { op: 'explain', path: '/nonexistent/x.o' }, { op: 'builds', limit: 3 }, { op: 'last-build' }].map((c) => encodeJson(c));

    const streamArb: fc.Arbitrary<Buffer> = fc.oneof(
      // random bytes
      fc.uint8Array({ minLength: 1, maxLength: 64 }).map((a) => Buffer.from(a)),
      // a well-framed payload of any type
      fc.uint8Array({ minLength: 1, maxLength: 64 }).map((a) => encodeFrame(Buffer.from(a))),
      // bad length headers
      fc.constantFrom(0, DAEMON_MAX_FRAME + 1, 0x7fffffff, 0xffffffff).map((n) => Buffer.concat([u32(n), Buffer.from('CJ')])),
      // mutated compile requests
      fc.tuple(fc.constantFrom(...bases), fc.array(mutationArb, { minLength: 1, maxLength: 3 })).map(([f, ms]) => mutateAll(f, ms)),
      // compile requests with a mutated payload but a consistent length prefix
      fc.tuple(fc.constantFrom(...bases), fc.array(mutationArb, { minLength: 1, maxLength: 3 })).map(([f, ms]) => {
        const p = mutateAll(f.subarray(4), ms);
        return p.length ? encodeFrame(p) : u32(0);
      }),
      // JSON control frames: arbitrary JSON, mutated valid requests, invalid UTF-8
      fc.jsonValue({ maxDepth: 3 }).map((v) => encodeJson(v)),
      fc.tuple(fc.constantFrom(...controls), fc.array(mutationArb, { minLength: 1, maxLength: 2 })).map(([f, ms]) => {
        const p = mutateAll(f.subarray(4), ms);
        return p.length ? encodeFrame(p) : u32(0);
      }),
      fc.uint8Array({ maxLength: 16 }).map((a) => encodeFrame(Buffer.concat([Buffer.from([0x4a, 0xff, 0xfe]), a]))),
      // a valid frame followed by garbage in the same write
      fc.tuple(fc.constantFrom(...bases, ...controls), fc.uint8Array({ minLength: 1, maxLength: 16 })).map(([f, g]) => Buffer.concat([f, g])),
      // cut inside a frame
      fc.tuple(fc.constantFrom(...bases, ...controls), fc.double({ min: 0, max: 0.99, noNaN: true })).map(([f, at]) => f.subarray(0, Math.max(1, Math.floor(f.length * at)))),
    );

    let protocolErrors = 0;
    const seen: Record<Expect, number> = { closed: 0, 'reply-C': 0, 'reply-J': 0, nothing: 0 };
    const r = await fuzz(
      t,
      'daemon connections',
      fc.asyncProperty(streamArb.filter(harmless), fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 4 }), async (stream, cuts) => {
        const m = model(stream);
        const x = await exchange(socket, cutAt(stream, cuts), m.expect === 'nothing' ? 50 : 10_000);
        if (m.expect === 'nothing') {
          assert.equal(x.reply.length, 0, 'the daemon answered an incomplete frame');
        } else {
          assert.ok(x.closedByDaemon, `daemon did not close the connection (expected ${m.expect})`);
          if (m.expect === 'closed') {
            assert.equal(x.reply.length, 0, `daemon answered a protocol violation: ${x.reply.toString('hex')}`);
          } else {
            const dec = new FrameDecoder(DEFAULT_MAX_FRAME);
            const frames = dec.push(x.reply);
            dec.end();
            assert.equal(frames.length, 1, `expected exactly one reply frame, got ${frames.length}`);
            if (m.expect === 'reply-C') {
              const reply = decodeReply(frames[0]!);
              if (m.protocolError) assert.equal(reply.kind, 'passthrough');
            } else {
              assert.ok(ControlResponse.safeParse(decodeJson(frames[0]!)).success, 'malformed control reply');
            }
          }
        }
        if (m.protocolError) protocolErrors++;
        seen[m.expect]++;
      }),
      { seed: 0xdae111, numRuns: 300, timeLimitMs: 12_000 },
    );
    t.diagnostic(`outcomes: ${JSON.stringify(seen)}; protocol violations sent: ${protocolErrors}`);
    assert.ok(r.runs >= 100, `only ${r.runs} connections in the time limit`);
    assert.ok(seen.closed > 0 && seen['reply-C'] > 0 && seen['reply-J'] > 0 && seen.nothing > 0, JSON.stringify(seen));

    // Same process, still answering control requests.
    assert.equal(cache.daemonPid(), pid);
    process.kill(pid!, 0);
    const stats = await askDaemon(cache.dir, { op: 'stats' }, 10_000);
    assert.equal(stats.kind, 'ok', JSON.stringify(stats));
    const after = (stats as { result: StatsView }).result;
    const kind = (s: StatsView, k: string) => s.errors_by_kind[k] ?? 0;
    assert.equal(kind(after, 'protocol') - kind(before, 'protocol'), protocolErrors, 'protocol errors counted');
    assert.equal(kind(after, 'internal') - kind(before, 'internal'), 0, `internal errors: ${JSON.stringify(after.errors_by_kind)}`);
    assert.ok(protocolErrors > 50);

    // Still serves a real job: a miss, then a hit, both equal to direct clang.
    const direct = b.backend('mathx', { out: 'mathx.direct.o' });
    assert.equal(direct.status, 0, direct.stderr);
    const want = readFileSync(join(b.dir, 'mathx.direct.o'));
    for (const expect of ['misses', 'hits'] as const) {
      const s0 = cache.stats();
      rmSync(join(b.dir, 'mathx.thinlto-native.o'), { force: true });
      const run = b.backend('mathx', { wrapper: [CLIENT], env: cache.env });
      assert.equal(run.status, 0, run.stderr);
      assert.equal(run.stderr, direct.stderr);
      assert.ok(readFileSync(join(b.dir, 'mathx.thinlto-native.o')).equals(want), `${expect}: object differs from direct clang`);
      const s1 = cache.stats();
      assert.equal(s1[expect] - s0[expect], 1, `expected one more ${expect}`);
    }
    assert.equal(cache.daemonPid(), pid);
  });
});
