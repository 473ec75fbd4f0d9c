import { basename } from 'node:path';
import { type Digest, Hasher } from '../key/hash.js';
import { DIST_MEMO_MAX_CHECKS, DIST_MEMO_MAX_JOBS, DIST_MEMO_NAME_TAG, MAX_OUTPUT_STREAM, MEMO_MAX_BYTES } from '../protocol/limits.js';
import { checkedBody, type MemoCheck, MemoError, type MemoOutput, Reader, readChecks, readOutputs, Writer, withTrailer, writeChecks, writeOutputs } from './memoFormat.js';

/**
 * The distribution memo (cache-schema/distmemo.v1.md, docs/dtlto.md): one file per DTLTO
 * distribution, checked and replayed whole by the native client. lld puts its PID (the link's
 * token) into the file's name and every index and output name; the memo is found by the file's
 * bytes with the token normalised away, and its names hold TOKEN_BYTE where the token goes.
 */

export const DIST_MEMO_MAGIC = Buffer.from('LTODIST\x01', 'latin1');
/** Stands for the link's token in normalised bytes and in a memo's names. */
export const TOKEN_BYTE = '\x01';

export interface DistMemoJob {
  key: string;
  /** The job's notice lookup: the daemon's record of the request it was memoised from. */
  lookup: Digest;
  outputs: MemoOutput[];
  stdout: Buffer;
  stderr: Buffer;
}

export interface DistMemo {
  checks: MemoCheck[];
  jobs: DistMemoJob[];
}

const SUFFIX = '.dist-file.json';

/** The token of a distribution file argument (lld's PID in `prog.<PID>.dist-file.json`), or null. */
export function distToken(fileArg: string): string | null {
  const base = basename(fileArg);
  if (!base.endsWith(SUFFIX)) return null;
  const m = /^.+\.([0-9]{1,19})$/s.exec(base.slice(0, -SUFFIX.length));
  return m ? m[1]! : null;
}

/** Every `.T.` (left to right, not overlapping) becomes `.\x01.`; without a token, the input. */
export function normalizeForToken(s: string, token: string | null): string {
  return token ? s.split(`.${token}.`).join(`.${TOKEN_BYTE}.`) : s;
}

/** The memo's name (cache-schema/distmemo.v1.md): over cwd and the normalised file bytes. */
export function distLookupDigest(cwd: string, fileBytes: Buffer, token: string | null): Digest {
  const h = new Hasher().update(`${DIST_MEMO_NAME_TAG}\0`).update(`${cwd}\0`);
  if (!token) return h.update(fileBytes).digest();
  return h.update(Buffer.from(normalizeForToken(fileBytes.toString('latin1'), token), 'latin1')).digest();
}

export function encodeDistMemo(m: DistMemo): Buffer {
  if (m.checks.length > DIST_MEMO_MAX_CHECKS) throw new MemoError(`${m.checks.length} checks, limit ${DIST_MEMO_MAX_CHECKS}`);
  if (m.jobs.length < 1 || m.jobs.length > DIST_MEMO_MAX_JOBS) throw new MemoError(`${m.jobs.length} jobs`);
  const w = new Writer();
  w.raw(DIST_MEMO_MAGIC);
  writeChecks(w, m.checks);
  w.u32(m.jobs.length);
  for (const j of m.jobs) {
    if (j.stdout.length > MAX_OUTPUT_STREAM || j.stderr.length > MAX_OUTPUT_STREAM) throw new MemoError('captured output over the limit');
    w.hex(j.key);
    w.hex(j.lookup);
    writeOutputs(w, j.outputs);
    w.bytes(j.stdout);
    w.bytes(j.stderr);
  }
  const out = withTrailer(w.done());
  if (out.length > MEMO_MAX_BYTES) throw new MemoError(`memo of ${out.length} bytes over the limit`);
  return out;
}

export function decodeDistMemo(b: Buffer): DistMemo {
  const body = checkedBody(b, DIST_MEMO_MAGIC);
  const r = new Reader(body);
  r.at = DIST_MEMO_MAGIC.length;
  const checks = readChecks(r, DIST_MEMO_MAX_CHECKS);
  const n = r.u32();
  if (n < 1 || n > DIST_MEMO_MAX_JOBS) throw new MemoError(`${n} jobs`);
  const jobs: DistMemoJob[] = [];
  for (let i = 0; i < n; i++) {
    const key = r.hex();
    const lookup = r.hex();
    const outputs = readOutputs(r);
    jobs.push({ key, lookup, outputs, stdout: Buffer.from(r.bytes(MAX_OUTPUT_STREAM)), stderr: Buffer.from(r.bytes(MAX_OUTPUT_STREAM)) });
  }
  if (r.at !== body.length) throw new MemoError(`${body.length - r.at} trailing bytes`);
  return { checks, jobs };
}
