import { type ChildProcess, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, onExitStop, tempDir } from './env.js';

export const TOKENS = {
  write: 'ci-writer-secret-0123456789abcdef',
  read: 'dev-reader-secret-0123456789abcdef',
  admin: 'admin-secret-0123456789abcdef0123',
};

/** A real `ltocache serve` process on a loopback port. */
export class ServerProcess {
  child: ChildProcess | null = null;
  url = '';
  readonly dir: string;
  readonly tokensFile: string;

  /** With `storage` (a redis:// URL) the server uses it instead of a directory of its own. */
  constructor(
    readonly extraArgs: string[] = [],
    readonly storage: string | null = null,
  ) {
    this.dir = tempDir('server');
    this.tokensFile = join(this.dir, 'tokens');
    writeFileSync(this.tokensFile, `# name scope secret\nci write ${TOKENS.write}\ndev read ${TOKENS.read}\nops admin ${TOKENS.admin}\n`);
  }

  /** Starts (or restarts, on the same port when it had one) and resolves with the ws:// URL. */
  async start(port = 0): Promise<string> {
    const child = spawn(
      process.execPath,
      [
        CLI,
        'serve',
        '--listen',
        `127.0.0.1:${port}`,
        ...(this.storage ? ['--storage', this.storage] : ['--dir', join(this.dir, 'data')]),
        '--tokens',
        this.tokensFile,
        ...this.extraArgs,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.child = child;
    killAtExit(child);
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    this.url = await new Promise<string>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`server did not start: ${err}`)), 20_000);
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /listening on (wss?:\/\/\S+)/.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]!);
        }
      });
      child.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`server exited ${code}: ${err}`));
      });
    });
    return this.url;
  }

  get port(): number {
    return Number(new URL(this.url).port);
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    return killChild(this.child, signal);
  }
}

/** SIGKILLs the child at exit if it is still running (a test that failed before stopping it), before the temp dirs go. */
export function killAtExit(c: ChildProcess): void {
  const forget = onExitStop(() => {
    if (c.pid !== undefined && c.exitCode === null && c.signalCode === null) process.kill(c.pid, 'SIGKILL');
  });
  c.once('exit', forget);
}

/** Signals a child process and resolves once it has exited (at once if it already has). */
export function killChild(c: ChildProcess | null | undefined, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  if (!c || c.exitCode !== null || c.signalCode !== null) return Promise.resolve();
  return new Promise((r) => {
    c.once('exit', () => r());
    c.kill(signal);
  });
}
