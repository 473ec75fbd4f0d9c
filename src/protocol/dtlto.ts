import { z } from 'zod';

/**
 * Limits on a DTLTO distribution file (`ltocache distribute FILE.json`). Far above what lld writes
 * for real programs (a job per bitcode module; inputs are the module, its index and the modules it
 * imports from), low enough that a hostile file cannot make the distributor allocate without bound.
 */
export const DTLTO_LIMITS = {
  /** Size of the JSON file itself. */
  maxFileBytes: 256 * 1024 * 1024,
  maxJobs: 100_000,
  /** Arguments in `common.args`, and in each `job.args`. */
  maxArgs: 4096,
  /** Inputs in `common.inputs`, and in each `job.inputs`. */
  maxInputs: 100_000,
  /** Outputs of one job (lld declares one: the native object). */
  maxOutputs: 16,
  /** Length of one argument or path. */
  maxString: 65_536,
} as const;

const L = DTLTO_LIMITS;
const noNul = (s: string) => !s.includes('\0');
const Arg = z.string().max(L.maxString).refine(noNul, 'contains a NUL byte');
const Path = z.string().min(1, 'empty path').max(L.maxString).refine(noNul, 'contains a NUL byte');

/**
 * The file lld (≥ 21) hands its `--thinlto-distributor` (llvm/lib/LTO/LTO.cpp, DTLTO), as lld 22
 * writes it. A job's command is `common.args + job.args`; `common.args[0]` is the compiler
 * (`--thinlto-remote-compiler`). Paths are relative to lld's cwd or absolute. Unknown fields are
 * tolerated.
 */
export const DistFile = z.looseObject({
  common: z.looseObject({
    /** The linker's `-o`: every declared output must be in its directory. */
    linker_output: Path,
    args: z.array(Arg).min(1, 'no compiler').max(L.maxArgs),
    inputs: z.array(Path).max(L.maxInputs).optional(),
  }),
  jobs: z
    .array(
      z.looseObject({
        args: z.array(Arg).max(L.maxArgs),
        inputs: z.array(Path).max(L.maxInputs),
        outputs: z.array(Path).min(1, 'no output').max(L.maxOutputs),
      }),
    )
    .max(L.maxJobs),
});
export type DistFile = z.infer<typeof DistFile>;

/** One line naming the first problem: `jobs[3].outputs: …`. */
export function distFileError(e: z.ZodError): string {
  const issue = e.issues[0]!;
  let where = '';
  for (const p of issue.path) where += typeof p === 'number' ? `[${p}]` : where ? `.${String(p)}` : String(p);
  const missing = issue.code === 'invalid_type' && /received undefined/.test(issue.message);
  return `${where || 'file'}: ${missing ? 'missing' : issue.message}`;
}
