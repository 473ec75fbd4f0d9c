import { closeSync, mkdirSync, openSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { DIGEST_RE, type Digest, hashBytes } from '../key/hash.js';
import { tempSuffix } from '../util/tempSuffix.js';
import { nodeFs, type StoreFileHandle, type StoreFs } from './storeOptions.js';

export type BlobCheck = { ok: true; data: Buffer } | { ok: false; problem: 'missing' | 'size' | 'digest'; detail: string };

/** Blobs up to this size are written synchronously when nothing is fsynced (see writeSmall). */
const SMALL = 1 << 20;
const SHARD_RE = /^[0-9a-f]{2}$/;
const REST_RE = /^[0-9a-f]{30}$/;

function errno(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

/**
 * Content-addressed files `blobs/<2 hex>/<30 hex>`. A file appears under its name only complete
 * (tmp + rename); when `durable`, also fsynced with its directory, so a crash leaves at worst an
 * orphan in tmp/. Without it a crash may leave a torn blob, which verify-on-read drops.
 */
export class BlobStore {
  /** Shard directories known to exist; emptied when blob files or directories are deleted. */
  private readonly dirs = new Set<string>();
  /** Counts the deletions of blob files: unchanged, a file written since is still there. */
  removals = 0;

  constructor(
    private readonly blobsDir: string,
    private readonly tmpDir: string,
    private readonly fs: StoreFs,
    private readonly durable = true,
  ) {}

  pathOf(digest: Digest): string {
    return join(this.blobsDir, digest.slice(0, 2), digest.slice(2));
  }

  /** True when a file of `size` bytes sits under the digest's name. Contents are not read. */
  async present(digest: Digest, size: number): Promise<boolean> {
    try {
      return (await this.fs.stat(this.pathOf(digest))).size === size;
    } catch (e) {
      if (errno(e) === 'ENOENT') return false;
      throw e;
    }
  }

  /** The blob file's modification time in ms, or -Infinity when it is not there. */
  async modifiedMs(digest: Digest): Promise<number> {
    try {
      return (await this.fs.stat(this.pathOf(digest))).mtimeMs;
    } catch (e) {
      if (errno(e) === 'ENOENT') return Number.NEGATIVE_INFINITY;
      throw e;
    }
  }

  /**
   * Stores `data` under `digest`; the caller has checked hashBytes(data) === digest.
   * Skips the write when a file of the right size is already there. Throws on I/O errors,
   * leaving no temp file behind.
   */
  async write(digest: Digest, data: Uint8Array): Promise<void> {
    if (!this.durable && this.fs === nodeFs && data.length <= SMALL) return this.writeSmall(digest, data);
    if (await this.present(digest, data.length)) return;
    const dest = this.pathOf(digest);
    const tmp = this.tmpPath(digest);
    const dir = dirname(dest);
    let fh: StoreFileHandle | undefined;
    try {
      fh = await this.fs.open(tmp, 'wx');
      for (let off = 0; off < data.length; ) {
        const { bytesWritten } = await fh.write(data, off, data.length - off, off);
        if (bytesWritten <= 0) throw new Error(`blob ${digest}: write made no progress at ${off}/${data.length}`);
        off += bytesWritten;
      }
      if (this.durable) {
        await fh.sync();
        const { size } = await fh.stat();
        if (size !== data.length) throw new Error(`blob ${digest}: wrote ${size} bytes, expected ${data.length}`);
      }
      await fh.close();
      fh = undefined;
      if (!this.dirs.has(dir)) {
        await this.fs.mkdir(dir, { recursive: true, mode: 0o700 });
        this.dirs.add(dir);
      }
      try {
        await this.fs.rename(tmp, dest);
      } catch (e) {
        // The shard directory went away behind our back: make it again, once.
        if (errno(e) !== 'ENOENT') throw e;
        this.dirs.delete(dir);
        await this.fs.mkdir(dir, { recursive: true, mode: 0o700 });
        this.dirs.add(dir);
        await this.fs.rename(tmp, dest);
      }
    } catch (e) {
      await fh?.close().catch(() => {});
      await this.fs.unlink(tmp).catch(() => {});
      throw e;
    }
    if (this.durable) await this.syncDir(dir);
  }

  /**
   * write() for a small blob without fsync, on the real file system: a copy into the page cache,
   * cheaper done synchronously than through five thread-pool round trips, and too short to hold
   * up the event loop. Same contract as write().
   */
  private writeSmall(digest: Digest, data: Uint8Array): void {
    const dest = this.pathOf(digest);
    // No exception for the usual answer (absent): building one costs more than the stat.
    if (statSync(dest, { throwIfNoEntry: false })?.size === data.length) return;
    const dir = dirname(dest);
    const tmp = this.tmpPath(digest);
    let fd: number | undefined;
    try {
      fd = openSync(tmp, 'wx');
      for (let off = 0; off < data.length; ) {
        const n = writeSync(fd, data, off, data.length - off, off);
        if (n <= 0) throw new Error(`blob ${digest}: write made no progress at ${off}/${data.length}`);
        off += n;
      }
      closeSync(fd);
      fd = undefined;
      if (!this.dirs.has(dir)) {
        mkdirSync(dir, { recursive: true, mode: 0o700 });
        this.dirs.add(dir);
      }
      try {
        renameSync(tmp, dest);
      } catch (e) {
        // The shard directory went away behind our back: make it again, once.
        if (errno(e) !== 'ENOENT') throw e;
        this.dirs.delete(dir);
        mkdirSync(dir, { recursive: true, mode: 0o700 });
        this.dirs.add(dir);
        renameSync(tmp, dest);
      }
    } catch (e) {
      if (fd !== undefined) {
        try {
          closeSync(fd);
        } catch {
          // already failed
        }
      }
      try {
        unlinkSync(tmp);
      } catch {
        // never created, or already renamed
      }
      throw e;
    }
  }

  /** Reads a blob and checks its size and digest. Throws only on I/O errors other than ENOENT. */
  async read(digest: Digest, size: number): Promise<BlobCheck> {
    let data: Buffer;
    try {
      data = await this.fs.readFile(this.pathOf(digest));
    } catch (e) {
      if (errno(e) === 'ENOENT') return { ok: false, problem: 'missing', detail: `blob ${digest} is missing` };
      throw e;
    }
    if (data.length !== size) {
      return { ok: false, problem: 'size', detail: `blob ${digest} has ${data.length} bytes, expected ${size}` };
    }
    const actual = hashBytes(data);
    if (actual !== digest) return { ok: false, problem: 'digest', detail: `blob ${digest} hashes to ${actual}` };
    return { ok: true, data };
  }

  /**
   * Idempotent: a missing file is not an error. `removals` moves before and after, so a write
   * whose generation was taken while the unlink was under way still sees it.
   */
  async remove(digest: Digest): Promise<void> {
    this.removals++;
    try {
      await this.fs.unlink(this.pathOf(digest));
    } catch (e) {
      if (errno(e) !== 'ENOENT') throw e;
    } finally {
      this.removals++;
    }
  }

  /** Digests of the blob files, one shard directory at a time. Files with other names are skipped. */
  async *shards(): AsyncGenerator<Digest[]> {
    for (const shard of (await this.fs.readdir(this.blobsDir)).sort()) {
      if (!SHARD_RE.test(shard)) continue;
      let names: string[];
      try {
        names = await this.fs.readdir(join(this.blobsDir, shard));
      } catch (e) {
        if (errno(e) === 'ENOENT' || errno(e) === 'ENOTDIR') continue;
        throw e;
      }
      const digests = names.filter((n) => REST_RE.test(n)).map((n) => shard + n);
      if (digests.length > 0) yield digests.filter((d) => DIGEST_RE.test(d));
    }
  }

  /** Removes everything in tmp/; only safe before any write can be in flight. Returns the count. */
  async sweepTmp(): Promise<number> {
    const names = await this.fs.readdir(this.tmpDir);
    for (const n of names) await this.fs.rm(join(this.tmpDir, n), { recursive: true, force: true });
    return names.length;
  }

  /**
   * Deletes every blob file. The shard directories stay, so that the puts after a clear make
   * none again; anything else in blobs/ goes. tmp/ is left to the writes in flight that own its
   * files.
   */
  async removeAll(): Promise<void> {
    // Before and after, as for remove: a write begun during the removal rewrites its blob.
    this.removals++;
    try {
      for (const n of await this.fs.readdir(this.blobsDir)) {
        const path = join(this.blobsDir, n);
        let files: string[] | null = null;
        if (SHARD_RE.test(n)) {
          try {
            files = await this.fs.readdir(path);
          } catch (e) {
            if (errno(e) !== 'ENOTDIR' && errno(e) !== 'ENOENT') throw e;
          }
        }
        if (files === null) {
          this.dirs.delete(path);
          await this.fs.rm(path, { recursive: true, force: true });
        } else for (const f of files) await this.fs.rm(join(path, f), { recursive: true, force: true });
      }
    } finally {
      this.removals++;
    }
  }

  private tmpPath(digest: Digest): string {
    return join(this.tmpDir, `${digest}.${tempSuffix()}`);
  }

  /** Makes the rename that created a blob durable before LevelDB may point at it. */
  private async syncDir(dir: string): Promise<void> {
    const fh = await this.fs.open(dir, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  }
}
