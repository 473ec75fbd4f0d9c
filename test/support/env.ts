import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { StatsView } from '../../src/stats/counters.js';

/** Repository root (tests run from dist/test/...). */
export const TOP = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const CLIENT = join(TOP, 'bin', 'ltocache');
export const CLI = join(TOP, 'dist', 'src', 'cli', 'main.js');
export const FIXTURE = join(TOP, 'test', 'fixtures', 'prog');

export function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `ltocache-${prefix}-`));
}

/** A cache directory of its own, with the environment that points client and CLI at it. */
export class CacheEnv {
  readonly dir: string;
  readonly env: NodeJS.ProcessEnv;

  constructor(prefix: string, extra: Record<string, string> = {}) {
    this.dir = tempDir(`cache-${prefix}`);
    this.env = { ...process.env, LTOCACHE_DIR: this.dir, LTOCACHE_IDLE_TIMEOUT: '120', LTOCACHE_START_TIMEOUT_MS: '10000', ...extra };
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
