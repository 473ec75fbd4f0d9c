import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import type { StatsView } from '../../src/stats/counters.js';

/** Repository root (tests run from dist/test/...). */
export const TOP = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const CLIENT = join(TOP, 'bin', 'ltocache');
export const CLI = join(TOP, 'dist', 'src', 'cli', 'main.js');
export const FIXTURE = join(TOP, 'test', 'fixtures', 'prog');

/**
 * What the test file's process made in the temp directory, and what to stop before removing it:
 * removed when the process exits, pass or fail, after every `after` hook of the file has run (a
 * root-level `after` here would run before the file's own, and one registered inside a `before`
 * hook runs when that hook ends), so no test needs an `after` block of its own for a temp dir.
 */
const tempDirs = new Set<string>();
const stopAtExit = new Set<() => void>();
let exitHooked = false;

function hookExit(): void {
  if (exitHooked) return;
  exitHooked = true;
  process.on('exit', removeTempDirs);
  // `node --test` ends a file that outlives its timeout with SIGTERM, and Ctrl-C sends SIGINT: clean
  // up, then die of the same signal as before (the listener is gone, so the default action runs).
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      removeTempDirs();
      process.kill(process.pid, sig);
    });
  }
}

/** At exit (of a test file's process or a bench script), before the temp dirs are removed. */
export function onExitStop(stop: () => void): () => void {
  hookExit();
  stopAtExit.add(stop);
  return () => stopAtExit.delete(stop);
}

/** Stops what is still running, then removes every directory tempDir made (best effort each). */
export function removeTempDirs(): void {
  for (const stop of [...stopAtExit].reverse()) {
    try {
      stop();
    } catch {
      // best effort: one failure skips none of the rest
    }
  }
  stopAtExit.clear();
  for (const d of tempDirs) {
    try {
      rmSync(d, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
    } catch {
      // best effort
    }
  }
  tempDirs.clear();
}

/**
 * Removes `dir` while another process may still be writing into it (a daemon finishing a job's
 * bookkeeping after its answer). rmSync's own retries only repeat the last rmdir, not the walk, so
 * an entry made after the walk fails every retry: the whole removal is tried again instead.
 */
export async function removeWhileWritten(dir: string, ms = 10_000): Promise<void> {
  for (const deadline = Date.now() + ms; ; ) {
    try {
      rmSync(dir, { recursive: true, force: true });
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOTEMPTY' || Date.now() > deadline) throw e;
      await sleep(20);
    }
  }
}

/** A fresh directory in the temp dir, removed when the process exits (see removeTempDirs). */
export function tempDir(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), `ltocache-${prefix}-`));
  hookExit();
  tempDirs.add(d);
  return d;
}

/** Whether a process of this id is running (signal 0 only checks). */
export function alive(pid: number | null | undefined): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A cache directory of its own, with the environment that points client and CLI at it. */
export class CacheEnv {
  readonly dir: string;
  readonly env: NodeJS.ProcessEnv;

  constructor(prefix: string, extra: Record<string, string> = {}) {
    this.dir = tempDir(`cache-${prefix}`);
    this.env = { ...process.env, LTOCACHE_DIR: this.dir, LTOCACHE_IDLE_TIMEOUT: '120', LTOCACHE_START_TIMEOUT_MS: '10000', ...extra };
    // A daemon left running (a test that failed before destroy, or never called it) is stopped
    // before its directory is removed, so that it takes its socket with it and writes nothing after.
    onExitStop(() => {
      if (alive(this.daemonPid())) this.stop();
    });
  }

  cli(args: string[]): { status: number; stdout: string; stderr: string } {
    const r = spawnSync(process.execPath, [CLI, ...args], { env: this.env, encoding: 'utf8' });
    return { status: r.status ?? 128, stdout: r.stdout, stderr: r.stderr };
  }

  stats(): StatsView {
    const r = this.cli(['stats', '--json']);
    if (r.status !== 0) throw new Error(`stats failed: ${r.stderr}`);
    return JSON.parse(r.stdout) as StatsView;
  }

  start(): void {
    const r = this.cli(['daemon', 'start']);
    if (r.status !== 0) throw new Error(`daemon start failed: ${r.stderr}`);
  }

  daemonPid(): number | null {
    const f = join(this.dir, 'daemon.pid');
    return existsSync(f) ? Number(readFileSync(f, 'utf8').trim()) : null;
  }

  stop(): void {
    this.cli(['daemon', 'stop']);
  }

  destroy(): void {
    this.stop();
    rmSync(this.dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
  }
}

/** Runs a command asynchronously, collecting output. */
export function runAsync(cmd: string, args: string[], opts: { cwd: string; env?: NodeJS.ProcessEnv }): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((res, rej) => {
    const c = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('error', rej);
    c.on('close', (code, sig) => res({ status: code ?? (sig ? 128 : 1), stdout, stderr }));
  });
}
