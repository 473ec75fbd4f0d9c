/**
 * Wire format between the native client (client/frames.c) and the daemon, plus the socket
 * location rule both sides must agree on. See docs/protocol.md for the normative description.
 *
 * Framing: every frame is `u32 length` (little-endian) followed by `length` payload bytes;
 * payload byte 0 is the frame type. A `str` is `u32 byte length` + bytes (no terminator).
 *
 *   'C' compile request  client → daemon  u8 'C', u8 version=2, u32 flags, u32 umask,
 *                                          str compiler, str cwd, u32 argc, argc×str,
 *                                          u32 envc, envc×str ("K=V")
 *   'R' result           daemon → client  u8 'R', i32 exit, i32 signal, str stdout, str stderr
 *   'P' passthrough      daemon → client  u8 'P', str reason  (client execs the compiler)
 *   'M' compile yourself daemon → client  u8 'M'  (a miss; only to a client with flag bit 1)
 *   'S' store it yourself daemon → client u8 'S', a memo file (memo.v1) with zero output digests
 *                                          (a miss; only to a client with flag bits 1 and 2)
 *   'D' done             client → daemon  u8 'D', i32 exit, i32 signal, str stdout, str stderr
 *   'H' hit, store it    daemon → client  u8 'H', u32 memo length, memo (filled in), per output
 *                                          u32 length + bytes (a team-cache hit; flag bit 2)
 *   'E' stored           client → daemon  u8 'E', u8 memo written, u32 n, n×(32 hex, u64 size)
 *                                          (after 'S' or 'H': what the client stored; no 'A')
 *   'W' keepalive        daemon → client  u8 'W'  (still working; the client skips it)
 *   'A' acknowledged     daemon → client  u8 'A'  (the result is taken; the client exits)
 *   'J' JSON control     TS CLI ↔ daemon  u8 'J', UTF-8 JSON (never sent by the C client)
 *   'T' distribution     client → daemon  the 'C' layout with type 'T', compiler "distribute"
 *                                          and args = the distributor's arguments (FILE.json);
 *                                          answered with 'R' (or 'P': the client runs the CLI)
 *
 * Byte strings: on the wire, args, env entries and paths are arbitrary bytes (Unix argv).
 * Here they are decoded as UTF-8 *strictly*: a request whose strings are not valid UTF-8 is
 * rejected (ProtocolError) rather than decoded lossily, because replacing bytes with U+FFFD
 * would make the daemon run the compiler on different arguments than the user gave. The daemon
 * should answer such a (well-framed) request with a passthrough, so the client runs the
 * compiler itself.
 */
import { z } from 'zod';

import { stripTrailingSlashes } from '../config/cacheDir.js';
import { OPAQUE_ENV_PREFIX } from '../util/opaqueEnv.js';

/** Any violation of the wire format. The caller closes the connection (or, for a complete but
 * invalid request, may reply 'P' first: framing is still in sync then). */
export class ProtocolError extends Error {
  override name = 'ProtocolError';
}

import {
  COMPILE_OPTION_COLOUR,
  COMPILE_OPTION_REDIRECT,
  FLAG_COMPILE_OPTIONS,
  FLAG_COMPILES_ON_MISS,
  FLAG_REDIRECTS_OUTPUT,
  FLAG_STDERR_TTY,
  FLAG_STORES_ON_MISS,
  FRAME_ACK,
  FRAME_COMPILE,
  FRAME_COMPILE_YOURSELF,
  FRAME_DISTRIBUTE,
  FRAME_DONE,
  FRAME_HIT_STORE,
  FRAME_JSON,
  FRAME_PASSTHROUGH,
  FRAME_RESULT,
  FRAME_STORE_YOURSELF,
  FRAME_STORED,
  FRAME_WAIT,
  MAX_DONE_PAYLOAD,
  MAX_REPLY_PAYLOAD,
  MAX_REQUEST_PAYLOAD,
  MAX_SIGNAL,
  MEMO_MAX_OUTPUTS,
  PROTOCOL_VERSION,
  storedPayloadSize,
} from './limits.js';

export {
  COMPILE_OPTION_COLOUR,
  COMPILE_OPTION_REDIRECT,
  FLAG_COMPILE_OPTIONS,
  FLAG_COMPILES_ON_MISS,
  FLAG_REDIRECTS_OUTPUT,
  FLAG_STDERR_TTY,
  FLAG_STORES_ON_MISS,
  FRAME_ACK,
  FRAME_COMPILE,
  FRAME_COMPILE_YOURSELF,
  FRAME_DISTRIBUTE,
  FRAME_DONE,
  FRAME_JSON,
  FRAME_PASSTHROUGH,
  FRAME_RESULT,
  FRAME_STORE_YOURSELF,
  FRAME_STORED,
  FRAME_WAIT,
  MAX_DONE_PAYLOAD,
  MAX_REPLY_PAYLOAD,
  MAX_REQUEST_PAYLOAD,
  PROTOCOL_VERSION,
};

const KNOWN_FLAGS = FLAG_STDERR_TTY | FLAG_COMPILES_ON_MISS | FLAG_STORES_ON_MISS | FLAG_COMPILE_OPTIONS | FLAG_REDIRECTS_OUTPUT;

/** Default cap on a frame payload the daemon accepts: a compile request. */
export const DEFAULT_MAX_FRAME = MAX_REQUEST_PAYLOAD;

const MAX_U32 = 0xffffffff;

// ---------------------------------------------------------------------------------------------
// Framing

/** Prefixes a payload with its u32 little-endian length. */
export function encodeFrame(payload: Buffer): Buffer {
  if (payload.length === 0) throw new RangeError('frame payload must not be empty');
  if (payload.length > MAX_U32) throw new RangeError('frame payload exceeds 4 GiB');
  const header = Buffer.allocUnsafe(4);
  header.writeUInt32LE(payload.length, 0);
  return Buffer.concat([header, payload]);
}

/**
 * Incremental frame splitter for a byte stream. push() returns the payloads completed by the
 * chunk (possibly none, possibly several). Memory is bounded by maxFrame: the size is checked
 * as soon as a header is complete, before any payload is buffered. After a ProtocolError the
 * decoder stays failed; the caller must close the connection.
 */
export class FrameDecoder {
  readonly maxFrame: number;
  private readonly header = Buffer.alloc(4);
  private headerFill = 0;
  private body: Buffer | undefined;
  private bodyFill = 0;
  private failure: ProtocolError | undefined;

  constructor(maxFrame: number = DEFAULT_MAX_FRAME) {
    if (!Number.isInteger(maxFrame) || maxFrame < 1 || maxFrame > MAX_U32) {
      throw new RangeError(`FrameDecoder: invalid maxFrame ${maxFrame}`);
    }
    this.maxFrame = maxFrame;
  }

  /** Bytes of an incomplete frame currently held (header included). */
  get pending(): number {
    return this.headerFill + this.bodyFill;
  }

  push(chunk: Buffer): Buffer[] {
    if (this.failure) throw this.failure;
    const out: Buffer[] = [];
    let at = 0;
    while (at < chunk.length) {
      if (!this.body) {
        const n = Math.min(4 - this.headerFill, chunk.length - at);
        chunk.copy(this.header, this.headerFill, at, at + n);
        this.headerFill += n;
        at += n;
        if (this.headerFill < 4) break;
        const size = this.header.readUInt32LE(0);
        // Frames completed earlier in this chunk are still delivered (the failure surfaces on
        // the next push()/end()), so where the stream was cut never changes what comes out.
        try {
          if (size === 0) this.fail('empty frame (length 0): a payload needs at least a type byte');
          if (size > this.maxFrame) {
            this.fail(`frame of ${size} bytes exceeds the limit of ${this.maxFrame} bytes`);
          }
        } catch (e) {
          if (out.length > 0) return out;
          throw e;
        }
        this.body = Buffer.allocUnsafe(size);
        this.bodyFill = 0;
      }
      const n = Math.min(this.body.length - this.bodyFill, chunk.length - at);
      chunk.copy(this.body, this.bodyFill, at, at + n);
      this.bodyFill += n;
      at += n;
      if (this.bodyFill === this.body.length) {
        out.push(this.body);
        this.body = undefined;
        this.bodyFill = 0;
        this.headerFill = 0;
      }
    }
    return out;
  }

  /** Call at end of stream: throws if a frame was left incomplete. */
  end(): void {
    if (this.failure) throw this.failure;
    if (this.pending > 0) this.fail(`stream ended inside a frame (${this.pending} bytes pending)`);
  }

  private fail(message: string): never {
    this.failure = new ProtocolError(message);
    throw this.failure;
  }
}

// ---------------------------------------------------------------------------------------------
// Compile request

const noNul = (what: string) => z.string().refine((s) => !s.includes('\0'), { message: `${what} contains a NUL byte` });
const absolutePath = (what: string) => noNul(what).refine((s) => s.startsWith('/'), { message: `${what} is not an absolute path` });

export const CompileRequest = z.object({
  version: z.literal(PROTOCOL_VERSION),
  /** Bit 0 of the flags: the client's stderr is a terminal (colour diagnostics). */
  stderrTty: z.boolean(),
  /** Bit 1 of the flags: the client runs the compiler itself on a miss when told 'M'. */
  compilesOnMiss: z.boolean().default(false),
  /** Bit 2 of the flags: the client can also store a clean miss itself when told 'S' (it is
   * told only if it compiles on a miss, bit 1). */
  storesOnMiss: z.boolean().default(false),
  /** Bit 3 of the flags: 'M' and 'S' are to carry a byte of COMPILE_OPTION_* bits (only with bit 1). */
  compileOptions: z.boolean().default(false),
  /** Bit 4 of the flags: 'M' and 'S' may carry an output redirect (only with bit 3). */
  redirectsOutput: z.boolean().default(false),
  umask: z.number().int().min(0).max(0o777),
  /** Absolute path of the real compiler (not resolved through symlinks). */
  compiler: absolutePath('compiler'),
  /** The client's working directory (physical, from getcwd). */
  cwd: absolutePath('cwd'),
  /** Arguments after the compiler, exactly as given (argv[0] excluded). */
  args: z.array(noNul('argument')),
  /** The client's environment. On duplicate names the first entry wins (as for getenv). */
  env: z.record(
    noNul('environment name').refine((k) => k.length > 0 && !k.includes('='), {
      message: 'environment name is empty or contains "="',
    }),
    z.string().refine((v) => !v.includes('\0') || (v.startsWith(OPAQUE_ENV_PREFIX) && v.indexOf('\0', 1) < 0), { message: 'environment value contains a NUL byte' }),
  ),
});
export type CompileRequest = z.infer<typeof CompileRequest>;

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export { OPAQUE_ENV_PREFIX } from '../util/opaqueEnv.js';

/** Bounds-checked little-endian reader; every failure names the field being read. */
class Reader {
  at = 0;
  constructor(private readonly buf: Buffer) {}
  get remaining(): number {
    return this.buf.length - this.at;
  }
  need(n: number, field: string): void {
    if (n > this.remaining) {
      throw new ProtocolError(`truncated at ${field}: need ${n} bytes at offset ${this.at}, have ${this.remaining}`);
    }
  }
  u8(field: string): number {
    this.need(1, field);
    return this.buf[this.at++]!;
  }
  u32(field: string): number {
    this.need(4, field);
    const v = this.buf.readUInt32LE(this.at);
    this.at += 4;
    return v;
  }
  i32(field: string): number {
    this.need(4, field);
    const v = this.buf.readInt32LE(this.at);
    this.at += 4;
    return v;
  }
  bytes(field: string): Buffer {
    const n = this.u32(`${field} length`);
    this.need(n, field);
    const b = this.buf.subarray(this.at, this.at + n);
    this.at += n;
    return b;
  }
  text(field: string): string {
    const b = this.bytes(field);
    if (b.includes(0)) throw new ProtocolError(`${field} contains a NUL byte`);
    try {
      return utf8.decode(b);
    } catch {
      throw new ProtocolError(`${field} is not valid UTF-8`);
    }
  }
  /** A count of items that each take at least 4 bytes: reject counts the payload can't hold
   * before allocating anything for them. */
  count(field: string): number {
    const n = this.u32(field);
    if (n * 4 > this.remaining) {
      throw new ProtocolError(`${field} ${n} too large: ${this.remaining} bytes remain, each entry needs at least 4`);
    }
    return n;
  }
  end(what: string): void {
    if (this.remaining !== 0) {
      throw new ProtocolError(`${this.remaining} trailing bytes after ${what}`);
    }
  }
}

function typeByte(payload: Buffer, expected: number, what: string): void {
  if (payload.length === 0) throw new ProtocolError(`empty payload, expected ${what}`);
  if (payload[0] !== expected) {
    throw new ProtocolError(`wrong frame type 0x${payload[0]!.toString(16).padStart(2, '0')}, expected ${what} ` + `(0x${expected.toString(16)})`);
  }
}

/** A whole DTLTO distribution ('T'): the compile request's fields, the compiler being the
 * distributor's name and the arguments the distributor's (the distribution file). */
export const DistributeRequest = CompileRequest.extend({ compiler: z.literal('distribute') });
export type DistributeRequest = z.infer<typeof DistributeRequest>;

/** Parses a 'C' payload (without the length prefix). Throws ProtocolError on anything wrong. */
export function decodeCompileRequest(payload: Buffer): CompileRequest {
  return decodeRequest(payload, FRAME_COMPILE, "compile request 'C'", CompileRequest);
}

/** Parses a 'T' payload (without the length prefix). Throws ProtocolError on anything wrong. */
export function decodeDistributeRequest(payload: Buffer): DistributeRequest {
  return decodeRequest(payload, FRAME_DISTRIBUTE, "distribution request 'T'", DistributeRequest);
}

/**
 * The environments of recent requests, by their exact encoded bytes (the env section runs to the
 * end of the payload). A build sends the same environment with every job: a request whose
 * section is byte-equal to one of these gets the same decoded object, frozen since requests
 * share it, without decoding ~100 strings again or keeping a copy per job.
 */
const RECENT_ENVS = 4;
const recentEnvs: { bytes: Buffer; env: Readonly<Record<string, string>> }[] = [];

function recentEnv(bytes: Buffer): Record<string, string> | undefined {
  for (const [i, e] of recentEnvs.entries()) {
    if (e.bytes.equals(bytes)) {
      if (i > 0) recentEnvs.unshift(...recentEnvs.splice(i, 1));
      return e.env as Record<string, string>;
    }
  }
  return undefined;
}

function rememberEnv(bytes: Buffer, env: Record<string, string>): Record<string, string> {
  Object.freeze(env);
  recentEnvs.unshift({ bytes: Buffer.from(bytes), env });
  recentEnvs.length = Math.min(recentEnvs.length, RECENT_ENVS);
  return env;
}

/** Decodes a 'C' or 'T' payload; the result satisfies `schema` (the fuzz tests hold it to that). */
function decodeRequest<S extends typeof CompileRequest | typeof DistributeRequest>(payload: Buffer, type: number, what: string, schema: S): z.infer<S> {
  typeByte(payload, type, what);
  const r = new Reader(payload);
  r.at = 1;
  const version = r.u8('version');
  if (version !== PROTOCOL_VERSION) {
    throw new ProtocolError(`unsupported protocol version ${version} (expected ${PROTOCOL_VERSION})`);
  }
  const flags = r.u32('flags');
  if ((flags & ~KNOWN_FLAGS) !== 0) {
    throw new ProtocolError(`unknown flag bits 0x${flags.toString(16)}`);
  }
  const umask = r.u32('umask');
  const compiler = r.text('compiler');
  const cwd = r.text('cwd');
  const argc = r.count('argc');
  const args: string[] = [];
  for (let i = 0; i < argc; i++) args.push(r.text(`argument ${i}`));
  const envBytes = payload.subarray(r.at);
  let env = recentEnv(envBytes);
  if (env) r.at = payload.length;
  else {
    const envc = r.count('envc');
    const decoded: Record<string, string> = Object.create(null);
    for (let i = 0; i < envc; i++) {
      const raw = r.bytes(`environment entry ${i}`);
      if (raw.includes(0)) throw new ProtocolError(`environment entry ${i} contains a NUL byte`);
      const eq = raw.indexOf(0x3d);
      if (eq <= 0) throw new ProtocolError(`environment entry ${i} is not of the form K=V`);
      let key: string;
      let value: string;
      try {
        key = utf8.decode(raw.subarray(0, eq));
      } catch {
        // No variable the key or clang's driver reads has such a name.
        continue;
      }
      try {
        value = utf8.decode(raw.subarray(eq + 1));
      } catch {
        if (schema === DistributeRequest) throw new ProtocolError(`environment entry ${i} is not valid UTF-8`);
        value = OPAQUE_ENV_PREFIX + raw.subarray(eq + 1).toString('hex');
      }
      // A plain-object record cannot hold this name faithfully (zod drops it); refuse rather
      // than silently run the compiler with a different environment.
      if (key === '__proto__') throw new ProtocolError(`environment entry ${i} is named __proto__`);
      if (!Object.hasOwn(decoded, key)) decoded[key] = value;
    }
    r.end(what);
    env = rememberEnv(envBytes, decoded);
  }
  // What the schema says beyond the reader's own checks (NULs, UTF-8, counts), checked directly:
  // this runs for every job, and a zod pass over ~100 arguments is a visible share of a miss.
  const invalid = (m: string) => new ProtocolError(`invalid ${what}: ${m}`);
  if (umask > 0o777) throw invalid(`umask ${umask.toString(8)} is over 0777`);
  if (schema === DistributeRequest ? compiler !== 'distribute' : !compiler.startsWith('/')) {
    throw invalid(schema === DistributeRequest ? `compiler must be "distribute" (at compiler)` : 'compiler is not an absolute path (at compiler)');
  }
  if (!cwd.startsWith('/')) throw invalid('cwd is not an absolute path (at cwd)');
  return {
    version,
    stderrTty: (flags & FLAG_STDERR_TTY) !== 0,
    compilesOnMiss: (flags & FLAG_COMPILES_ON_MISS) !== 0,
    storesOnMiss: (flags & FLAG_STORES_ON_MISS) !== 0,
    compileOptions: (flags & FLAG_COMPILE_OPTIONS) !== 0,
    redirectsOutput: (flags & FLAG_REDIRECTS_OUTPUT) !== 0,
    umask,
    compiler,
    cwd,
    args,
    env,
  } as z.infer<S>;
}

/** Builds a complete 'C' frame (length prefix included): lets TypeScript tests act as the C
 * client. Validates with the schema first. */
export function encodeCompileRequest(req: z.input<typeof CompileRequest>): Buffer {
  return encodeRequest(FRAME_COMPILE, CompileRequest.parse(req));
}

/** Builds a complete 'T' frame (length prefix included), as the C client does for `distribute`. */
export function encodeDistributeRequest(req: z.input<typeof DistributeRequest>): Buffer {
  return encodeRequest(FRAME_DISTRIBUTE, DistributeRequest.parse(req));
}

function encodeRequest(type: number, v: CompileRequest): Buffer {
  const parts: Buffer[] = [];
  const head = Buffer.alloc(10);
  head[0] = type;
  head[1] = v.version;
  const flags =
    (v.stderrTty ? FLAG_STDERR_TTY : 0) |
    (v.compilesOnMiss ? FLAG_COMPILES_ON_MISS : 0) |
    (v.storesOnMiss ? FLAG_STORES_ON_MISS : 0) |
    (v.compileOptions ? FLAG_COMPILE_OPTIONS : 0) |
    (v.redirectsOutput ? FLAG_REDIRECTS_OUTPUT : 0);
  head.writeUInt32LE(flags, 2);
  head.writeUInt32LE(v.umask, 6);
  parts.push(head);
  const str = (s: string) => {
    const b = Buffer.from(s, 'utf8');
    parts.push(u32(b.length), b);
  };
  str(v.compiler);
  str(v.cwd);
  parts.push(u32(v.args.length));
  v.args.forEach(str);
  const env = Object.entries(v.env);
  parts.push(u32(env.length));
  for (const [k, val] of env) {
    // An opaque value goes back to the bytes it stands for.
    if (!val.startsWith(OPAQUE_ENV_PREFIX)) str(`${k}=${val}`);
    else {
      const b = Buffer.concat([Buffer.from(`${k}=`, 'utf8'), Buffer.from(val.slice(OPAQUE_ENV_PREFIX.length), 'hex')]);
      parts.push(u32(b.length), b);
    }
  }
  return encodeFrame(Buffer.concat(parts));
}

function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32LE(n, 0);
  return b;
}

// ---------------------------------------------------------------------------------------------
// Replies

/** How the compiler ended: `exit` is its exit status (0..255) when `signal` is 0; when it was
 * killed by signal N, `signal` is N and `exit` is 128+N (the shell's convention, so that any
 * non-zero test still sees a failure). */
export interface Termination {
  exit: number;
  signal: number;
}

function checkTermination(t: Termination, fail: (m: string) => never): void {
  if (!Number.isInteger(t.exit) || t.exit < 0 || t.exit > 255) fail(`exit status ${t.exit} is not in 0..255`);
  if (!Number.isInteger(t.signal) || t.signal < 0 || t.signal > MAX_SIGNAL) fail(`signal ${t.signal} is not in 0..${MAX_SIGNAL}`);
}

function rangeError(m: string): never {
  throw new RangeError(m);
}

function protocolError(m: string): never {
  throw new ProtocolError(m);
}

function resultPayload(type: number, t: Termination, stdout: Buffer, stderr: Buffer): Buffer {
  const head = Buffer.allocUnsafe(9);
  head[0] = type;
  head.writeInt32LE(t.exit, 1);
  head.writeInt32LE(t.signal, 5);
  return Buffer.concat([head, u32(stdout.length), stdout, u32(stderr.length), stderr]);
}

/**
 * Builds a complete 'R' frame; a bare number is an exit status (no signal). A `signal` makes the client die of that signal; otherwise it
 * exits with `exit`. Out-of-range values are a RangeError here, as is a payload above
 * MAX_REPLY_PAYLOAD (the client would fall back: reply 'P' instead).
 */
export function encodeResult(how: number | Termination, stdout: Buffer, stderr: Buffer): Buffer {
  const t = typeof how === 'number' ? { exit: how, signal: 0 } : how;
  checkTermination(t, rangeError);
  const size = 1 + 4 + 4 + 4 + stdout.length + 4 + stderr.length;
  if (size > MAX_REPLY_PAYLOAD) {
    throw new RangeError(`result payload of ${size} bytes exceeds ${MAX_REPLY_PAYLOAD} bytes`);
  }
  return encodeFrame(resultPayload(FRAME_RESULT, t, stdout, stderr));
}

/** Builds a complete 'P' frame: "run the compiler yourself", with a reason for logs. */
export function encodePassthrough(reason: string): Buffer {
  const b = Buffer.from(reason, 'utf8');
  return encodeFrame(Buffer.concat([Buffer.from([FRAME_PASSTHROUGH]), u32(b.length), b]));
}

/**
 * A miss's object written to a private temp beside the output (docs/protocol.md "Output
 * redirect"): the compiler runs with argument `index` (of the request's arguments) replaced by
 * `arg`, which names `temp` where the job named `output`; the client stores from `temp`, then
 * renames it onto `output`. Both paths absolute.
 */
export interface OutputRedirect {
  index: number;
  arg: string;
  temp: string;
  output: string;
}

/** How the client is to run the compiler on 'M' or 'S' (the COMPILE_OPTION_* byte and what it
 * announces), for a client that set FLAG_COMPILE_OPTIONS; `redirect` only if it set FLAG_REDIRECTS_OUTPUT. */
export type CompileOptions = { colour: boolean; redirect?: OutputRedirect };

function optionsBytes(o: CompileOptions | undefined): Buffer {
  if (!o) return Buffer.alloc(0);
  const head = Buffer.from([(o.colour ? COMPILE_OPTION_COLOUR : 0) | (o.redirect ? COMPILE_OPTION_REDIRECT : 0)]);
  if (!o.redirect) return head;
  const { index, arg, temp, output } = o.redirect;
  if (!Number.isInteger(index) || index < 0 || index > MAX_U32) throw new RangeError(`redirect index ${index} out of range`);
  for (const s of [arg, temp, output]) if (s.includes('\0')) throw new RangeError('redirect string contains a NUL byte');
  const str = (s: string) => {
    const b = Buffer.from(s, 'utf8');
    return [u32(b.length), b];
  };
  return Buffer.concat([head, u32(index), ...str(arg), ...str(temp), ...str(output)]);
}

/** Builds a complete 'M' frame: "a miss: run the compiler yourself and report with 'D'"; with
 * `options` only for a client that set FLAG_COMPILE_OPTIONS. */
export function encodeCompileYourself(options?: CompileOptions): Buffer {
  return encodeFrame(Buffer.concat([Buffer.from([FRAME_COMPILE_YOURSELF]), optionsBytes(options)]));
}

/** Builds a complete 'S' frame: "a miss: compile, and store a clean run under this memo"; with
 * `options` only for a client that set FLAG_COMPILE_OPTIONS. */
export function encodeStoreYourself(memo: Buffer, options?: CompileOptions): Buffer {
  const head = optionsBytes(options);
  if (1 + head.length + memo.length > MAX_REPLY_PAYLOAD) throw new RangeError(`memo of ${memo.length} bytes does not fit a reply`);
  return encodeFrame(Buffer.concat([Buffer.from([FRAME_STORE_YOURSELF]), head, memo]));
}

/** Builds a complete 'H' frame: a hit the client stores (blobs, memo) and serves from the memo. */
export function encodeHitStore(memo: Buffer, files: readonly Buffer[]): Buffer {
  const parts: Buffer[] = [Buffer.from([FRAME_HIT_STORE]), u32(memo.length), memo];
  for (const f of files) parts.push(u32(f.length), f);
  const size = parts.reduce((n, b) => n + b.length, 0);
  if (size > MAX_REPLY_PAYLOAD) throw new RangeError(`hit of ${size} bytes does not fit a reply`);
  return encodeFrame(Buffer.concat(parts, size));
}

/** What an 'E' frame reports: each output's blob, in the memo's output order. */
export interface Stored {
  memoWritten: boolean;
  outputs: { digest: string; size: number }[];
}

const HEX32 = /^[0-9a-f]{32}$/;

/** Builds a complete 'E' frame (for TS tests acting as the client). */
export function encodeStored(s: Stored): Buffer {
  const b = Buffer.alloc(storedPayloadSize(s.outputs.length));
  b[0] = FRAME_STORED;
  b[1] = s.memoWritten ? 1 : 0;
  b.writeUInt32LE(s.outputs.length, 2);
  s.outputs.forEach((o, i) => {
    const at = 6 + i * 40;
    b.write(o.digest, at, 'latin1');
    b.writeBigUInt64LE(BigInt(o.size), at + 32);
  });
  return encodeFrame(b);
}

/** Parses an 'E' payload. Throws ProtocolError for a bad count, digest, size or length. */
export function decodeStored(payload: Buffer): Stored {
  typeByte(payload, FRAME_STORED, "stored 'E'");
  const r = new Reader(payload);
  r.at = 1;
  const written = r.u8('memo written');
  if (written > 1) throw new ProtocolError(`memo written flag ${written} is not 0 or 1`);
  const n = r.u32('output count');
  if (n < 1 || n > MEMO_MAX_OUTPUTS) throw new ProtocolError(`output count ${n} is not in 1..${MEMO_MAX_OUTPUTS}`);
  if (payload.length !== storedPayloadSize(n)) throw new ProtocolError(`stored frame of ${payload.length} bytes, expected ${storedPayloadSize(n)} for ${n} outputs`);
  const outputs: Stored['outputs'] = [];
  for (let i = 0; i < n; i++) {
    const at = 6 + i * 40;
    const digest = payload.toString('latin1', at, at + 32);
    if (!HEX32.test(digest)) throw new ProtocolError(`output ${i}: digest is not 32 lowercase hex digits`);
    const size = payload.readBigUInt64LE(at + 32);
    if (size < 1n || size > BigInt(Number.MAX_SAFE_INTEGER)) throw new ProtocolError(`output ${i}: size ${size} out of range`);
    outputs.push({ digest, size: Number(size) });
  }
  return { memoWritten: written === 1, outputs };
}

/** Builds a complete 'A' frame: the daemon has taken the reported result. */
export function encodeAck(): Buffer {
  return encodeFrame(Buffer.from([FRAME_ACK]));
}

/** Builds a complete 'W' frame: the job is still in progress. */
export function encodeWait(): Buffer {
  return encodeFrame(Buffer.from([FRAME_WAIT]));
}

export interface Done extends Termination {
  stdout: Buffer;
  stderr: Buffer;
}

/** Builds a complete 'D' frame (for TS tests acting as the client). */
export function encodeDone(d: Done): Buffer {
  return encodeFrame(resultPayload(FRAME_DONE, d, d.stdout, d.stderr));
}

/** Parses a 'D' payload: how the compiler ended and its output. Throws ProtocolError. */
export function decodeDone(payload: Buffer): Done {
  typeByte(payload, FRAME_DONE, "done 'D'");
  if (payload.length > MAX_DONE_PAYLOAD) throw new ProtocolError(`done frame of ${payload.length} bytes exceeds ${MAX_DONE_PAYLOAD}`);
  const r = new Reader(payload);
  r.at = 1;
  const t = { exit: r.i32('exit status'), signal: r.i32('signal') };
  checkTermination(t, protocolError);
  const stdout = r.bytes('stdout');
  const stderr = r.bytes('stderr');
  r.end('done');
  return { ...t, stdout, stderr };
}

export type Reply =
  | { kind: 'result'; exit: number; signal: number; stdout: Buffer; stderr: Buffer }
  | { kind: 'passthrough'; reason: string }
  | { kind: 'compile-yourself'; options?: CompileOptions }
  | { kind: 'store-yourself'; memo: Buffer; options?: CompileOptions };

/**
 * Parses an 'R', 'P', 'M' or 'S' payload with exactly the C client's acceptance rules (exit in
 * 0..255, signal in 0..MAX_SIGNAL, no trailing bytes). For tests that act as the client.
 */
export function decodeReply(payload: Buffer, withOptions = false): Reply {
  if (payload.length === 0) throw new ProtocolError('empty reply payload');
  const r = new Reader(payload);
  r.at = 1;
  if (payload[0] === FRAME_RESULT) {
    const t = { exit: r.i32('exit status'), signal: r.i32('signal') };
    checkTermination(t, protocolError);
    const stdout = r.bytes('stdout');
    const stderr = r.bytes('stderr');
    r.end('result');
    return { kind: 'result', ...t, stdout, stderr };
  }
  if (payload[0] === FRAME_PASSTHROUGH) {
    const reason = r.bytes('reason').toString('utf8');
    r.end('passthrough');
    return { kind: 'passthrough', reason };
  }
  // The options byte, then the redirect it announces (as client/reply.c reads them).
  const options = (): CompileOptions => {
    const bits = r.u8('compile options');
    if (bits & ~(COMPILE_OPTION_COLOUR | COMPILE_OPTION_REDIRECT)) throw new ProtocolError(`unknown compile option bits 0x${bits.toString(16)}`);
    const o: CompileOptions = { colour: (bits & COMPILE_OPTION_COLOUR) !== 0 };
    if (bits & COMPILE_OPTION_REDIRECT) {
      const index = r.u32('redirect index');
      const [arg, temp, output] = ['redirect argument', 'redirect temp', 'redirect output'].map((f) => {
        const b = r.bytes(f);
        if (b.includes(0)) throw new ProtocolError(`${f} contains a NUL byte`);
        return b.toString('utf8');
      }) as [string, string, string];
      if (!temp.startsWith('/') || !output.startsWith('/')) throw new ProtocolError('redirect paths must be absolute');
      o.redirect = { index, arg, temp, output };
    }
    return o;
  };
  if (payload[0] === FRAME_COMPILE_YOURSELF) {
    const o = withOptions ? options() : undefined;
    r.end('compile-yourself');
    return o ? { kind: 'compile-yourself', options: o } : { kind: 'compile-yourself' };
  }
  if (payload[0] === FRAME_STORE_YOURSELF) {
    const o = withOptions ? options() : undefined;
    const memo = payload.subarray(r.at);
    if (memo.length === 0) throw new ProtocolError("'S' without a memo");
    return o ? { kind: 'store-yourself', options: o, memo } : { kind: 'store-yourself', memo };
  }
  throw new ProtocolError(`wrong frame type 0x${payload[0]!.toString(16).padStart(2, '0')}, expected 'R', 'P', 'M' or 'S'`);
}

// ---------------------------------------------------------------------------------------------
// JSON control frames (TypeScript CLI ↔ daemon only)

/** Builds a complete 'J' frame carrying JSON.stringify(value). */
export function encodeJson(value: unknown): Buffer {
  const text = JSON.stringify(value);
  if (text === undefined) throw new TypeError('encodeJson: value is not JSON-serialisable');
  return encodeFrame(Buffer.concat([Buffer.from([FRAME_JSON]), Buffer.from(text, 'utf8')]));
}

/** Parses a 'J' payload. The result is unvalidated: check it with a schema. */
export function decodeJson(payload: Buffer): unknown {
  typeByte(payload, FRAME_JSON, "JSON frame 'J'");
  let text: string;
  try {
    text = utf8.decode(payload.subarray(1));
  } catch {
    throw new ProtocolError('JSON frame is not valid UTF-8');
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new ProtocolError(`JSON frame does not parse: ${(e as Error).message}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Socket location (must match socket_location() in client/daemon_conn.c)

/** FNV-1a 64-bit over the UTF-8 bytes of s (or the given bytes), as 16 lowercase hex digits. */
export function fnv1a64Hex(s: string | Uint8Array): string {
  const bytes = typeof s === 'string' ? Buffer.from(s, 'utf8') : s;
  // Two 32-bit halves: prime = 2^40 + 0x1b3, so h*prime = h*0x1b3 + (h << 40) mod 2^64.
  let hi = 0xcbf29ce4;
  let lo = 0x84222325;
  for (const byte of bytes) {
    lo = (lo ^ byte) >>> 0;
    const loMul = lo * 0x1b3; // < 2^41: exact in a double
    const carry = Math.floor(loMul / 0x100000000);
    const newLo = loMul >>> 0;
    // high word: hi*0x1b3 + carry + (lo << 8) (the 2^40 term's contribution to bits 32..63)
    hi = (Math.imul(hi, 0x1b3) + carry + ((lo << 8) >>> 0)) >>> 0;
    lo = newLo;
  }
  return hi.toString(16).padStart(8, '0') + lo.toString(16).padStart(8, '0');
}

/** Directory holding the daemon sockets of one user: /tmp/ltocache-<uid>. The daemon creates
 * it with mode 0700; the client refuses it unless it is a real directory owned by the user
 * with no group/other permission bits. */
export function socketDirFor(uid: number): string {
  if (!Number.isInteger(uid) || uid < 0 || uid > MAX_U32) throw new RangeError(`bad uid ${uid}`);
  return `/tmp/ltocache-${uid}`;
}

/** Socket path of the daemon serving cacheDir: <socketDirFor(uid)>/<fnv1a64Hex(dir)>.sock,
 * where dir is cacheDir without trailing slashes. cacheDir must be absolute. */
export function socketPathFor(cacheDir: string, uid: number): string {
  const dir = stripTrailingSlashes(cacheDir);
  if (!dir.startsWith('/')) throw new RangeError(`cache dir '${cacheDir}' is not absolute`);
  return `${socketDirFor(uid)}/${fnv1a64Hex(dir)}.sock`;
}
