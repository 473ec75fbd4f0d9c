import { readdirSync } from 'node:fs';
import { nowNs as clockNs, settledAt, statIdentity, statOrUndefined } from '../key/fileDigests.js';
import { type Digest, Hasher } from '../key/hash.js';
import { KEY_RULES_EPOCH, MEMO_CONTENT_CHECK_MAX_BYTES, MEMO_MAX_CHECKS, MEMO_MAX_NAME, MEMO_MAX_OUTPUTS, TEAM_MEMO_MAX_BYTES } from '../protocol/limits.js';
import {
  CheckKind,
  checkedBody,
  MEMO_MAX_STREAM,
  type Memo,
  type MemoCheck,
  MemoError,
  Reader,
  readSharedCheck,
  type SharedCheck,
  Writer,
  withTrailer,
  writeSharedFields,
} from './memoFormat.js';

/**
 * The team memo (cache-schema/teammemo.v1.md): a memo made portable, so that a teammate's daemon
 * can turn it into a memo of its own machine (docs/team-cache.md "Team memos"). Every check that a
 * local memo makes by stat identity is made here by content, and a directory check by the names
 * it lists: nothing in it depends on one machine's inodes or timestamps.
 */
export const TEAM_MEMO_MAGIC = Buffer.from('LTOTEAM\x01', 'latin1');

/** CONTENT, ABSENT, NOTREG and ENV are memo v1's codes and fields (readSharedCheck). */
const Kind = { content: CheckKind.content, absent: CheckKind.absent, notreg: CheckKind.notreg, env: CheckKind.env, dirlist: 7, file: 8 } as const;

export type TeamCheck =
  /** A file the origin checked by stat identity: here too, where it is settled. */
  | { kind: 'file'; path: string; size: number; digest: Digest }
  /** A file checked by content wherever it is (rewritten with the same bytes by every build). */
  | { kind: 'content'; path: string; size: number; digest: Digest }
  | { kind: 'absent'; path: string }
  | { kind: 'notreg'; path: string }
  /** A directory whose entries are exactly these names (digest of the sorted names). */
  | { kind: 'dirlist'; path: string; digest: Digest }
  | { kind: 'env'; name: string; value: string | null };

export interface TeamOutput {
  role: string;
  /** Absolute. */
  path: string;
  digest: Digest;
  size: number;
}

export interface TeamMemo {
  /** The memo's name: lookupDigest of the command (src/memo/memoFormat.ts). */
  lookup: Digest;
  key: Digest;
  checks: TeamCheck[];
  outputs: TeamOutput[];
  stdout: Buffer;
  stderr: Buffer;
}

/**
 * The scope a team memo is shared under: the commands one build runs (the same compiler as given,
 * resolving to the same executable path, in the same directory). A daemon asks for a scope's
 * memos when its first job of the scope misses. The resolved path is in it because the libraries
 * the loader maps are found relative to it (`$ORIGIN`): the same binary installed under another
 * prefix may load other libraries than the ones a memo checks.
 */
export function scopeDigest(compiler: string, realpath: string, cwd: string): Digest {
  return new Hasher().update(`ltocache-scope-v2-e${KEY_RULES_EPOCH}\0${compiler}\0${realpath}\0${cwd}\0`).digest();
}

/** Digest of a directory's entry names, sorted. */
export function listingDigest(names: readonly string[]): Digest {
  return new Hasher().update(`${[...names].sort().join('\0')}\0`).digest();
}

export function encodeTeamMemo(m: TeamMemo): Buffer {
  if (m.checks.length > MEMO_MAX_CHECKS) throw new MemoError(`${m.checks.length} checks, limit ${MEMO_MAX_CHECKS}`);
  if (m.outputs.length < 1 || m.outputs.length > MEMO_MAX_OUTPUTS) throw new MemoError(`${m.outputs.length} outputs`);
  const w = new Writer();
  w.raw(TEAM_MEMO_MAGIC);
  w.hex(m.lookup);
  w.hex(m.key);
  w.u32(m.checks.length);
  for (const c of m.checks) {
    w.u8(Kind[c.kind]);
    w.str(c.kind === 'env' ? c.name : c.path);
    if (c.kind === 'file') writeSharedFields(w, { ...c, kind: 'content' });
    else if (c.kind === 'dirlist') w.hex(c.digest);
    else writeSharedFields(w, c);
  }
  w.u32(m.outputs.length);
  for (const o of m.outputs) {
    w.str(o.role);
    w.str(o.path);
    w.hex(o.digest);
    w.u64(o.size);
  }
  w.bytes(m.stdout);
  w.bytes(m.stderr);
  const out = withTrailer(w.done());
  if (out.length > TEAM_MEMO_MAX_BYTES) throw new MemoError(`team memo of ${out.length} bytes over the limit`);
  return out;
}

function hexAt(b: Buffer, at: number): Digest | null {
  if (b.length < at + 32) return null;
  const s = b.toString('latin1', at, at + 32);
  return /^[0-9a-f]{32}$/.test(s) ? s : null;
}

/** The lookup a team memo names, read without decoding it (null if it is too short to name one). */
export function teamMemoLookup(b: Buffer): Digest | null {
  return hexAt(b, TEAM_MEMO_MAGIC.length);
}

/** The key a team memo names, read without decoding it (the memo is validated when claimed). */
export function teamMemoKey(b: Buffer): Digest | null {
  return hexAt(b, TEAM_MEMO_MAGIC.length + 32);
}

/** Decodes and validates a team memo (it comes from the network): a MemoError names what is wrong. */
export function decodeTeamMemo(b: Buffer): TeamMemo {
  return new TeamMemoDecoder().decode(b);
}

/** One team memo's checks as decoded: their bytes, and where each ends in them. */
interface DecodedChecks {
  bytes: Buffer;
  ends: number[];
  checks: TeamCheck[];
}

/**
 * Decodes the team memos of one batch (a scope's list). The checks a memo shares byte for byte
 * with the one decoded before it (a scope's toolchain and environment: some 60 of each memo's
 * checks) are taken from that memo instead of being decoded again. The check objects are then
 * shared between memos, so nothing may change one after decoding.
 */
export class TeamMemoDecoder {
  private prev: DecodedChecks | null = null;

  decode(b: Buffer): TeamMemo {
    if (b.length > TEAM_MEMO_MAX_BYTES) throw new MemoError('team memo over the size limit');
    const body = checkedBody(b, TEAM_MEMO_MAGIC);
    const r = new Reader(body);
    r.at = TEAM_MEMO_MAGIC.length;
    const lookup = r.hex();
    const key = r.hex();
    const n = r.u32();
    if (n > MEMO_MAX_CHECKS) throw new MemoError(`${n} checks over the limit`);
    const start = r.at;
    const checks: TeamCheck[] = [];
    const ends: number[] = [];
    const shared = this.sharedPrefix(body, start, n);
    for (let i = 0; i < shared; i++) {
      checks.push(this.prev!.checks[i]!);
      ends.push(this.prev!.ends[i]!);
    }
    if (shared) r.at = start + ends[shared - 1]!;
    for (let i = shared; i < n; i++) {
      checks.push(readTeamCheck(r));
      ends.push(r.at - start);
    }
    this.prev = { bytes: body.subarray(start, r.at), ends, checks };
    const no = r.u32();
    if (no < 1 || no > MEMO_MAX_OUTPUTS) throw new MemoError(`${no} outputs`);
    const outputs: TeamOutput[] = [];
    for (let i = 0; i < no; i++) {
      const role = r.str(MEMO_MAX_NAME);
      const path = r.str(MEMO_MAX_NAME);
      if (!path.startsWith('/')) throw new MemoError(`relative output path '${path}'`);
      const digest = r.hex();
      const size = r.u64();
      if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw new MemoError('bad output size');
      outputs.push({ role, path, digest, size: Number(size) });
    }
    const stdout = Buffer.from(r.bytes(MEMO_MAX_STREAM));
    const stderr = Buffer.from(r.bytes(MEMO_MAX_STREAM));
    if (r.at !== body.length) throw new MemoError(`${body.length - r.at} trailing bytes`);
    // A memo that checks no file could be served to any command of its name: not accepted.
    if (!checks.some((c) => c.kind === 'content' || c.kind === 'file')) throw new MemoError('team memo checks no file content');
    return { lookup, key, checks, outputs, stdout, stderr };
  }

  /** How many of the `n` checks at `start` of `body` are byte for byte the previous memo's first ones. */
  private sharedPrefix(body: Buffer, start: number, n: number): number {
    const prev = this.prev;
    if (!prev) return 0;
    const same = (k: number) => {
      const len = prev.ends[k - 1]!;
      return start + len <= body.length && body.compare(prev.bytes, 0, len, start, start + len) === 0;
    };
    // The shared checks are a prefix: bytes equal up to a check's end decode to the same checks.
    let lo = 0;
    let hi = Math.min(n, prev.checks.length);
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (same(mid)) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }
}

/** One check of a team memo, validated. */
function readTeamCheck(r: Reader): TeamCheck {
  const kind = r.u8();
  const name = r.str(MEMO_MAX_NAME);
  if (kind !== Kind.env && !name.startsWith('/')) throw new MemoError(`check of a relative path '${name}'`);
  if (kind === Kind.dirlist) return { kind: 'dirlist', path: name, digest: r.hex() };
  if (kind === Kind.file) return { ...(readSharedCheck(r, Kind.content, name) as Extract<SharedCheck, { kind: 'content' }>), kind: 'file' };
  const c = readSharedCheck(r, kind, name);
  if (!c) throw new MemoError(`unknown team check kind ${kind}`);
  return c;
}

/** The names a directory lists now, if its stat identity is still `c`'s (else null: it changed). */
function listingIfUnchanged(path: string, before: { dev: bigint; ino: bigint; mtimeNs: bigint; ctimeNs: bigint }): Digest | null {
  let names: string[];
  try {
    names = readdirSync(path);
  } catch {
    return null;
  }
  const after = statOrUndefined(path);
  if (!after?.isDirectory() || after.dev !== before.dev || after.ino !== before.ino || after.mtimeNs !== before.mtimeNs || after.ctimeNs !== before.ctimeNs) return null;
  return listingDigest(names);
}

/** Listings by directory and stat identity: every memo of a build checks the same few directories. */
const listings = new Map<string, Digest>();

/** The listing digest of a directory whose stat identity is `st`, or null when it no longer is. */
function listingOf(path: string, st: { dev: bigint; ino: bigint; mtimeNs: bigint; ctimeNs: bigint }): Digest | null {
  const id = `${path}\0${statIdentity(st)}`;
  let d = listings.get(id);
  if (!d) {
    const got = listingIfUnchanged(path, st);
    if (!got) return null;
    if (listings.size >= 4096) listings.clear();
    listings.set(id, got);
    d = got;
  }
  return d;
}

/**
 * The team memo of a memo this daemon wrote, or null when one of its checks cannot be made
 * portable: a stat check without the digest it stood for, a directory that changed since.
 * Listings are memoised by the directory's stat identity (the toolchain's few directories recur
 * in every job).
 */
export function teamMemoOf(lookup: Digest, memo: Memo, roles: readonly string[]): TeamMemo | null {
  if (roles.length !== memo.outputs.length) return null;
  const checks: TeamCheck[] = [];
  for (const c of memo.checks) {
    switch (c.kind) {
      case 'stat':
        if (!c.digest) return null;
        checks.push({ kind: 'file', path: c.path, size: Number(c.size), digest: c.digest });
        break;
      case 'dir': {
        const d = listingOf(c.path, c);
        if (!d) return null;
        checks.push({ kind: 'dirlist', path: c.path, digest: d });
        break;
      }
      case 'content':
        // Without `at`: a stat identity is this machine's.
        checks.push({ kind: 'content', path: c.path, size: c.size, digest: c.digest });
        break;
      default:
        checks.push(c);
    }
  }
  return { lookup, key: memo.key, checks, outputs: memo.outputs.map((o, i) => ({ role: roles[i]!, ...o })), stdout: memo.stdout, stderr: memo.stderr };
}

/** What localising a team memo needs of the daemon's file digests (src/key/fileDigests.ts). */
export interface LocalFiles {
  digest(
    absPath: string,
  ): Promise<
    | { kind: 'file'; digest: Digest; size: number; stat: { dev: bigint; ino: bigint; size: bigint; mtimeNs: bigint; ctimeNs: bigint }; settled: boolean }
    | { kind: 'absent' }
    | { kind: 'not-regular' }
  >;
}

/**
 * This machine's memo for a team memo: every check holds here now, each made the way this
 * daemon's own memos make it (a stat identity where the file is settled, else its content). Null,
 * with the reason, when one does not hold. Environment checks are kept: the command's environment
 * is checked when it is served.
 */
export async function localise(
  t: TeamMemo,
  files: LocalFiles,
  nowNs: bigint = clockNs(),
  seen?: Map<TeamCheck | string, MemoCheck | { why: string }>,
): Promise<{ memo: Memo } | { why: string }> {
  const checks: MemoCheck[] = [];
  for (const c of t.checks) {
    // Kept as it is, without an await: a kernel memo has some 30 of them, 13,000 in a batch.
    if (c.kind === 'env') {
      checks.push(c);
      continue;
    }
    // A check made for an earlier memo of the same batch stands: what was seen then is what the
    // memo records, and the client checks it again. Found by the check itself first (memos of one
    // TeamMemoDecoder share their toolchain's check objects), else by what it checks.
    let made = seen?.get(c);
    const id = seen && !made ? checkId(c) : '';
    if (id) made = seen!.get(id);
    if (made) {
      if ('why' in made) return made;
      checks.push(made);
      continue;
    }
    const n = checks.length;
    const r = await localiseCheck(c, files, nowNs, checks);
    if (id) {
      seen!.set(id, r ?? checks[n]!);
      seen!.set(c, r ?? checks[n]!);
    }
    if (r) return r;
  }
  return { memo: { key: t.key, checks, outputs: t.outputs.map(({ path, digest, size }) => ({ path, digest, size })), stdout: t.stdout, stderr: t.stderr } };
}

function checkId(c: Exclude<TeamCheck, { kind: 'env' }>): string {
  return `${c.kind}\0${c.path}\0${'size' in c ? c.size : ''}\0${'digest' in c ? c.digest : ''}`;
}

/** Makes one check of a team memo on this machine: pushed to `checks`, or the reason it does not hold. */
async function localiseCheck(c: Exclude<TeamCheck, { kind: 'env' }>, files: LocalFiles, nowNs: bigint, checks: MemoCheck[]): Promise<{ why: string } | null> {
  switch (c.kind) {
    case 'file':
    case 'content': {
      const d = await files.digest(c.path);
      if (d.kind !== 'file' || d.size !== c.size || d.digest !== c.digest) return { why: `${c.path} differs` };
      // As for this daemon's own memos (ObservingFiles.memoable): no memo that would hash a large
      // file on every hit.
      if (c.kind === 'file' && !d.settled && c.size > MEMO_CONTENT_CHECK_MAX_BYTES) return { why: `${c.path} changed just now` };
      checks.push(
        c.kind === 'file' && d.settled
          ? { kind: 'stat', path: c.path, ...d.stat, digest: d.digest }
          : { kind: 'content', path: c.path, size: c.size, digest: c.digest, at: { ...d.stat, settled: d.settled } },
      );
      break;
    }
    case 'absent': {
      const d = await files.digest(c.path);
      if (d.kind !== 'absent') return { why: `${c.path} exists` };
      checks.push(c);
      break;
    }
    case 'notreg': {
      const d = await files.digest(c.path);
      if (d.kind !== 'not-regular') return { why: `${c.path} is a regular file or absent` };
      checks.push(c);
      break;
    }
    case 'dirlist': {
      const st = statOrUndefined(c.path);
      if (!st?.isDirectory()) return { why: `${c.path} is not a directory` };
      if (!settledAt(st, nowNs)) return { why: `${c.path} changed just now` };
      const listed = listingOf(c.path, st);
      if (!listed) return { why: `${c.path} changed while listed` };
      if (listed !== c.digest) return { why: `${c.path} lists other entries` };
      checks.push({ kind: 'dir', path: c.path, dev: st.dev, ino: st.ino, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs });
      break;
    }
  }
  return null;
}
