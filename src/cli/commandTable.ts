/**
 * The one description of ltocache's commands. The CLI's usage text, the README's command table
 * (between the `commands` markers), the man page docs/man/ltocache.1 and the bash/zsh/fish completions (docs/completions/)
 * are all generated from it (`npm run docs`, see docs.ts); test/unit/docs.test.ts fails when a
 * generated file differs from what this table gives, and when a top-level command is missing
 * from the native client's is_cli_command() list.
 */

/** One usage line: what follows `ltocache`, and what it does (one sentence, no trailing period). */
export interface UsageRow {
  usage: string;
  does: string;
}

/** A top-level command word. */
export interface Command {
  name: string;
  /** Short description for completion menus. */
  brief: string;
  rows: UsageRow[];
  /** Words completed after the command: sub-commands and options. */
  words: string[];
  /** File names are completed too. */
  files?: boolean;
  /** Runs where the native client cannot be used (`ltocache-cli` only). */
  cliOnly?: boolean;
}

/** The prefix form, handled by the native client itself. */
export const COMPILE_ROW: UsageRow = {
  usage: '<compiler> <args...>',
  does: "run a compile through the cache: backend jobs (-fthinlto-index=) go to the daemon, everything else is exec'ed directly",
};

export const COMMANDS: Command[] = [
  {
    name: 'stats',
    brief: 'cache statistics',
    rows: [
      { usage: 'stats [--json]', does: 'hits, misses, uncacheable by reason, errors by kind, time saved, store size, team-cache counters' },
      { usage: 'stats --zero', does: 'reset the counters' },
      { usage: 'stats --remote [--json]', does: "the team server's own counters" },
      { usage: 'stats --remote --zero', does: "reset the team servers' counters (an admin token)" },
      { usage: 'stats --prometheus', does: "the daemon's counters in Prometheus text format (the team server serves its own on /metrics)" },
    ],
    words: ['--json', '--zero', '--remote', '--prometheus'],
  },
  {
    name: 'config',
    brief: 'show the effective configuration',
    rows: [{ usage: 'config show', does: 'every setting, its effective value and where it came from' }],
    words: ['show'],
  },
  {
    name: 'clear',
    brief: 'empty the local store',
    rows: [
      { usage: 'clear', does: 'empty the local store' },
      { usage: 'clear --remote', does: 'empty the team cache (an admin token; every server of remote)' },
    ],
    words: ['--remote'],
  },
  {
    name: 'daemon',
    brief: 'manage the daemon',
    rows: [
      { usage: 'daemon start|stop|status|run', does: 'manage the daemon (run stays in the foreground)' },
      { usage: 'daemon restart', does: 'stop the running daemon and start one from the installed version' },
    ],
    words: ['start', 'stop', 'restart', 'status', 'run'],
  },
  {
    name: 'explain',
    brief: 'why a job hit or missed',
    rows: [
      { usage: 'explain PATH [--json]', does: 'why the last job for that output hit or missed (input, named imported module, flag, flag-named file, toolchain, environment)' },
      { usage: 'explain --last-build [--json]', does: 'the last build: jobs, hits, misses by cause, changed modules that made importers miss' },
    ],
    words: ['--last-build', '--json'],
    files: true,
  },
  {
    name: 'trace',
    brief: 'Chrome trace of the last build',
    rows: [{ usage: 'trace --last-build -o FILE', does: 'the last build as a Chrome trace (Perfetto, chrome://tracing)' }],
    words: ['--last-build', '-o'],
    files: true,
  },
  {
    name: 'report',
    brief: 'self-contained HTML report',
    rows: [{ usage: 'report -o FILE [--builds N]', does: 'one self-contained page: hit rate per build (the last N, default 50), time saved, store size, miss causes, timeline' }],
    words: ['-o', '--builds'],
    files: true,
  },
  {
    name: 'serve',
    brief: 'run a team cache server',
    rows: [
      {
        usage: 'serve (--dir DIR | --storage URL) --tokens FILE [--listen HOST:PORT] [--tls-cert F --tls-key F]',
        does: 'run a team cache server on a directory or on Redis (serve --help: every option; see docs/team-cache.md)',
      },
    ],
    words: ['--dir', '--storage', '--tokens', '--listen', '--tls-cert', '--tls-key', '--max-size', '--access-log', '--max-bundle', '--max-streams', '--idle-timeout'],
    files: true,
  },
  {
    name: 'distribute',
    brief: 'LLVM DTLTO distributor',
    rows: [
      {
        usage: 'distribute FILE.json',
        does: 'run the backend jobs of an lld DTLTO link through the cache (lld --thinlto-distributor=…/ltocache --thinlto-distributor-arg=distribute; see docs/dtlto.md)',
      },
    ],
    words: [],
    files: true,
  },
  {
    name: 'demo',
    brief: 'build a small ThinLTO program twice through the cache',
    rows: [{ usage: 'demo', does: 'build a small ThinLTO program twice through the cache and check every served object (needs clang-19, lld-19)' }],
    words: [],
  },
  {
    name: '--version',
    brief: 'client, daemon and store layout versions',
    rows: [{ usage: '--version', does: "the client's, the running daemon's and the store layout's versions; says when the daemon is older than the client" }],
    words: [],
  },
  {
    name: 'build-client',
    brief: 'build the native client with a C compiler',
    rows: [
      { usage: 'build-client [--out PATH]', does: 'compile the native client from the packaged source (for a platform without a prebuilt one; CC_FOR_CLIENT picks the compiler)' },
    ],
    words: ['--out'],
    files: true,
    cliOnly: true,
  },
  {
    name: 'help',
    brief: 'usage',
    rows: [{ usage: 'help', does: "this usage text (COMMAND --help: that command's lines)" }],
    words: [],
  },
];

/** Every command word the native client hands to the CLI (aliases included). */
export const CLI_WORDS: string[] = [...COMMANDS.map((c) => c.name), '--help', '-h', 'version'];

const USAGE_WIDTH = 40;
function usageLine(r: UsageRow, program = 'ltocache'): string {
  const w = USAGE_WIDTH + 'ltocache'.length - program.length;
  return r.usage.length <= w ? `  ${program} ${r.usage.padEnd(w)}  ${r.does}` : `  ${program} ${r.usage}\n  ${' '.repeat(USAGE_WIDTH + 9)}  ${r.does}`;
}

/** The CLI's usage text. */
export function usageText(): string {
  const lines = [usageLine(COMPILE_ROW), ...COMMANDS.flatMap((c) => c.rows.map((r) => usageLine(r, c.cliOnly ? 'ltocache-cli' : 'ltocache')))];
  return ['usage:', ...lines].join('\n');
}

/** One command's usage lines (`ltocache COMMAND --help`), or undefined for a word that is no command. */
export function commandUsage(name: string): string | undefined {
  const c = COMMANDS.find((x) => x.name === name);
  return c && ['usage:', ...c.rows.map((r) => usageLine(r, c.cliOnly ? 'ltocache-cli' : 'ltocache'))].join('\n');
}
