import { readFileSync, statSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { isAbsolute } from 'node:path';
import { z } from 'zod';

/** The part of a FileHandle the store uses. node:fs/promises handles satisfy it. */
export interface StoreFileHandle {
  write(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesWritten: number }>;
  sync(): Promise<void>;
  stat(): Promise<{ size: number }>;
  close(): Promise<void>;
}

/**
 * Every file-system call the store makes goes through this seam, so tests can inject
 * ENOSPC / EIO. node:fs/promises satisfies it.
 */
export interface StoreFs {
  open(path: string, flags: string): Promise<StoreFileHandle>;
  readFile(path: string): Promise<Buffer>;
  rename(from: string, to: string): Promise<void>;
  unlink(path: string): Promise<void>;
  stat(path: string): Promise<{ size: number; mtimeMs: number }>;
  /** Every directory of the store is private: `mode` is 0o700. */
  mkdir(path: string, options: { recursive: true; mode: number }): Promise<unknown>;
  readdir(path: string): Promise<string[]>;
  rm(path: string, options: { recursive: true; force: true }): Promise<void>;
}

/** Files up to this size are read synchronously (see nodeFs). */
export const SYNC_READ_MAX = 1 << 20;

/**
 * node:fs/promises, except `stat` and reads of files up to SYNC_READ_MAX: a blob's presence is
 * asked on every adoption, and a kernel object (≈ 11 kB) is read on every hit; a synchronous call
 * on a local file costs less than its round trips through the thread pool (a promise-based
 * readFile is four: open, fstat, read, close). Larger files are read through the thread pool, so
 * that one slow read does not hold the event loop.
 */
export const nodeFs: StoreFs = {
  ...fsp,
  stat: async (path) => statSync(path),
  readFile: async (path) => (statSync(path).size <= SYNC_READ_MAX ? readFileSync(path) : fsp.readFile(path)),
};

const FS_KEYS = ['open', 'readFile', 'rename', 'unlink', 'stat', 'mkdir', 'readdir', 'rm'] as const;

/** A partial seam: missing functions fall back to node:fs/promises. */
const FsSeam = z.custom<Partial<StoreFs>>(
  (v) => typeof v === 'object' && v !== null && Object.entries(v).every(([k, f]) => (FS_KEYS as readonly string[]).includes(k) && typeof f === 'function'),
  { message: `fs must be an object whose members are among ${FS_KEYS.join(', ')} and are functions` },
);

export const GIB = 1024 ** 3;

export const StoreOptions = z.object({
  dir: z.string().refine(isAbsolute, 'dir must be an absolute path'),
  maxBytes: z
    .number()
    .int()
    .positive()
    .default(10 * GIB),
  fs: FsSeam.optional(),
  /** Clock seam (ms since epoch) for the LRU index. */
  now: z.custom<() => number>((v) => typeof v === 'function', 'now must be a function').optional(),
  /** A hit rewrites its LRU position at most this often, to bound write amplification. */
  touchIntervalMs: z.number().int().nonnegative().default(60_000),
  /** Run the background sweep of orphan blobs and broken entries after open. */
  sweepOnOpen: z.boolean().default(true),
  /**
   * fsync each blob and its directory before the entry may point at it. Off for a developer's
   * local cache (a torn blob after a crash fails verify-on-read and is dropped); on for a server.
   */
  durable: z.boolean().default(true),
});
export type StoreOptionsInput = z.input<typeof StoreOptions>;

export interface ResolvedStoreOptions {
  dir: string;
  maxBytes: number;
  fs: StoreFs;
  now: () => number;
  touchIntervalMs: number;
  sweepOnOpen: boolean;
  durable: boolean;
}

export class StoreOptionsError extends Error {
  override name = 'StoreOptionsError';
}

/** Throws StoreOptionsError with a readable message when the options are invalid. */
export function parseStoreOptions(input: unknown): ResolvedStoreOptions {
  const r = StoreOptions.safeParse(input);
  if (!r.success) throw new StoreOptionsError(`invalid store options:\n${z.prettifyError(r.error)}`);
  return {
    dir: r.data.dir,
    maxBytes: r.data.maxBytes,
    fs: r.data.fs ? { ...nodeFs, ...r.data.fs } : nodeFs,
    now: r.data.now ?? Date.now,
    touchIntervalMs: r.data.touchIntervalMs,
    sweepOnOpen: r.data.sweepOnOpen,
    durable: r.data.durable,
  };
}
