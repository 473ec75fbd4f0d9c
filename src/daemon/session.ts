import type { Socket } from 'node:net';
import { ClientCompileError, type JobContext, type JobOutcome } from '../pipeline/jobPipeline.js';
import type { CompilerRun } from '../pipeline/runCompiler.js';
import {
  type CompileRequest,
  type DistributeRequest,
  decodeCompileRequest,
  decodeDistributeRequest,
  decodeDone,
  decodeJson,
  decodeStored,
  encodeAck,
  encodeCompileYourself,
  encodeHitStore,
  encodeJson,
  encodePassthrough,
  encodeResult,
  encodeStoreYourself,
  encodeWait,
  FrameDecoder,
  type OutputRedirect,
  ProtocolError,
} from '../protocol/clientFrames.js';
import { ControlRequest, type ControlResponse } from '../protocol/control.js';
import { FRAME_COMPILE, FRAME_DISTRIBUTE, FRAME_JSON, FRAME_STORED, KEEPALIVE_INTERVAL_MS, MAX_DONE_PAYLOAD, MAX_REQUEST_PAYLOAD } from '../protocol/limits.js';
import { type Counters, ErrorKind } from '../stats/counters.js';
import type { Logger } from '../util/log.js';

/** The abort reason of every session: abort() without one builds a DOMException, stack and all, per connection. */
const CLIENT_GONE = new Error('client went away');
const EMPTY = Buffer.alloc(0);

/** What a session needs from the daemon: the cache logic and the bookkeeping, no sockets. */
export interface SessionHandlers {
  counters: Counters;
  log: Logger;
  compile(req: CompileRequest, ctx: JobContext): Promise<JobOutcome>;
  /** Called once the answer to a compile request has been written. */
  compiled(req: CompileRequest, outcome: JobOutcome, startedAt: number): void;
  control(req: ControlRequest): Promise<unknown>;
  /** Runs a whole DTLTO distribution; resolves with what the client replays. */
  distribute(req: DistributeRequest, signal: AbortSignal): Promise<DistributionReply>;
}

/** What the distributor prints and how it exits. */
export interface DistributionReply {
  exit: number;
  stdout: Buffer;
  stderr: Buffer;
}

/**
 * One client connection. The first frame is the request: 'C' a compile, 'T' a DTLTO distribution,
 * 'J' a control request.
 * Anything after it is ignored, except the one 'D' frame that answers an 'M' we sent, read with a
 * fresh decoder from the moment the 'M' is sent.
 */
export function runSession(sock: Socket, h: SessionHandlers): void {
  const abort = new AbortController();
  let decoder: FrameDecoder | null = new FrameDecoder(MAX_REQUEST_PAYLOAD);
  let handled = false;
  let waiter: { res: (b: Buffer) => void; rej: (e: Error) => void } | null = null;
  const nextFrame = () =>
    new Promise<Buffer>((res, rej) => {
      if (abort.signal.aborted) return rej(new Error('client went away'));
      decoder = new FrameDecoder(MAX_DONE_PAYLOAD);
      waiter = { res, rej };
    });
  // While a compile or distribution request is in progress, 'W' every KEEPALIVE_INTERVAL_MS tells the client we
  // are alive (its silence timeout then compiles directly); not while the client compiles (we
  // await its 'D'), nor after our answer.
  let keepalive: NodeJS.Timeout | undefined;
  // Set once the request is answered and its bookkeeping done: a close after that has nothing
  // to abort (dispatching the abort event costs microseconds per job, for no listener).
  let over = false;
  sock.on('close', () => {
    clearInterval(keepalive);
    if (!over) abort.abort(CLIENT_GONE);
    const w = waiter;
    waiter = null;
    w?.rej(new Error('client went away'));
  });
  sock.on('error', () => {});
  sock.on('data', (chunk: Buffer) => {
    if (!decoder || (handled && !waiter)) return;
    let frames: Buffer[];
    try {
      frames = decoder.push(chunk);
    } catch (e) {
      h.counters.error(ErrorKind.protocol);
      h.log.warn('bad frame from client', { error: (e as Error).message });
      sock.destroy();
      return;
    }
    const frame = frames[0];
    if (!frame) return;
    if (!handled) {
      handled = true;
      decoder = null;
      if (frame[0] === FRAME_COMPILE || frame[0] === FRAME_DISTRIBUTE) {
        keepalive = setInterval(() => {
          if (!waiter && !sock.writableEnded && !sock.destroyed) sock.write(encodeWait());
        }, KEEPALIVE_INTERVAL_MS);
      }
      void dispatch(frame, sock, abort.signal, nextFrame, h).finally(() => {
        over = true;
      });
    } else if (waiter) {
      const w = waiter;
      waiter = null;
      decoder = null;
      w.res(frame);
    }
  });
}

async function dispatch(frame: Buffer, sock: Socket, signal: AbortSignal, nextFrame: () => Promise<Buffer>, h: SessionHandlers): Promise<void> {
  const type = frame[0];
  /** The request, or null once a malformed one has been counted, logged and refused. */
  const decoded = <T>(decode: (f: Buffer) => T, what: string): T | null => {
    try {
      return decode(frame);
    } catch (e) {
      h.counters.error(ErrorKind.protocol);
      h.log.warn(`malformed ${what}`, { error: (e as Error).message });
      sock.end(encodePassthrough(`malformed request: ${(e as Error).message}`));
      return null;
    }
  };
  try {
    if (type === FRAME_COMPILE) {
      const req = decoded(decodeCompileRequest, 'compile request');
      if (req) await compile(req, sock, signal, nextFrame, h);
    } else if (type === FRAME_DISTRIBUTE) {
      const req = decoded(decodeDistributeRequest, 'distribution request');
      if (!req) return;
      const r = await h.distribute(req, signal);
      if (!signal.aborted) sock.end(encodeResult({ exit: r.exit, signal: 0 }, r.stdout, r.stderr));
    } else if (type === FRAME_JSON) {
      let json: unknown;
      try {
        json = decodeJson(frame);
      } catch (e) {
        h.counters.error(ErrorKind.protocol);
        sock.end(encodeJson({ ok: false, error: `bad control request: ${(e as Error).message}` } satisfies ControlResponse));
        return;
      }
      const parsed = ControlRequest.safeParse(json);
      const reply: ControlResponse = parsed.success
        ? await h.control(parsed.data).then(
            (result) => ({ ok: true as const, result }),
            (e: Error) => ({ ok: false as const, error: e.message }),
          )
        : { ok: false, error: `bad control request: ${parsed.error.issues.map((i) => i.message).join('; ')}` };
      sock.end(encodeJson(reply));
    } else {
      h.counters.error(ErrorKind.protocol);
      sock.destroy();
    }
  } catch (e) {
    h.counters.error(ErrorKind.internal);
    h.log.error('request failed', { error: (e as Error).stack ?? String(e) });
    if (!sock.destroyed) sock.end(encodePassthrough('internal error'));
  }
}

async function compile(req: CompileRequest, sock: Socket, signal: AbortSignal, nextFrame: () => Promise<Buffer>, h: SessionHandlers): Promise<void> {
  const startedAt = Date.now();
  // The client may exit as soon as its outputs are read: hashing and storing do not need it.
  let acked = false;
  const released = () => {
    if (acked || signal.aborted) return;
    acked = true;
    sock.end(encodeAck());
  };
  // A client that can compile on a miss does so: forking clang from the small client is far
  // cheaper than from the daemon. Given a memo, a client that can store does so too.
  const compileOnClient = req.compilesOnMiss
    ? async (storeMemo?: Buffer, colour = false, redirect?: OutputRedirect): Promise<CompilerRun> => {
        const started = performance.now();
        const next = nextFrame();
        const options = req.compileOptions ? { colour, ...(redirect && req.redirectsOutput ? { redirect } : {}) } : undefined;
        sock.write(storeMemo && req.storesOnMiss ? encodeStoreYourself(storeMemo, options) : encodeCompileYourself(options));
        const frame = await next;
        try {
          if (frame[0] === FRAME_STORED && storeMemo && req.storesOnMiss) {
            const s = decodeStored(frame);
            // The client has its answer and has gone: no 'A'.
            acked = true;
            return { exitCode: 0, signal: 0, stdout: EMPTY, stderr: EMPTY, ms: performance.now() - started, stored: s };
          }
          const d = decodeDone(frame);
          return { exitCode: d.exit, signal: d.signal, stdout: d.stdout, stderr: d.stderr, ms: performance.now() - started };
        } catch (e) {
          throw e instanceof ProtocolError ? new ClientCompileError(e.message, ErrorKind.protocol) : e;
        }
      }
    : undefined;
  // A team-cache hit the client stores and serves itself: it answers 'E', or goes away (then it
  // compiles, and nothing was stored).
  const serveOnClient = async (memo: Buffer, files: readonly Buffer[]) => {
    const next = nextFrame();
    acked = true;
    sock.write(encodeHitStore(memo, files));
    try {
      const frame = await next;
      return frame[0] === FRAME_STORED ? decodeStored(frame) : null;
    } catch (e) {
      if (e instanceof ProtocolError) h.counters.error(ErrorKind.protocol);
      return null;
    } finally {
      sock.end();
    }
  };
  const outcome = await h.compile(req, {
    signal,
    ...(compileOnClient
      ? {
          compileOnClient,
          released,
          ...(req.stderrTty && req.compileOptions ? { colourOnRequest: true } : {}),
          ...(req.compileOptions && req.redirectsOutput ? { clientRedirects: true } : {}),
        }
      : {}),
    ...(compileOnClient && req.storesOnMiss ? { clientStores: true, serveOnClient } : {}),
  });
  if (signal.aborted && !acked) return;
  // Once acknowledged, the client has its answer (its own compile's status): nothing more is sent.
  if (!acked)
    switch (outcome.kind) {
      case 'uncacheable':
        sock.end(encodePassthrough(`${outcome.reason}: ${outcome.detail}`));
        break;
      case 'error':
        sock.end(encodePassthrough(outcome.error));
        break;
      case 'hit':
        sock.end(encodeResult({ exit: 0, signal: 0 }, outcome.stdout, outcome.stderr));
        break;
      case 'miss':
        if (!outcome.compiledOnClient) sock.end(encodeResult({ exit: outcome.exitCode, signal: outcome.signal }, outcome.stdout, outcome.stderr));
        else released();
        break;
    }
  h.compiled(req, outcome, startedAt);
}
