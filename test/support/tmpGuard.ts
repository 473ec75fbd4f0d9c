/**
 * Runs a command (the test suite) with TMPDIR at a fresh directory of its own, then checks that the
 * command left nothing behind: no entry in that directory, and no process still running with that
 * TMPDIR in its environment (a daemon, server or redis-server a test started and never stopped;
 * every process the suite starts inherits it). Leftovers are named on stderr, then removed (the
 * processes by their pids: SIGTERM, then SIGKILL), and the exit status is non-zero: the command's
 * own when it failed, 1 when only the check did. A test file killed by its timeout leaves its
 * directories (its exit-time cleanup never ran), so such a run fails twice over, but its leftovers
 * are still removed. The daemons' sockets are in /tmp/ltocache-UID (not under TMPDIR), which this
 * does not look at: a daemon stopped here removes its own.
 *
 *   node dist/test/support/tmpGuard.js node --test ... files
 */

import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { constants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { alive } from './env.js';

/** Processes of this user (not this one) whose environment has TMPDIR=base, or whose cwd is under it. */
export function processesUsing(base: string): { pid: number; what: string }[] {
  const found: { pid: number; what: string }[] = [];
  let pids: string[];
  try {
    pids = readdirSync('/proc').filter((p) => /^\d+$/.test(p));
  } catch {
    return found; // no /proc: the directory check still runs
  }
  const marker = `TMPDIR=${base}\0`;
  for (const p of pids) {
    const pid = Number(p);
    if (pid === process.pid) continue;
    try {
      const env = readFileSync(`/proc/${p}/environ`, 'latin1');
      let cwd = '';
      try {
        cwd = readlinkSync(`/proc/${p}/cwd`);
      } catch {
        // gone, or not ours
      }
      if (!env.includes(marker) && !cwd.startsWith(`${base}/`)) continue;
      found.push({ pid, what: readFileSync(`/proc/${p}/cmdline`, 'latin1').replaceAll('\0', ' ').trim().slice(0, 200) });
    } catch {
      // exited meanwhile, or another user's
    }
  }
  return found;
}

/** Waits up to `ms` for `done`, polling. */
async function settle(done: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!done()) {
    if (Date.now() > deadline) return false;
    await sleep(100);
  }
  return true;
}

async function main(argv: string[]): Promise<number> {
  if (argv.length === 0) {
    process.stderr.write('usage: tmpGuard COMMAND [ARG...]\n');
    return 2;
  }
  const base = mkdtempSync(join(tmpdir(), 'ltocache-suite-'));
  // Like /tmp: tests that run a program as another user (nobody) need to reach their dirs in it.
  chmodSync(base, 0o1777);
  const child = spawn(argv[0]!, argv.slice(1), { stdio: 'inherit', env: { ...process.env, TMPDIR: base } });
  const forward = (sig: NodeJS.Signals) => child.kill(sig);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, forward);
  const status = await new Promise<number>((res) => {
    child.on('error', (e) => {
      process.stderr.write(`tmpGuard: ${argv[0]}: ${e.message}\n`);
      res(127);
    });
    child.on('exit', (code, sig) => res(code ?? 128 + (sig ? (constants.signals[sig] ?? 0) : 0)));
  });

  // What a test stops on its way out may take a moment to be gone (a daemon finishing its stop).
  const clean = () => readdirSync(base).length === 0 && processesUsing(base).length === 0;
  await settle(clean, 5000);

  const procs = processesUsing(base);
  const entries = readdirSync(base).sort();
  if (procs.length > 0) {
    process.stderr.write(`\ntmpGuard: ${procs.length} process(es) the tests started are still running (stopping them):\n`);
    for (const p of procs) process.stderr.write(`  pid ${p.pid}: ${p.what}\n`);
    for (const p of procs) {
      try {
        process.kill(p.pid, 'SIGTERM');
      } catch {
        // already gone
      }
    }
    if (!(await settle(() => procs.every((p) => !alive(p.pid)), 10_000))) {
      for (const p of procs) {
        try {
          process.kill(p.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
  }
  if (entries.length > 0) {
    process.stderr.write(`\ntmpGuard: the tests left ${entries.length} entr${entries.length === 1 ? 'y' : 'ies'} in their TMPDIR (${base}; removing it):\n`);
    for (const e of entries) process.stderr.write(`  ${e}\n`);
  }
  rmSync(base, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
  if (procs.length > 0 || entries.length > 0) {
    process.stderr.write('tmpGuard: every test must remove what it makes in the temp dir and stop what it starts, pass or fail (test/support/env.ts: tempDir, onExitStop)\n');
    return status !== 0 ? status : 1;
  }
  return status;
}

process.exitCode = await main(process.argv.slice(2));
