import { randomBytes } from 'node:crypto';
import { closeSync, constants, fstatSync, openSync, readFileSync, renameSync, statSync } from 'node:fs';
import { statIdentity } from '../key/fileDigests.js';
import { outputNamesKeyed } from '../key/manifest.js';
import { type Job, outputOption } from '../key/parseJob.js';
import type { OutputRedirect } from '../protocol/clientFrames.js';
import { asOpened } from '../util/asOpened.js';
import { replacedByRename } from '../util/replacedByRename.js';

export type { OutputRedirect };

/** Longest output file name redirected: the temp's name adds `.` and a suffix of 27 bytes, and must stay within NAME_MAX (255). */
const MAX_REDIRECTED_NAME = 200;
/**
 * PATH_MAX: the temp is renamed, read and removed by its absolute path, which clang (given it as
 * the job spells the output, relative to cwd) never needs; one this long could not be, and the
 * object would be left at the temp.
 */
const PATH_MAX = 4096;

/**
 * Where a miss's object can be written under a private name (docs/store.md "Output races"): a
 * temp beside the output, named `.<name>.ltocache-out-<random>`, which the one who stores the
 * object reads and then renames onto the output, so no other process's write to the output can
 * be read as this job's. Null when the object cannot be redirected exactly: its name reaches the
 * bytes written (outputNamesKeyed: it then names other outputs, or is recorded in the object), the
 * job has more than one output, `-o` is inside a response file, more than one argument could be
 * the one naming it, the temp's absolute path would not fit PATH_MAX, or clang would not replace
 * the output by a rename (replacedByRename). The argument is found in the request's own arguments; the key already says
 * that no output name other than its own is in the object, so the object is clang's either way.
 */
export function outputRedirect(job: Job, args: readonly string[], cwd: string): OutputRedirect | null {
  if (job.responseFiles.length > 0 || outputNamesKeyed(job)) return null;
  const path = job.outputs[0]!.path;
  const slash = path.lastIndexOf('/');
  const name = path.slice(slash + 1);
  if (name === '' || name === '.' || name === '..' || Buffer.byteLength(name) > MAX_REDIRECTED_NAME) return null;
  const temp = `${path.slice(0, slash + 1)}.${name}.ltocache-out-${randomBytes(6).toString('hex')}`;
  let found: { index: number; arg: string } | null = null;
  let candidates = 0;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const o = outputOption(a);
    if (!o) continue;
    if (o.value === undefined && args[i + 1] === path) found = { index: i + 1, arg: temp };
    else if (o.value === path) found = { index: i, arg: a.slice(0, a.length - path.length) + temp };
    else continue;
    candidates++;
  }
  if (!found || candidates !== 1) return null;
  const r = { ...found, temp: asOpened(cwd, temp), output: asOpened(cwd, path) };
  if (Buffer.byteLength(r.temp) >= PATH_MAX || !replacedByRename(r.output)) return null;
  return r;
}

/**
 * Renames the temp onto the output; true when placed. Not over an output that is no longer a
 * regular file (a named pipe, /dev/null through a link): clang writes into such a file in place,
 * and a rename would replace it. Nothing at the temp: false.
 */
export function placeRedirected(r: OutputRedirect): boolean {
  try {
    const there = statSync(r.output, { throwIfNoEntry: false });
    if (there && !there.isFile()) return false;
    renameSync(r.temp, r.output);
    return true;
  } catch {
    return false;
  }
}

/** The request's arguments with the redirect applied. */
export function redirectedArgs(args: readonly string[], r: OutputRedirect): string[] {
  const out = [...args];
  out[r.index] = r.arg;
  return out;
}

/**
 * What becomes of a redirected run. `redo`: it printed the temp's name (a diagnostic about the
 * temp is not clang's about the output); it is thrown away and the compiler run again as given.
 * `stands`: it ended clean (exit 0, no signal); its object is kept and may be stored. `as-is`: it
 * failed or was ended by a signal without naming the temp; that is clang's outcome already (the
 * temp sits beside the output, on the same file system, under a name as long as any that fits
 * NAME_MAX), so it is what the build gets, with whatever clang left at the temp moved to the
 * output as clang would have left it there. Running it again would double the time to a build
 * error, and turn a compiler killed from outside (the OOM killer, `kill`) into one that succeeds.
 */
export function redirectedRunOutcome(run: { exitCode: number; signal: number; stdout: Buffer; stderr: Buffer }, r: OutputRedirect): 'stands' | 'redo' | 'as-is' {
  const name = r.temp.slice(r.temp.lastIndexOf('/') + 1);
  if (run.stdout.includes(name) || run.stderr.includes(name)) return 'redo';
  return run.exitCode === 0 && run.signal === 0 ? 'stands' : 'as-is';
}

/**
 * An output's bytes as the compiler left them, null when it is not a regular file, or 'raced'
 * when another process wrote it while it was read (its identity or size moved) or, given the time
 * `endedMs` the compiler was known to have ended by, after that (its change time is later). An
 * output at its own name (not redirected, outputRedirect) can still have been replaced between
 * clang's rename and its exit unseen (docs/store.md "Output races").
 */
export function readOutputSync(path: string, endedMs: number | null): Buffer | 'raced' | null {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const st = fstatSync(fd, { bigint: true });
    if (!st.isFile()) return null;
    if (endedMs !== null && st.ctimeNs > BigInt(endedMs + 1) * 1_000_000n) return 'raced';
    const bytes = readFileSync(fd);
    const now = fstatSync(fd, { bigint: true });
    return statIdentity(now) === statIdentity(st) && now.size === st.size && BigInt(bytes.length) === st.size ? bytes : 'raced';
  } finally {
    closeSync(fd);
  }
}
