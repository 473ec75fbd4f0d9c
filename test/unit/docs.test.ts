import assert from 'node:assert/strict';
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { CLI_WORDS, COMMANDS } from '../../src/cli/commandTable.js';
import { CLIENT_ENV, generatedFiles } from '../../src/cli/docs.js';
import { compareVersions } from '../../src/cli/main.js';
import { VALUE_FLAGS } from '../../src/cli/serve.js';
import { ConfigShape, loadConfig, parseSize } from '../../src/config/config.js';
import { UNCACHEABLE_REASONS } from '../../src/key/uncacheable.js';
import { DAEMON_MALLOC_ARENA_MAX, DAEMON_SEMI_SPACE_MB, DEFAULT_SILENCE_TIMEOUT_MS, DEFAULT_START_TIMEOUT_MS, START_FAILURE_MEMORY_S } from '../../src/protocol/limits.js';
import { parseServerOptions } from '../../src/remote/serverOptions.js';
import { COUNTERS, ErrorKind } from '../../src/stats/counters.js';
import { TOP, tempDir } from '../support/env.js';

const README = readFileSync(join(TOP, 'README.md'), 'utf8');
const doc = (name: string) => readFileSync(join(TOP, 'docs', name), 'utf8');

/** The rows of the first Markdown table after `heading`: cells, backticks kept. */
function tableAfter(text: string, heading: string): string[][] {
  const at = text.indexOf(heading);
  assert.ok(at >= 0, `${heading} not found`);
  const lines = text.slice(at).split('\n');
  const start = lines.findIndex((l) => l.startsWith('|'));
  const rows: string[][] = [];
  for (const l of lines.slice(start + 2)) {
    if (!l.startsWith('|')) break;
    rows.push(
      l
        .slice(1, -1)
        .split(/(?<!\\)\|/)
        .map((c) => c.trim()),
    );
  }
  return rows;
}

test('README command table, man page and completions are what src/cli/commandTable.ts generates (npm run docs)', () => {
  for (const [rel, text] of generatedFiles(TOP)) assert.equal(readFileSync(join(TOP, rel), 'utf8'), text, `${rel} is stale: run npm run docs`);
});

test('every command of the table is one the native client hands to the CLI (is_cli_command)', () => {
  const src = readFileSync(join(TOP, 'client', 'ltocache.c'), 'utf8');
  const m = /static int is_cli_command[^{]*\{[^{]*\{([^}]*)\}/.exec(src);
  assert.ok(m, 'is_cli_command list not found');
  const words = [...m[1]!.matchAll(/"([^"]+)"/g)].map((x) => x[1]);
  for (const w of CLI_WORDS) assert.ok(words.includes(w), `client/ltocache.c is_cli_command lacks '${w}'`);
  assert.ok(COMMANDS.every((c) => c.rows.length > 0));
});

test('compareVersions orders dotted versions numerically', () => {
  assert.equal(compareVersions('0.1.0', '0.1.0'), 0);
  assert.equal(compareVersions('0.9.0', '0.10.0'), -1);
  assert.equal(compareVersions('1.0', '0.99.99'), 1);
});

test('README configuration table: every setting of src/config/config.ts, no other, with its default', () => {
  const rows = tableAfter(README, '### Configuration');
  const keys = rows.map((r) => r[0]!.replace(/`/g, ''));
  assert.deepEqual([...keys].sort(), Object.keys(ConfigShape).sort(), 'README.md ### Configuration lists other keys than ConfigShape');
  const dir = tempDir('docs');
  try {
    const { config } = loadConfig({ LTOCACHE_DIR: dir });
    for (const [k, dflt] of rows.map((r) => [r[0]!.replace(/`/g, ''), r[1]!] as const)) {
      const actual = config[k as keyof typeof ConfigShape];
      if (dflt === 'CPU count') continue;
      const want = dflt === '—' ? '' : dflt.replace(/`/g, '');
      assert.equal(String(actual), k === 'max_size' ? String(parseSize(want)) : want, `README default of ${k}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('every environment variable the native client reads is documented (man page and README; test hooks in docs/protocol.md)', () => {
  const names = new Set<string>();
  for (const f of readdirSync(join(TOP, 'client')).filter((n) => n.endsWith('.c'))) {
    const src = readFileSync(join(TOP, 'client', f), 'utf8');
    for (const m of src.matchAll(/\b(?:getenv|env_nonempty|env_ms)\("(LTOCACHE_[A-Z_]+)"/g)) names.add(m[1]!);
  }
  assert.ok(names.has('LTOCACHE_DIR') && names.has('LTOCACHE_MEMO'), [...names].join(' '));
  const man = CLIENT_ENV.map(([k]) => k);
  const flat = README.replace(/\s+/g, ' ');
  for (const t of [`default ${DEFAULT_START_TIMEOUT_MS};`, `remembered for ${START_FAILURE_MEMORY_S} s`, `default ${DEFAULT_SILENCE_TIMEOUT_MS}:`])
    assert.ok(flat.includes(t), `README.md's client timings lack '${t}' (src/protocol/limits.ts)`);
  const protocol = doc('protocol.md');
  for (const n of names) {
    if (n.startsWith('LTOCACHE_PRINT_')) assert.ok(protocol.includes(n), `test hook ${n} is not described in docs/protocol.md`);
    else if (n === 'LTOCACHE_VERIFY') assert.ok(man.includes('LTOCACHE_<KEY>') && README.includes(n), n);
    else {
      assert.ok(man.includes(n), `${n} is missing from CLIENT_ENV (src/cli/docs.ts, the man page)`);
      assert.ok(README.includes(n), `${n} is missing from README.md`);
    }
  }
});

test('every daemon counter, error kind and uncacheable reason is in the README statistics section; every serve option is completed and documented', () => {
  const stats = README.slice(README.indexOf('### Statistics'), README.indexOf('## Team cache'));
  for (const c of [...COUNTERS, ...Object.values(ErrorKind), ...UNCACHEABLE_REASONS]) assert.ok(stats.includes(`\`${c}\``), `README.md ### Statistics lacks ${c}`);
  const serve = COMMANDS.find((c) => c.name === 'serve')!;
  const team = doc('team-cache.md');
  for (const f of VALUE_FLAGS) {
    assert.ok(serve.words.includes(`--${f}`), `the serve completions lack --${f}`);
    assert.ok(team.includes(`\`--${f} `), `docs/team-cache.md's option table lacks --${f}`);
  }
});

test('every explain cause (src/explain/explainMiss.ts) is described in docs/kernel.md "Reading explain"', () => {
  const src = readFileSync(join(TOP, 'src', 'explain', 'explainMiss.ts'), 'utf8');
  const union = src.slice(src.indexOf('export type Cause ='), src.indexOf('export type CauseKind'));
  const kinds = [...union.matchAll(/kind: '([a-z-]+)'/g)].map((m) => m[1]!);
  assert.ok(kinds.length > 10, kinds.join(' '));
  const kernel = doc('kernel.md');
  const reading = kernel.slice(kernel.indexOf('## Reading `explain`'));
  for (const k of kinds) assert.ok(reading.includes(`\`${k}\``), `docs/kernel.md "Reading explain" lacks the cause ${k}`);
});

test('README "Layout" names every source file of the native client and every directory of src/', () => {
  const layout = README.slice(README.indexOf('## Layout'));
  for (const f of readdirSync(join(TOP, 'client')).filter((n) => n.endsWith('.c'))) assert.ok(layout.includes(`\`${f}\``), `README.md Layout lacks client/${f}`);
  for (const d of readdirSync(join(TOP, 'src'), { withFileTypes: true }).filter((e) => e.isDirectory()))
    assert.ok(layout.includes(`src/${d.name}`), `README.md Layout lacks src/${d.name}`);
});

test('README "Documentation" names every doc and every binary format in cache-schema/', () => {
  const section = README.slice(README.indexOf('## Documentation'), README.indexOf('## Layout'));
  for (const f of readdirSync(join(TOP, 'docs')).filter((n) => n.endsWith('.md'))) assert.ok(section.includes(`docs/${f}`), `README.md Documentation lacks docs/${f}`);
  for (const f of readdirSync(join(TOP, 'cache-schema')).filter((n) => n.endsWith('.md')))
    assert.ok(section.includes(`\`${f}\``), `README.md Documentation lacks cache-schema/${f}`);
});

test('the systemd unit starts the daemon as every other launcher does (heap flags, arena limit) and never lets it idle out', () => {
  const unit = doc('systemd/ltocache.service');
  const start = unit.split('\n').find((l) => l.startsWith('ExecStart='))!;
  assert.ok(start.includes(`MALLOC_ARENA_MAX=${DAEMON_MALLOC_ARENA_MAX} `), start);
  assert.ok(start.includes(`--max-semi-space-size=${DAEMON_SEMI_SPACE_MB} `), start);
  assert.match(start, /dist\/src\/cli\/main\.js daemon run$/);
  assert.match(unit, /^Environment=LTOCACHE_IDLE_TIMEOUT=0$/m);
  assert.match(unit.split('\n').find((l) => l.startsWith('ExecStop='))!, /main\.js daemon stop$/);
});

test('docs/team-cache.md option table: the defaults serve uses', () => {
  const o = parseServerOptions({ dir: '/nonexistent', tokens: [{ name: 'a', scope: 'read', secret: '0123456789abcdefgh' }] });
  const rows = new Map(tableAfter(doc('team-cache.md'), '### 2. Running it').map((r) => [r[0]!.split(' ')[0]!.replace(/`/g, ''), r[1]!.replace(/`/g, '')]));
  assert.equal(rows.get('--listen'), `${o.host}:${o.port}`);
  assert.equal(parseSize(rows.get('--max-size')!), o.maxBytes);
  assert.equal(parseSize(rows.get('--max-bundle')!), o.limits.maxBundleBytes);
  assert.equal(Number(rows.get('--max-streams')), o.limits.maxStreams);
  assert.equal(Number(rows.get('--idle-timeout')) * 1000, o.limits.idleTimeoutMs);
});
