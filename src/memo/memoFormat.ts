import { join } from 'node:path';
import { DIGEST_RE, type Digest, Hasher, hashBytes } from '../key/hash.js';
import { MAX_OUTPUT_STREAM, MEMO_MAX_BYTES, MEMO_MAX_CHECKS, MEMO_MAX_NAME, MEMO_MAX_OUTPUTS, MEMO_NAME_TAG } from '../protocol/limits.js';

/**
 * The memo file (docs/memo.md, version 1): what the native client re-checks to serve a hit
 * without the daemon. Encoded here, decoded by client/memo.c; decodeMemo exists for tests, the
 * drain and `verify`. Limits are shared with C through the generated client header.
 */

export const MEMO_MAGIC = Buffer.from('LTOMEMO\x01', 'latin1');
export { MEMO_MAX_BYTES, MEMO_MAX_CHECKS, MEMO_MAX_NAME, MEMO_MAX_OUTPUTS } from '../protocol/limits.js';
/** Each captured stream: the client's capture limit. */
export const MEMO_MAX_STREAM = MAX_OUTPUT_STREAM;

export const CheckKind = { stat: 1, content: 2, absent: 3, notreg: 4, dir: 5, env: 6 } as const;

export type MemoCheck =
  /** `digest`: the content the identity stood for when the daemon made the check (not encoded). */
  | { kind: 'stat'; path: string; dev: bigint; ino: bigint; size: bigint; mtimeNs: bigint; ctimeNs: bigint; digest?: Digest }
  /** `at`: the stat identity the file had when its content was hashed for the key (not encoded), and
   *  whether its timestamps were then settled (fileDigests.settledAt): see untouchedSinceKeyed. */
  | { kind: 'content'; path: string; size: number; digest: Digest; at?: KeyedIdentity }
  | { kind: 'absent'; path: string }
  | { kind: 'notreg'; path: string }
  | { kind: 'dir'; path: string; dev: bigint; ino: bigint; mtimeNs: bigint; ctimeNs: bigint }
  | { kind: 'env'; name: string; value: string | null };

export interface KeyedIdentity {
  dev: bigint;
  ino: bigint;
  size: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
  settled: boolean;
}

export interface MemoOutput {
  /** Absolute. */
  path: string;
  digest: Digest;
  size: number;
}

export interface Memo {
  key: string;
  checks: MemoCheck[];
  outputs: MemoOutput[];
  stdout: Buffer;
  stderr: Buffer;
}

export class MemoError extends Error {
  constructor(message: string) {
    super(`memo: ${message}`);
    this.name = 'MemoError';
  }
}

/** The memo's file name: digest of the command exactly as the client received it. */
export function lookupDigest(compiler: string, cwd: string, args: readonly string[]): Digest {
  // One update: the hasher's cost is per call (a copy into wasm memory), not per byte.
  return new Hasher().update(`${MEMO_NAME_TAG}\0${compiler}\0${cwd}\0${args.length ? `${args.join('\0')}\0` : ''}`).digest();
}

export function memoDir(cacheDir: string): string {
  return join(cacheDir, 'memo');
}

export function memoPath(cacheDir: string, lookup: Digest): string {
  return join(memoDir(cacheDir), lookup.slice(0, 2), lookup.slice(2));
}

export function noticeLogPath(cacheDir: string): string {
  return join(memoDir(cacheDir), 'hits.log');
}

/** Appends into one growing buffer: a memo has ~60 checks, and a Buffer per field would be the
 *  daemon's largest source of garbage per job. */
export class Writer {
  private buf = Buffer.allocUnsafe(4096);
  private n = 0;
  /** Reserves k bytes and returns their offset; the buffer may be replaced, so callers read
   *  `this.buf` only after calling it. */
  private room(k: number): number {
    if (this.n + k > this.buf.length) {
      const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.n + k));
      this.buf.copy(next, 0, 0, this.n);
      this.buf = next;
    }
    const at = this.n;
    this.n += k;
    return at;
  }
  u8(v: number): void {
    const at = this.room(1);
    this.buf[at] = v;
  }
  u32(v: number): void {
    const at = this.room(4);
    this.buf.writeUInt32LE(v, at);
  }
  u64(v: bigint | number): void {
    const at = this.room(8);
    this.buf.writeBigUInt64LE(typeof v === 'bigint' ? v : BigInt(v), at);
  }
  bytes(b: Buffer): void {
    this.u32(b.length);
    this.raw(b);
  }
  str(s: string): void {
    const len = Buffer.byteLength(s, 'utf8');
    this.u32(len);
    const at = this.room(len);
    this.buf.write(s, at, len, 'utf8');
  }
  hex(d: string): void {
    if (!DIGEST_RE.test(d)) throw new MemoError(`not a digest: ${d}`);
    const at = this.room(d.length);
    this.buf.write(d, at, d.length, 'latin1');
  }
  raw(b: Buffer): void {
    const at = this.room(b.length);
    this.buf.set(b, at);
  }
  /** Bytes written so far. */
  get length(): number {
    return this.n;
  }
  done(): Buffer {
    return this.buf.subarray(0, this.n);
  }
}

/** The checks memo v1 and team memos (src/memo/teamMemo.ts) encode alike: same kind codes, same fields. */
export type SharedCheck = Extract<MemoCheck, { kind: 'content' | 'absent' | 'notreg' | 'env' }>;

/** A shared check's fields, after its kind and name. */
export function writeSharedFields(w: Writer, c: SharedCheck): void {
  if (c.kind === 'content') {
    w.u64(c.size);
    w.hex(c.digest);
  } else if (c.kind === 'env') {
    w.u8(c.value === null ? 0 : 1);
    w.str(c.value ?? '');
  }
}

/** The shared check of this kind, its fields read; null for a kind that is not shared. */
export function readSharedCheck(r: Reader, kind: number, name: string): SharedCheck | null {
  switch (kind) {
    case CheckKind.content: {
      const size = r.u64();
      if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw new MemoError('bad size');
      return { kind: 'content', path: name, size: Number(size), digest: r.hex() };
    }
    case CheckKind.absent:
      return { kind: 'absent', path: name };
    case CheckKind.notreg:
      return { kind: 'notreg', path: name };
    case CheckKind.env: {
      const set = r.u8();
      if (set > 1) throw new MemoError('bad env flag');
      const value = r.str(MEMO_MAX_NAME);
      return { kind: 'env', name, value: set ? value : null };
    }
    default:
      return null;
  }
}

/**
 * Each check's bytes, once encoded with `reuse`: the memos of one batch (a team pack) share
 * their toolchain's check objects, so most of a memo is copied rather than encoded. A check is
 * never changed after it is made, so its bytes stay right. A job's own memo has checks of its
 * own: kept here, they cost more (a copy, a weak-map entry) than encoding them did.
 */
const encodedChecks = new WeakMap<MemoCheck, Buffer>();

/** The check list, as memo v1 and distribution memos encode it; `reuse`: see encodedChecks. */
export function writeChecks(w: Writer, checks: readonly MemoCheck[], reuse = false): void {
  w.u32(checks.length);
  for (const c of checks) {
    const known = reuse ? encodedChecks.get(c) : undefined;
    if (known) {
      w.raw(known);
      continue;
    }
    const from = w.length;
    w.u8(CheckKind[c.kind]);
    w.str(c.kind === 'env' ? c.name : c.path);
    if (c.kind === 'stat') {
      w.u64(c.dev);
      w.u64(c.ino);
      w.u64(c.size);
      w.u64(c.mtimeNs);
      w.u64(c.ctimeNs);
    } else if (c.kind === 'dir') {
      w.u64(c.dev);
      w.u64(c.ino);
      w.u64(c.mtimeNs);
      w.u64(c.ctimeNs);
    } else writeSharedFields(w, c);
    if (reuse) encodedChecks.set(c, Buffer.from(w.done().subarray(from)));
  }
}

export function writeOutputs(w: Writer, outputs: readonly MemoOutput[]): void {
  w.u32(outputs.length);
  for (const o of outputs) {
    w.str(o.path);
    w.hex(o.digest);
    w.u64(o.size);
  }
}

/** `body` followed by the digest of its bytes. */
export function withTrailer(body: Buffer): Buffer {
  return Buffer.concat([body, Buffer.from(hashBytes(body), 'latin1')]);
}

/** `reuse`: the memo is one of a batch whose memos share check objects (see encodedChecks). */
export function encodeMemo(m: Memo, reuse = false): Buffer {
  if (m.checks.length > MEMO_MAX_CHECKS) throw new MemoError(`${m.checks.length} checks, limit ${MEMO_MAX_CHECKS}`);
  if (m.outputs.length < 1 || m.outputs.length > MEMO_MAX_OUTPUTS) throw new MemoError(`${m.outputs.length} outputs`);
  if (m.stdout.length > MEMO_MAX_STREAM || m.stderr.length > MEMO_MAX_STREAM) throw new MemoError('captured output over the limit');
  const w = new Writer();
  w.raw(MEMO_MAGIC);
  w.hex(m.key);
  writeChecks(w, m.checks, reuse);
  writeOutputs(w, m.outputs);
  w.bytes(m.stdout);
  w.bytes(m.stderr);
  const body = w.done();
  const out = withTrailer(body);
  if (out.length > MEMO_MAX_BYTES) throw new MemoError(`memo of ${out.length} bytes over the limit`);
  return out;
}

export class Reader {
  at = 0;
  constructor(private readonly b: Buffer) {}
  need(n: number): void {
    if (n > this.b.length - this.at) throw new MemoError(`truncated at byte ${this.at}`);
  }
  u8(): number {
    this.need(1);
    return this.b[this.at++]!;
  }
  u32(): number {
    this.need(4);
    const v = this.b.readUInt32LE(this.at);
    this.at += 4;
    return v;
  }
  u64(): bigint {
    this.need(8);
    const v = this.b.readBigUInt64LE(this.at);
    this.at += 8;
    return v;
  }
  bytes(max: number): Buffer {
    const n = this.u32();
    if (n > max) throw new MemoError(`length ${n} over ${max} at byte ${this.at - 4}`);
    this.need(n);
    const v = this.b.subarray(this.at, this.at + n);
    this.at += n;
    return v;
  }
  str(max: number): string {
    return this.bytes(max).toString('utf8');
  }
  hex(): string {
    this.need(32);
    const s = this.b.toString('latin1', this.at, this.at + 32);
    if (!DIGEST_RE.test(s)) throw new MemoError(`bad digest at byte ${this.at}`);
    this.at += 32;
    return s;
  }
}

/** Reads what writeChecks wrote; at most `max` checks. */
export function readChecks(r: Reader, max: number): MemoCheck[] {
  const n = r.u32();
  if (n > max) throw new MemoError(`${n} checks over the limit`);
  const checks: MemoCheck[] = [];
  for (let i = 0; i < n; i++) {
    const kind = r.u8();
    const name = r.str(MEMO_MAX_NAME);
    if (kind === CheckKind.stat) checks.push({ kind: 'stat', path: name, dev: r.u64(), ino: r.u64(), size: r.u64(), mtimeNs: r.u64(), ctimeNs: r.u64() });
    else if (kind === CheckKind.dir) checks.push({ kind: 'dir', path: name, dev: r.u64(), ino: r.u64(), mtimeNs: r.u64(), ctimeNs: r.u64() });
    else {
      const c = readSharedCheck(r, kind, name);
      if (!c) throw new MemoError(`unknown check kind ${kind}`);
      checks.push(c);
    }
  }
  return checks;
}

export function readOutputs(r: Reader): MemoOutput[] {
  const no = r.u32();
  if (no < 1 || no > MEMO_MAX_OUTPUTS) throw new MemoError(`${no} outputs`);
  const outputs: MemoOutput[] = [];
  for (let i = 0; i < no; i++) outputs.push({ path: r.str(MEMO_MAX_NAME), digest: r.hex(), size: Number(r.u64()) });
  return outputs;
}

/** The body of a memo file whose trailer digest is right, or a MemoError. */
export function checkedBody(b: Buffer, magic: Buffer): Buffer {
  if (b.length > MEMO_MAX_BYTES) throw new MemoError('over the size limit');
  if (b.length < magic.length + 32 || !b.subarray(0, magic.length).equals(magic)) throw new MemoError('bad magic or version');
  const body = b.subarray(0, b.length - 32);
  if (hashBytes(body) !== b.toString('latin1', b.length - 32)) throw new MemoError('trailer digest mismatch');
  return body;
}

export function decodeMemo(b: Buffer): Memo {
  const body = checkedBody(b, MEMO_MAGIC);
  const r = new Reader(body);
  r.at = MEMO_MAGIC.length;
  const key = r.hex();
  const checks = readChecks(r, MEMO_MAX_CHECKS);
  const outputs = readOutputs(r);
  const stdout = Buffer.from(r.bytes(MEMO_MAX_STREAM));
  const stderr = Buffer.from(r.bytes(MEMO_MAX_STREAM));
  if (r.at !== body.length) throw new MemoError(`${body.length - r.at} trailing bytes`);
  return { key, checks, outputs, stdout, stderr };
}
