import { spawn } from 'node:child_process';
import { realpathSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Config } from '../config/config.js';
import { DISTRIBUTE_USAGE, DistributeError, executable, type JobRun, planDistribution, runDistribution } from '../dtlto/distribution.js';

/**
 * `ltocache distribute FILE.json` in Node: an LLVM DTLTO distributor. lld runs it in its own cwd
 * as `EXE [--thinlto-distributor-arg…] FILE.json`, waits, and links the objects the jobs wrote.
 * The native client normally hands the whole distribution to the daemon ('T', docs/dtlto.md);
 * this path serves when the daemon cannot. Each job (`common.args + job.args`) runs through the
 * native client, so it takes the path every backend job takes (memo, daemon, team cache, compile
 * on a miss, or the compiler directly when there is no daemon).
 */

export { DistributeError };

/** The native client beside this CLI: `<top>/bin/ltocache`, from dist/src/cli/. */
export function nativeClient(): string {
  return join(dirname(realpathSync(fileURLToPath(import.meta.url))), '..', '..', '..', 'bin', 'ltocache');
}

function runThroughClient(client: string, argv: string[], cwd: string, env: NodeJS.ProcessEnv): Promise<JobRun> {
  return new Promise((res) => {
    const c = spawn(client, argv, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    c.stdout.on('data', (b: Buffer) => out.push(b));
    c.stderr.on('data', (b: Buffer) => err.push(b));
    c.on('error', (e) => res({ code: 127, signal: null, stdout: Buffer.alloc(0), stderr: Buffer.from(`ltocache: cannot run ${client}: ${e.message}\n`) }));
    c.on('close', (code, signal) => res({ code, signal, stdout: Buffer.concat(out), stderr: Buffer.concat(err) }));
  });
}

export async function runDistribute(config: Config, args: string[]): Promise<void> {
  if (args.length !== 1 || args[0]!.startsWith('-')) throw new DistributeError(DISTRIBUTE_USAGE);
  const cwd = process.cwd();
  const client = nativeClient();
  if (!(await executable(client))) throw new DistributeError(`the native client ${client} is missing (run npm run build)`);
  const { jobs } = await planDistribution(args[0]!, cwd, process.env);
  process.exitCode = await runDistribution(jobs, {
    cwd,
    parallel: config.jobs,
    run: (job) => runThroughClient(client, job.argv, cwd, process.env),
    write: (stream, b) => (stream === 'stdout' ? process.stdout : process.stderr).write(b),
  });
}
