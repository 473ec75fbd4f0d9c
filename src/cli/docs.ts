import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEFAULT_SILENCE_TIMEOUT_MS, DEFAULT_START_TIMEOUT_MS, START_FAILURE_MEMORY_S } from '../protocol/limits.js';
import { VERSION } from '../version.js';
import { COMMANDS, COMPILE_ROW } from './commandTable.js';

/**
 * Files generated from commandTable.ts: `node dist/src/cli/docs.js --write` (`npm run docs`)
 * rewrites them; test/unit/docs.test.ts checks they are up to date.
 */

export const README_BEGIN = '<!-- commands:begin (generated from src/cli/commandTable.ts by `npm run docs`) -->';
export const README_END = '<!-- commands:end -->';
const GENERATED = 'generated from src/cli/commandTable.ts by `npm run docs`; do not edit';

/** Environment read by the native client, for the man page. */
export const CLIENT_ENV: [string, string][] = [
  [
    'LTOCACHE_DIR',
    "cache directory (default $XDG_CACHE_HOME/ltocache, else ~/.cache/ltocache): store, memos, daemon.log, ltocache.conf; the daemon's socket in /tmp/ltocache-UID is named after it",
  ],
  ['LTOCACHE_DISABLE', '1: always exec the compiler directly'],
  ['LTOCACHE_NODE', 'node binary used to start the daemon and the CLI (default: node on PATH)'],
  [
    'LTOCACHE_START_TIMEOUT_MS',
    `how long to wait for a daemon the client starts (default ${DEFAULT_START_TIMEOUT_MS}); a failed start is remembered for ${START_FAILURE_MEMORY_S} s`,
  ],
  ['LTOCACHE_SILENCE_TIMEOUT_MS', `a connected daemon silent this long is considered stuck and the client compiles itself (default ${DEFAULT_SILENCE_TIMEOUT_MS})`],
  ['LTOCACHE_MEMO', '0: skip the memo fast paths (every backend job and every DTLTO link goes to the daemon)'],
  ['LTOCACHE_CONFIG', 'the configuration file to read instead of $LTOCACHE_DIR/ltocache.conf (the client reads its verify setting)'],
  ['LTOCACHE_<KEY>', 'any configuration key (see ltocache config show), overriding the config file'],
];

/** The README's command table (the lines between the markers). */
export function readmeTable(): string {
  const cell = (s: string) => s.replace(/\|/g, '\\|');
  const rows = COMMANDS.flatMap((c) => c.rows.map((r) => `| \`${cell(`${c.cliOnly ? 'ltocache-cli' : 'ltocache'} ${r.usage}`)}\` | ${cell(r.does)} |`));
  return ['| command | what it does |', '|---|---|', `| \`ltocache ${COMPILE_ROW.usage}\` | ${COMPILE_ROW.does} |`, ...rows].join('\n');
}

/** README text with the table between the markers replaced. */
export function withReadmeTable(readme: string): string {
  const b = readme.indexOf(README_BEGIN);
  const e = readme.indexOf(README_END);
  if (b < 0 || e < b) throw new Error('README.md has no commands markers');
  return readme.slice(0, b + README_BEGIN.length) + '\n' + readmeTable() + '\n' + readme.slice(e);
}

/** roff-escapes text for a man page line. */
function roff(s: string): string {
  const t = s.replace(/\\/g, '\\e').replace(/-/g, '\\-');
  return /^[.']/.test(t) ? `\\&${t}` : t;
}

export function manPage(): string {
  const L: string[] = [
    `.\\" ${GENERATED}`,
    `.TH LTOCACHE 1 "" "ltocache ${VERSION}" "User Commands"`,
    '.SH NAME',
    'ltocache \\- content\\-addressed cache for Clang distributed ThinLTO backend jobs',
    '.SH SYNOPSIS',
    '.B ltocache',
    '.I compiler',
    '.RI [ args ...]',
    '.br',
    '.B ltocache',
    '.I command',
    '.RI [ options ]',
    '.br',
    '.B ltocache\\-cli',
    '.I command',
    '.RI [ options ]',
    '.SH DESCRIPTION',
    roff(
      'ltocache caches the backend jobs of distributed ThinLTO (clang -x ir -fthinlto-index=X.thinlto.bc -c -o X.native.o X.o): it hashes each job (input bitcode, index, imported modules, flags, files named by flags, the toolchain, the environment that matters), serves the stored object on a hit and runs the compiler only on a miss. If anything on its side fails, the job runs the compiler as if ltocache were not there.',
    ),
    '.PP',
    roff(
      "ltocache is a small native client placed in front of the compiler, either as a prefix (ltocache clang-19 ...) or as a symlink named like the compiler. It never starts Node: every compile that is not a backend job is exec'ed directly; backend jobs go to a long-running daemon over a Unix socket. The first backend job starts the daemon. Commands (below) run the ltocache-cli program under Node; ltocache COMMAND does the same.",
    ),
    '.SH COMMANDS',
    '.TP',
    `.B ${roff(`ltocache ${COMPILE_ROW.usage}`)}`,
    roff(COMPILE_ROW.does) + '.',
  ];
  for (const c of COMMANDS) for (const r of c.rows) L.push('.TP', `.B ${roff(`${c.cliOnly ? 'ltocache-cli' : 'ltocache'} ${r.usage}`)}`, roff(r.does) + '.');
  L.push('.SH ENVIRONMENT');
  for (const [k, v] of CLIENT_ENV) L.push('.TP', `.B ${roff(k)}`, roff(v) + '.');
  L.push(
    '.SH EXIT STATUS',
    roff(
      'A compile through the cache exits as the compiler does. The commands exit 0 on success, 1 when they failed, 2 for a usage error or an invalid configuration; daemon status exits 3 when no daemon runs, daemon run 4 when a daemon already serves the cache directory.',
    ),
    '.SH FILES',
    '.TP',
    '.B $LTOCACHE_DIR/ltocache.conf',
    roff('optional configuration file: key = value lines, # comments (LTOCACHE_CONFIG names another file).'),
    '.TP',
    '.B $LTOCACHE_DIR/daemon.log',
    "the daemon's log.",
    '.SH EXAMPLES',
    '.nf',
    roff('make LLVM=1 CC="ltocache clang" -j$(nproc)      # Linux kernel, CONFIG_LTO_CLANG_THIN_DIST'),
    roff('ltocache stats'),
    roff('ltocache explain --last-build'),
    '.fi',
    '.SH SEE ALSO',
    '.BR clang (1),',
    '.BR ld.lld (1);',
    roff('the README and docs/ in the installed package (npm root -g)/ltocache.'),
    '',
  );
  return L.join('\n');
}

const topWords = (): string[] => COMMANDS.filter((c) => !c.cliOnly).map((c) => c.name);
/** Commands that take nothing to complete (after them, the completion offers nothing). */
const bare = (): string[] => COMMANDS.filter((c) => !c.words.length && !c.files).map((c) => c.name);

export function bashCompletion(): string {
  const cases = COMMANDS.filter((c) => c.words.length || c.files).map((c) => {
    const body = [c.words.length ? `COMPREPLY=($(compgen -W '${c.words.join(' ')}' -- "$cur"))` : 'COMPREPLY=()'];
    if (c.files) body.push('COMPREPLY+=($(compgen -f -- "$cur"))');
    return `    ${c.name}) ${body.join('; ')} ;;`;
  });
  return [
    `# bash completion for ltocache (${GENERATED}).`,
    "# The first word is a command or a compiler; after a compiler, the compiler's own completion.",
    '_ltocache() {',
    // biome-ignore lint/suspicious/noTemplateCurlyInString: bash parameter expansion, not a template
    '  local cur=${COMP_WORDS[COMP_CWORD]}',
    '  if [ "$COMP_CWORD" -eq 1 ]; then',
    `    COMPREPLY=($(compgen -W '${topWords().join(' ')}' -- "$cur") $(compgen -c -- "$cur" | grep '^clang'))`,
    '    return 0',
    '  fi',
    // biome-ignore lint/suspicious/noTemplateCurlyInString: bash parameter expansion, not a template
    '  case ${COMP_WORDS[1]} in',
    ...cases,
    `    ${bare().join('|')}) COMPREPLY=() ;;`,
    '    *) if declare -F _command_offset >/dev/null; then _command_offset 1; else COMPREPLY=($(compgen -f -- "$cur")); fi ;;',
    '  esac',
    '  return 0',
    '}',
    'complete -o default -F _ltocache ltocache',
    '',
  ].join('\n');
}

export function zshCompletion(): string {
  const q = (s: string) => s.replace(/'/g, "'\\''").replace(/:/g, '\\:');
  const cases = COMMANDS.filter((c) => c.words.length || c.files).map((c) => {
    const acts = [c.words.length ? `compadd -- ${c.words.join(' ')}` : '', c.files ? '_files' : ''].filter(Boolean);
    return `    ${c.name}) ${acts.join('; ')} ;;`;
  });
  return [
    '#compdef ltocache',
    `# zsh completion for ltocache (${GENERATED}).`,
    'local -a cmds',
    'cmds=(',
    ...COMMANDS.filter((c) => !c.cliOnly).map((c) => `  '${q(c.name)}:${q(c.brief)}'`),
    ')',
    'if (( CURRENT == 2 )); then',
    "  _describe -t commands 'ltocache command' cmds",
    '  _path_commands 2>/dev/null || _command_names -e',
    '  return',
    'fi',
    'case $words[2] in',
    ...cases,
    `  ${bare().join('|')}) ;;`,
    '  *) shift words; (( CURRENT-- )); _normal ;;',
    'esac',
    '',
  ].join('\n');
}

export function fishCompletion(): string {
  const q = (s: string) => `'${s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
  const L = [`# fish completion for ltocache (${GENERATED}).`, `complete -c ltocache -e`];
  for (const c of COMMANDS.filter((x) => !x.cliOnly)) L.push(`complete -c ltocache -f -n '__fish_use_subcommand' -a ${q(c.name)} -d ${q(c.brief)}`);
  for (const c of COMMANDS.filter((x) => !x.cliOnly)) {
    const cond = `'__fish_seen_subcommand_from ${c.name}'`;
    for (const w of c.words) {
      const opt = w.startsWith('--') ? `-l ${q(w.slice(2))}` : w.startsWith('-') ? `-s ${q(w.slice(1))}` : `-a ${q(w)}`;
      L.push(`complete -c ltocache ${c.files ? '' : '-f '}-n ${cond} ${opt}`);
    }
  }
  L.push(`complete -c ltocache -n '__fish_use_subcommand' -a '(__fish_complete_command | string match "clang*")'`);
  L.push('');
  return L.join('\n');
}

/** Every generated file, path relative to the repository root → expected content. */
export function generatedFiles(top: string): Map<string, string> {
  return new Map([
    ['README.md', withReadmeTable(readFileSync(join(top, 'README.md'), 'utf8'))],
    ['docs/man/ltocache.1', manPage()],
    ['docs/completions/ltocache.bash', bashCompletion()],
    ['docs/completions/_ltocache', zshCompletion()],
    ['docs/completions/ltocache.fish', fishCompletion()],
  ]);
}

const { argv } = process;
if (argv[1] && resolve(argv[1]) === fileURLToPath(import.meta.url) && argv[2] === '--write') {
  const top = resolve(fileURLToPath(import.meta.url), '../../../..');
  for (const [rel, text] of generatedFiles(top)) writeFileSync(join(top, rel), text);
}
