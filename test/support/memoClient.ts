/**
 * Shared by the client fast-path tests (test/e2e/memoClient.test.ts, distMemoClient.test.ts): a
 * hand-built cache directory and the native client run against it with no daemon able to start.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import { hashBytes, initHash } from '../../src/key/hash.js';
import { CLIENT, tempDir } from './env.js';

/**
 * A temp directory for a test file's scenarios, made (with the hash initialised) before its
 * tests and removed after them: `next()` names a fresh subdirectory of it.
 */
export function scenarioRoots(prefix: string): { next(): string; dir(): string } {
  let root = '';
  let seq = 0;
  before(async () => {
    await initHash();
    root = fs.realpathSync(tempDir(prefix));
  });
  after(() => fs.rmSync(root, { recursive: true, force: true }));
  return { next: () => path.join(root, `s${++seq}`), dir: () => root };
}

/** The client's environment: this cache, and a daemon that cannot start (the fallback is visible). */
export function baseEnv(cache: string): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    LTOCACHE_DIR: cache,
    LTOCACHE_START_TIMEOUT_MS: '200',
    LTOCACHE_NODE: '/nonexistent',
  };
}

export function runClient(args: string[], cwd: string, env: NodeJS.ProcessEnv) {
  const r = spawnSync(CLIENT, args, { cwd, env, maxBuffer: 64 << 20 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A memo body with its trailer digest appended (for memos edited by hand). */
export function retrail(body: Buffer): Buffer {
  return Buffer.concat([body, Buffer.from(hashBytes(body), 'latin1')]);
}

/** `memo` (a whole memo file) with its body edited in place by `edit` and its trailer made right
 * again: a memo that passes the trailer check and must fail on what `edit` did. */
export function retrailed(memo: Buffer, edit: (body: Buffer) => void): Buffer {
  const body = Buffer.from(memo.subarray(0, -32));
  edit(body);
  return retrail(body);
}

export function blobPath(cache: string, d: string): string {
  return path.join(cache, 'store', 'v1', 'blobs', d.slice(0, 2), d.slice(2));
}

/** Stores `content` as a blob of the local store; returns its digest. */
export function writeBlob(cache: string, content: Buffer): string {
  const d = hashBytes(content);
  fs.mkdirSync(path.dirname(blobPath(cache, d)), { recursive: true });
  fs.writeFileSync(blobPath(cache, d), content);
  return d;
}

/** Hostile rewrites of a memo file's bytes that every memo reader must refuse whole. */
export const HOSTILE_MEMO_BYTES: [string, (memo: Buffer) => Buffer][] = [
  ['memo truncated', (b) => b.subarray(0, -1)],
  ['memo truncated with a valid trailer', (b) => retrail(b.subarray(0, -40))],
  ['memo trailing byte with a valid trailer', (b) => retrail(Buffer.concat([b.subarray(0, -32), Buffer.from([0])]))],
  ['memo garbage', () => randomBytes(4000)],
  ['memo empty', () => Buffer.alloc(0)],
  [
    'memo wrong trailer',
    (b) => {
      const c = Buffer.from(b);
      c[c.length - 1] = c[c.length - 1] === 0x30 ? 0x31 : 0x30;
      return c;
    },
  ],
];

/** chown needs root: the memo rules' "owned by us" cases run only then. */
const IS_ROOT = process.getuid!() === 0;

/** A memo file or the memo directory handed to `nobody`: the client must not trust either. */
const NOT_OURS: [string, (cache: string, memoFile: string) => void][] = [
  ['memo file not owned by us', (_cache, memoFile) => fs.chownSync(memoFile, 65534, 65534)],
  ['memo dir not owned by us', (cache) => fs.chownSync(path.join(cache, 'memo'), 65534, 65534)],
];

/**
 * Registers one test per NOT_OURS case: a fresh scenario, its memo (`file`, under `cache`) handed
 * to `nobody`, then `fellBack` asserts the client declined it.
 */
export function notOursFallbackTests<S extends { cache: string; file: string }>(scenario: () => S, fellBack: (s: S, what: string) => void): void {
  for (const [what, hand] of NOT_OURS) {
    test(`falls back: ${what}`, { skip: !IS_ROOT && 'needs root to chown to nobody' }, () => {
      const s = scenario();
      hand(s.cache, s.file);
      fellBack(s, what);
    });
  }
}
