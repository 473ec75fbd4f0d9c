import { spawn } from 'node:child_process';

export interface CompilerRun {
  exitCode: number;
  stdout: Buffer;
  stderr: Buffer;
  ms: number;
}

export interface RunOptions {
  compiler: string;
  args: string[];
  cwd: string;
  env: Record<string, string>;
  umask: number;
  /** Aborting kills the compiler's whole process group. */
  signal: AbortSignal;
}

/**
 * Runs the compiler exactly as the client would have: same argv, cwd, environment and umask
 * (so files clang creates get the modes they would have had). Exit status follows the shell
 * convention: 128 + signal number for a signal death.
 */
export function runCompiler(o: RunOptions): Promise<CompilerRun> {
  return new Promise((resolvePromise, reject) => {
    const started = performance.now();
    // umask is process-wide; spawn forks synchronously, so the child inherits this value alone.
    const previous = process.umask(o.umask);
    let child;
    try {
      child = spawn(o.compiler, o.args, { cwd: o.cwd, env: o.env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    } catch (e) {
      reject(e);
      return;
    } finally {
      process.umask(previous);
    }
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    const kill = () => {
      try {
        if (child.pid) process.kill(-child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    };
    if (o.signal.aborted) kill();
    o.signal.addEventListener('abort', kill, { once: true });
    child.on('error', (e) => {
      o.signal.removeEventListener('abort', kill);
      reject(e);
    });
    child.on('close', (code, sig) => {
      o.signal.removeEventListener('abort', kill);
      const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGILL: 4, SIGTRAP: 5, SIGABRT: 6, SIGBUS: 7, SIGFPE: 8, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGTERM: 15 };
      const exitCode = code ?? 128 + (sig ? (SIGNALS[sig] ?? 1) : 1);
      resolvePromise({ exitCode, stdout: Buffer.concat(out), stderr: Buffer.concat(err), ms: performance.now() - started });
    });
  });
}
