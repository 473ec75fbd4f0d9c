import { type ChildProcessByStdio, spawn } from 'node:child_process';
import { constants } from 'node:os';
import type { Readable } from 'node:stream';

export interface CompilerRun {
  /** Exit status, or 128+N when killed by signal N (so a non-zero test still sees a failure). */
  exitCode: number;
  /** The signal that killed the compiler, 0 if it exited. Carried to the client apart from
   * exitCode: a compiler that exits 130 and one killed by SIGINT are replayed differently. */
  signal: number;
  stdout: Buffer;
  stderr: Buffer;
  ms: number;
  /** A clean run whose outputs the requester stored as blobs itself; stdout and stderr were empty. */
  stored?: RequesterStored;
}

/**
 * What a requester reports having stored ('E', docs/protocol.md): each output's blob, in the
 * order of the memo it was sent, and whether it wrote that memo. The session maps the wire's
 * `Stored` onto it: the pipeline knows no transport.
 */
export interface RequesterStored {
  outputs: { digest: string; size: number }[];
  memoWritten: boolean;
}

export interface RunOptions {
  compiler: string;
  args: string[];
  cwd: string;
  env: Record<string, string>;
  umask: number;
  /** Aborting stops the compiler's whole process group: SIGTERM, then SIGKILL after KILL_GRACE_MS. */
  signal: AbortSignal;
}

/**
 * How long an aborted compiler has to end by SIGTERM before its process group is killed. clang
 * removes its temp object (`<output>-XXXXXXXX.tmp`, beside the output) on SIGTERM, not on SIGKILL;
 * the native client gives its compiler the same second (docs/protocol.md, 'M').
 */
export const KILL_GRACE_MS = 1000;

/**
 * Runs the compiler exactly as the client would have: same argv, cwd, environment and umask
 * (so files clang creates get the modes they would have had).
 */
export function runCompiler(o: RunOptions): Promise<CompilerRun> {
  return new Promise((resolvePromise, reject) => {
    const started = performance.now();
    // umask is process-wide; spawn forks synchronously, so the child inherits this value alone.
    const previous = process.umask(o.umask);
    let child: ChildProcessByStdio<null, Readable, Readable>;
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
    const signalGroup = (sig: NodeJS.Signals) => {
      try {
        if (child.pid) process.kill(-child.pid, sig);
      } catch {
        // already gone
      }
    };
    let grace: NodeJS.Timeout | undefined;
    const kill = () => {
      signalGroup('SIGTERM');
      // Cleared once the group's pipes close: its id may be reused after that.
      grace = setTimeout(() => signalGroup('SIGKILL'), KILL_GRACE_MS);
      grace.unref();
    };
    if (o.signal.aborted) kill();
    o.signal.addEventListener('abort', kill, { once: true });
    child.on('error', (e) => {
      clearTimeout(grace);
      o.signal.removeEventListener('abort', kill);
      reject(e);
    });
    child.on('close', (code, sig) => {
      clearTimeout(grace);
      o.signal.removeEventListener('abort', kill);
      const signal = sig ? constants.signals[sig] : 0;
      const exitCode = code ?? 128 + signal;
      resolvePromise({ exitCode, signal, stdout: Buffer.concat(out), stderr: Buffer.concat(err), ms: performance.now() - started });
    });
  });
}
