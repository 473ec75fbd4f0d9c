import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { CacheEnv, CLIENT, tempDir } from '../support/env.js';

/**
 * Diagnostics on a terminal (docs/protocol.md, flag bit 3): a miss run by the client under a
 * pseudo-terminal (util-linux `script`) is coloured as clang would colour it there; what is stored
 * and replayed to a pipe is byte for byte what clang prints to a pipe. Real clang-19 and lld-19.
 */
const CLANG = process.env.LTOCACHE_TEST_CLANG ?? 'clang-19';
const LLD = process.env.LTOCACHE_TEST_LLD ?? 'ld.lld-19';
const ESC = '\x1b[';

let dir: string;
let cache: CacheEnv;
const job = (out: string, extra: string[] = []) => [
  '-O2',
  ...extra,
  '-x',
  'ir',
  '-fno-lto',
  '-Wno-unused-command-line-argument',
  '-fthinlto-index=big.o.thinlto.bc',
  '-c',
  '-o',
  out,
  'big.o',
];
const direct = (args: string[]) => spawnSync(CLANG, args, { cwd: dir, encoding: 'latin1' });
const client = (args: string[], env: NodeJS.ProcessEnv = cache.env) => spawnSync(CLIENT, [CLANG, ...args], { cwd: dir, env, encoding: 'latin1' });
/** The client under a pseudo-terminal: its stdout and stderr both reach `script`'s output. */
const onTerminal = (args: string[], env: NodeJS.ProcessEnv = cache.env) => {
  const cmd = [CLIENT, CLANG, ...args].map((a) => `'${a}'`).join(' ');
  return spawnSync('script', ['-qec', cmd, '/dev/null'], { cwd: dir, env, encoding: 'latin1' });
};

before(() => {
  dir = tempDir('colour');
  // A module whose backend compile warns: its frame is over the limit set at the front end.
  writeFileSync(join(dir, 'big.c'), 'void use(char *);\nint big(int x) { char buf[4096]; use(buf); return buf[x]; }\n');
  for (const [cmd, args] of [
    [CLANG, ['-O2', '-flto=thin', '-Wframe-larger-than=100', '-c', 'big.c', '-o', 'big.o']],
    [LLD, ['-r', '--thinlto-index-only=list', 'big.o', '-o', '/dev/null']],
  ] as const) {
    const r = spawnSync(cmd, args, { cwd: dir, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
  }
  cache = new CacheEnv('colour');
  cache.start();
});
after(() => cache.destroy());

test('a miss on a terminal is coloured; its stored diagnostics, replayed to a pipe, are what clang prints there', () => {
  const plain = direct(job('direct.o'));
  assert.equal(plain.status, 0, plain.stderr);
  assert.match(plain.stderr, /stack frame size \(\d+\) exceeds limit \(100\) in function 'big'/);
  assert.ok(!plain.stderr.includes(ESC));
  const object = readFileSync(join(dir, 'direct.o'));

  const s0 = cache.stats();
  const miss = onTerminal(job('t.o'));
  assert.equal(miss.status, 0, miss.stdout);
  assert.ok(miss.stdout.includes(`${ESC}0;1;35mwarning: `), `coloured on the terminal: ${JSON.stringify(miss.stdout)}`);
  assert.ok(readFileSync(join(dir, 't.o')).equals(object), 'the object is the one clang writes without colour');
  assert.equal(cache.stats().misses, s0.misses + 1);

  for (const [what, env] of [
    ['the client alone, from the memo', cache.env],
    ['the daemon', { ...cache.env, LTOCACHE_MEMO: '0' }],
  ] as const) {
    rmSync(join(dir, 't.o'));
    const hit = client(job('t.o'), env);
    assert.equal(hit.status, 0);
    assert.equal(hit.stderr, plain.stderr, `${what}: the stderr clang prints to a pipe`);
    assert.ok(readFileSync(join(dir, 't.o')).equals(object));
  }
  assert.equal(cache.stats().hits, s0.hits + 2);
});

test('a command that chooses its colour keeps it: nothing is added on a terminal', () => {
  const r = onTerminal(job('n.o', ['-fno-color-diagnostics']));
  assert.equal(r.status, 0, r.stdout);
  assert.match(r.stdout, /exceeds limit \(100\)/);
  assert.ok(!r.stdout.includes(ESC), JSON.stringify(r.stdout));
});

test('not on a terminal, a miss is not coloured', () => {
  const r = client(job('p.o', ['-O2']));
  assert.equal(r.status, 0);
  assert.equal(r.stderr, direct(job('p2.o', ['-O2'])).stderr);
});
