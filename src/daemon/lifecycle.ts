import { lstatSync, readFileSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { unlink } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { socketDirFor } from '../protocol/clientFrames.js';
import type { Logger } from '../util/log.js';
import { ensurePrivateDir } from './socketPath.js';
import { sweepSocketDir } from './sweepSocketDir.js';

export interface LifecycleOptions {
  dir: string;
  socketPath: string;
  /** Seconds without jobs before `onIdle` (0 = never). */
  idleTimeoutS: number;
  log: Logger;
  onConnection(sock: Socket): void;
  onIdle(): void;
  /**
   * What the daemon stands for is no longer at its paths: the cache directory was removed, renamed
   * or replaced (nothing it stores would be found), or its own code was (an upgrade, a rebuild).
   */
  onStale(what: 'cache directory' | 'code'): void;
  /** A file of the daemon's own code, watched like the cache directory. */
  codeFile?: string;
  /** Called every 500 ms; must not throw. */
  flush(): Promise<void>;
  /** When after the start the socket directory is swept of dead daemons' sockets and old markers (default 5 s: not among a build's first jobs). */
  sweepAfterMs?: number;
}

/**
 * The daemon's process-level duties: the listening socket (and putting it back when its file is
 * removed), the pid file, the idle timer, the periodic counter flush, watching that the cache
 * directory and the daemon's code are still what it started with, and the order of a shutdown's
 * first steps (stop accepting, drain jobs, drop connections).
 */
export class Lifecycle {
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();
  private idleTimer: NodeJS.Timeout | null = null;
  private flushTimer: NodeJS.Timeout | null = null;
  private watch: NodeJS.Timeout | null = null;
  private socketIno = -1;
  /** The identities (pathIdentity) of the cache directory and the code file when the daemon started. */
  private dirId: string | null = null;
  private codeId: string | null = null;
  private stale = false;
  private rebinding = false;
  private closing = false;
  private active = 0;

  constructor(private readonly o: LifecycleOptions) {}

  get activeJobs(): number {
    return this.active;
  }

  async start(): Promise<void> {
    await ensurePrivateDir(socketDirFor(process.getuid!()), process.getuid!());
    await this.bindSocket();
    writeFileSync(this.pidFile, `${process.pid}\n`);
    this.dirId = pathIdentity(this.o.dir, 'dir');
    if (this.o.codeFile) this.codeId = pathIdentity(this.o.codeFile, 'file');
    this.flushTimer = setInterval(() => void this.o.flush(), 500);
    this.flushTimer.unref();
    this.watch = setInterval(() => {
      this.checkStale();
      void this.checkSocket();
    }, 1000);
    this.watch.unref();
    this.armIdle();
    setTimeout(() => void this.sweep(), this.o.sweepAfterMs ?? 5000).unref();
  }

  private async sweep(): Promise<void> {
    if (this.closing) return;
    const { removed } = await sweepSocketDir(socketDirFor(process.getuid!()), this.o.socketPath);
    if (removed.length) this.o.log.info('removed dead sockets and old markers from the socket directory', { removed: removed.length });
  }

  jobStarted(): void {
    this.active++;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = null;
  }

  jobEnded(): void {
    this.active--;
    this.armIdle();
  }

  private get pidFile(): string {
    return join(this.o.dir, 'daemon.pid');
  }

  /** Listens on the socket path; the store lock is held, so a file already there is a dead daemon's. */
  private async bindSocket(): Promise<void> {
    await unlink(this.o.socketPath).catch(() => {});
    const server = createServer((s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
      this.o.onConnection(s);
    });
    await new Promise<void>((res, rej) => {
      server.once('error', rej);
      server.listen(this.o.socketPath, () => res());
    });
    this.server = server;
    this.socketIno = lstatSync(this.o.socketPath).ino;
  }

  /**
   * A removed (or replaced) socket file would make every client start a daemon that cannot take
   * the lock and then fall back after its start timeout: put the socket back.
   */
  private async checkSocket(): Promise<void> {
    if (this.closing || this.rebinding) return;
    let ino = -1;
    try {
      ino = lstatSync(this.o.socketPath).ino;
    } catch {
      // gone
    }
    if (ino === this.socketIno) return;
    this.rebinding = true;
    this.o.log.warn('socket file removed or replaced; listening again', { socket: this.o.socketPath });
    const old = this.server;
    try {
      // Close first: closing a listening Unix socket unlinks its path, which must not be the new one.
      old?.close();
      await ensurePrivateDir(socketDirFor(process.getuid!()), process.getuid!());
      await this.bindSocket();
    } catch (e) {
      this.o.log.error('cannot listen again on the socket', { error: String(e) });
    } finally {
      this.rebinding = false;
    }
  }

  /**
   * A cache directory removed (`rm -rf`), renamed or replaced (a CI job restoring a saved copy)
   * leaves this daemon with a store no path reaches: every job would miss and store nothing, for
   * as long as builds keep it from going idle. Code replaced on disk (an upgrade) leaves an old
   * daemon that a newer client may only be able to pass through. Either way it stops; the next
   * client starts a daemon from what the paths now name. A stat that fails otherwise (EACCES,
   * EIO) is not taken for a change.
   */
  private checkStale(): void {
    if (this.closing || this.stale) return;
    const changed = (path: string | undefined, kind: 'dir' | 'file', was: string | null): boolean => {
      if (path === undefined || was === null) return false;
      try {
        return pathIdentity(path, kind) !== was;
      } catch {
        return false;
      }
    };
    const what = changed(this.o.dir, 'dir', this.dirId) ? 'cache directory' : changed(this.o.codeFile, 'file', this.codeId) ? 'code' : null;
    if (!what) return;
    this.stale = true;
    this.o.log.warn(`${what} removed or replaced; stopping`, { path: what === 'code' ? this.o.codeFile : this.o.dir });
    this.o.onStale(what);
  }

  private armIdle(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = null;
    if (this.closing || this.o.idleTimeoutS <= 0 || this.active > 0) return;
    this.idleTimer = setTimeout(() => {
      this.o.log.info('idle timeout, stopping', { idle_timeout: this.o.idleTimeoutS });
      this.o.onIdle();
    }, this.o.idleTimeoutS * 1000);
  }

  /** Stops the timers and the listener, waits (bounded) for running jobs, then drops every connection. */
  async close(drainMs = 30_000): Promise<void> {
    this.closing = true;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    if (this.flushTimer) clearInterval(this.flushTimer);
    if (this.watch) clearInterval(this.watch);
    // Stops accepting at once; the callback comes only once every connection has ended, so the
    // drain below must not wait for it (a client still compiling would hold the stop unbounded).
    const closed = new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
    const deadline = Date.now() + drainMs;
    while (this.active > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    for (const s of this.sockets) s.destroy();
    await closed;
  }

  /** Removes the pid file if it is still ours. */
  removePidFile(): void {
    try {
      if (readFileSync(this.pidFile, 'utf8').trim() === String(process.pid)) unlinkSync(this.pidFile);
    } catch {
      // no pid file
    }
  }
}

/**
 * What `path` names (following a symbolic link): device, inode and birth time (which tells one
 * made anew from one whose freed inode number it got), for a file also size and modification time
 * (a rebuild may write over it in place; a directory's change with every entry added). Null if no
 * such thing is there; throws for other errors.
 */
function pathIdentity(path: string, kind: 'dir' | 'file'): string | null {
  try {
    const st = statSync(path, { bigint: true });
    const id = `${st.dev}:${st.ino}:${st.birthtimeNs}`;
    if (kind === 'dir') return st.isDirectory() ? id : null;
    return st.isFile() ? `${id}:${st.size}:${st.mtimeNs}` : null;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw e;
  }
}
