import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { type AskClang, ConfigFiles, tokenizeConfigFile } from '../../src/key/configFiles.js';
import type { Token } from '../../src/key/parseJob.js';
import { Uncacheable } from '../../src/key/uncacheable.js';
import { tempDir } from '../support/env.js';

const dir = tempDir('configfiles');
after(() => fs.rmSync(dir, { recursive: true, force: true }));

test('config files split as clang splits them: comment lines, joined lines, GNU quoting', () => {
  const cases: [string, string[]][] = [
    ['-O2 -g\n', ['-O2', '-g']],
    ['# a comment -O3\n  # indented comment\n-O1', ['-O1']],
    ['-DA=1 # not a comment here\n', ['-DA=1', '#', 'not', 'a', 'comment', 'here']],
    ['-DA=\\\n1\n', ['-DA=1']],
    ['-DA=1 \\\r\n-DB=2\r\n', ['-DA=1', '-DB=2']],
    ['"-DQ=a b" \'-DR=c d\' -DS=e\\ f\n', ['-DQ=a b', '-DR=c d', '-DS=e f']],
    ['\n\n\t\n', []],
    ['-x\\', ['-x\\']],
  ];
  for (const [text, want] of cases) assert.deepEqual(tokenizeConfigFile(text), want, JSON.stringify(text));
});

const TOKENS = (input: string, out: string): Token[] => [
  { t: 'flag', v: '-O2' },
  { t: 'file', v: '', path: input, role: 'input' },
  { t: 'output', v: '-o', path: out, role: 'obj' },
];

test('clang is asked once per command shape; a failed answer is not remembered; a refusal is uncacheable', async () => {
  const cfg = join(dir, 'a.cfg');
  fs.writeFileSync(cfg, '-ffunction-sections @more.rsp\n');
  fs.writeFileSync(join(dir, 'more.rsp'), '-I<CFGDIR>/inc\n');
  let calls = 0;
  let answer = { code: 0, stderr: `clang version 19\nConfiguration file: ${cfg}\n` };
  const ask: AskClang = async () => {
    calls++;
    return answer;
  };
  const configs = new ConfigFiles(ask);
  const x = await configs.expand({ compiler: '/usr/bin/clang', argv: ['-O2', 'a.o', '-o', 'a.n.o'], tokens: TOKENS('a.o', 'a.n.o'), cwd: dir, env: {}, configDigests: [] });
  assert.deepEqual(x.head, ['-ffunction-sections', `-I${dir}/inc`]);
  assert.deepEqual(
    x.files.map((f) => f.path),
    [cfg, join(dir, 'more.rsp')],
  );
  await configs.expand({ compiler: '/usr/bin/clang', argv: ['-O2', 'b.o', '-o', 'b.n.o'], tokens: TOKENS('b.o', 'b.n.o'), cwd: dir, env: {}, configDigests: [] });
  assert.equal(calls, 1, 'another input and output: the same shape');
  await configs.expand({
    compiler: '/usr/bin/clang',
    argv: ['-O2', 'b.o', '-o', 'b.n.o'],
    tokens: TOKENS('b.o', 'b.n.o'),
    cwd: dir,
    env: { CLANG_NO_DEFAULT_CONFIG: '' },
    configDigests: [],
  });
  await configs.expand({
    compiler: '/usr/bin/clang',
    argv: ['-O2', 'b.o', '-o', 'b.n.o'],
    tokens: TOKENS('b.o', 'b.n.o'),
    cwd: dir,
    env: {},
    configDigests: [{ path: cfg, digest: 'x'.repeat(32) }],
  });
  assert.equal(calls, 3, 'the variable and the config digests are part of the shape');
  answer = { code: 1, stderr: 'error: unknown argument' };
  const refused = configs.expand({ compiler: '/usr/bin/clang', argv: ['-O3'], tokens: [{ t: 'flag', v: '-O3' }], cwd: dir, env: {}, configDigests: [] });
  await assert.rejects(refused, (e) => e instanceof Uncacheable && e.reason === 'config-file');
  answer = { code: 0, stderr: '' };
  assert.deepEqual((await configs.expand({ compiler: '/usr/bin/clang', argv: ['-O3'], tokens: [{ t: 'flag', v: '-O3' }], cwd: dir, env: {}, configDigests: [] })).files, []);
  assert.equal(calls, 5, 'the refusal was asked again');
});

test('what cannot be expanded as clang does is uncacheable, with the file named', async () => {
  const ask: AskClang = async () => ({ code: 0, stderr: `Configuration file: ${join(dir, 'bad.cfg')}\n` });
  for (const [text, re] of [
    ['$-lm\n', /read differently/],
    ['--config=x.cfg\n', /inside a config file/],
    ['@missing.rsp\n', /cannot read config file/],
    ['@bad.cfg\n', /nested deeper/],
    [Buffer.from([0x2d, 0x49, 0xe9, 0x0a]), /not valid UTF-8/],
  ] as const) {
    fs.writeFileSync(join(dir, 'bad.cfg'), text);
    await assert.rejects(
      new ConfigFiles(ask).expand({ compiler: '/c', argv: [], tokens: [], cwd: dir, env: {}, configDigests: [] }),
      (e) => e instanceof Uncacheable && e.reason === 'config-file' && re.test(e.detail),
      String(text),
    );
  }
});
