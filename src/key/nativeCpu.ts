import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { spawnableEnv } from '../util/opaqueEnv.js';
import type { Job } from './parseJob.js';
import { Uncacheable } from './uncacheable.js';

const run = promisify(execFile);

/** `-march=native` and its kin: the driver resolves them from the CPU it runs on. */
const NATIVE = /^-m(arch|cpu|tune)=native$/;
/** Driver arguments that can change what `native` resolves to (the target, other -m options). */
const CPU_ARG = /^(-m|--target=)/;
/** The cc1 options that carry the resolution. */
const CC1_CPU = new Set(['-target-cpu', '-tune-cpu', '-target-feature']);

const resolved = new Map<string, Promise<string[]>>();

/** Whether the job asks the driver for the host's CPU. */
export function asksNative(job: Job): boolean {
  return job.tokens.some((t) => t.t === 'flag' && NATIVE.test(t.v));
}

/**
 * What `native` resolves to for this job on this machine: the `-target-cpu`, `-tune-cpu` and
 * `-target-feature` options the driver passes to cc1, as `-###` prints them for the job's target
 * options. The same command on another CPU compiles other code, so these are keyed. Memoised per
 * toolchain and target options (one driver run per daemon). Uncacheable when the driver says
 * nothing about the CPU.
 */
export async function nativeCpu(job: Job, compiler: string, toolchainDigest: string, cwd: string, env: Record<string, string>): Promise<string[]> {
  const args: string[] = [];
  for (const [i, t] of job.tokens.entries()) {
    if (t.t !== 'flag') continue;
    if (CPU_ARG.test(t.v)) args.push(t.v);
    const next = job.tokens[i + 1];
    if (t.v === '-target' && next?.t === 'flag') args.push(t.v, next.v);
  }
  const memoKey = `${toolchainDigest}\0${args.join('\0')}`;
  let p = resolved.get(memoKey);
  if (!p) {
    p = (async () => {
      const r = await run(compiler, [...args, '-###', '-x', 'c', '-c', '/dev/null', '-o', '/dev/null'], { cwd, env: spawnableEnv(env), timeout: 10_000, maxBuffer: 4 << 20 });
      const cc1 = r.stderr.split('\n').find((l) => /"-cc1"/.test(l)) ?? '';
      const words = [...cc1.matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((m) => m[1]!);
      const out: string[] = [];
      for (let i = 0; i < words.length - 1; i++) if (CC1_CPU.has(words[i]!)) out.push(`${words[i]} ${words[++i]}`);
      return out;
    })();
    resolved.set(memoKey, p);
    p.catch(() => resolved.delete(memoKey));
  }
  let out: string[];
  try {
    out = await p;
  } catch (e) {
    throw new Uncacheable('native-cpu-unknown', `cannot ask ${compiler} what native is: ${(e as Error).message}`);
  }
  if (!out.some((w) => w.startsWith('-target-cpu ') || w.startsWith('-tune-cpu '))) throw new Uncacheable('native-cpu-unknown', `${compiler} -### names no CPU for native`);
  return out;
}
