/**
 * Fuzz: configuration (src/config/config.ts).
 *
 *  - parseConfigText on generated well-formed files (every setting, random spacing, quotes,
 *    comments, CRLF, blank lines, repeated keys): exactly the model's key → value map.
 *  - parseConfigText on arbitrary text (and hostile lines: prototype names such as
 *    `constructor`/`__proto__`, control and Unicode line separators, NULs): a map holding only
 *    known settings, or a ConfigError that starts `<file>:<line>: ` with a real line number;
 *    never another exception, no prototype pollution.
 *  - loadConfig(env) with a random config file and random LTOCACHE_* values (valid, hostile,
 *    huge, empty): a Config whose every field is sane (positive safe-integer sizes, integers
 *    at or above their minimum, enums in range) and whose origins say where each value came
 *    from, or a ConfigError naming the config file or the LTOCACHE_* variable at fault.
 */

import assert from 'node:assert/strict';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { ConfigError, type ConfigKey, ConfigShape, loadConfig, parseConfigText } from '../../src/config/config.js';
import { tempDir } from '../support/env.js';
import { fuzz, timed } from './common.js';
import { CONFIG_REGRESSIONS } from './regressions/config.js';

const KEYS = Object.keys(ConfigShape) as ConfigKey[];
const FILE = '/etc/ltocache-fuzz.conf';

/** Values the model can predict: no '#', no line breaks, no surrounding whitespace. */
const valueArb = fc
  .string({ unit: fc.constantFrom(...'abcXYZ019._-:/=" ', 'é', '✓'), maxLength: 16 })
  .map((s) => s.trim())
  .filter((s) => !/\s#/.test(s));

interface Line {
  kind: 'set' | 'comment' | 'blank';
  key: ConfigKey;
  value: string;
  quoted: boolean;
  lead: string;
  aroundEq: [string, string];
  trailingComment: string;
}
const lineArb: fc.Arbitrary<Line> = fc.record({
  kind: fc.oneof({ weight: 5, arbitrary: fc.constant('set' as const) }, { weight: 1, arbitrary: fc.constantFrom('comment' as const, 'blank' as const) }),
  key: fc.constantFrom(...KEYS),
  value: valueArb,
  quoted: fc.boolean(),
  lead: fc.constantFrom('', ' ', '\t', '  '),
  aroundEq: fc.tuple(fc.constantFrom('', ' ', '\t'), fc.constantFrom('', ' ', '  ')),
  trailingComment: fc.constantFrom('', ' # note', '\t#x', ' #'),
});

function render(lines: Line[], crlf: boolean): { text: string; want: Record<string, string> } {
  const want: Record<string, string> = {};
  const out = lines.map((l) => {
    if (l.kind === 'blank') return l.lead;
    if (l.kind === 'comment') return `${l.lead}# ${l.key} = ${l.value}`;
    want[l.key] = l.value.replace(/^"(.*)"$/, '$1');
    if (l.quoted) want[l.key] = l.value;
    const v = l.quoted ? `"${l.value}"` : l.value;
    return `${l.lead}${l.key}${l.aroundEq[0]}=${l.aroundEq[1]}${v}${v === '' ? '' : l.trailingComment}`;
  });
  return { text: out.join(crlf ? '\r\n' : '\n'), want };
}

/** Any text: only known keys come out, or a ConfigError naming file and an existing line. */
function checkText(text: string): void {
  const lines = text.split(/\r?\n/).length;
  let out: Record<string, string>;
  try {
    out = timed('parseConfigText', 200, () => parseConfigText(text, FILE));
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    const m = /^\/etc\/ltocache-fuzz\.conf:(\d+): /.exec(e.message);
    assert.ok(m, `error does not name file:line: ${e.message}`);
    const n = Number(m[1]);
    assert.ok(n >= 1 && n <= lines, `line ${n} of ${lines}`);
    return;
  }
  for (const [k, v] of Object.entries(out)) {
    assert.ok(Object.hasOwn(ConfigShape, k), `unknown setting '${k}' accepted silently`);
    assert.equal(typeof v, 'string');
  }
  assert.equal(Object.getPrototypeOf(out), Object.prototype, 'prototype of the result was replaced');
  assert.equal(({} as Record<string, unknown>).polluted, undefined);
}

const hostileLine = fc.oneof(
  fc.constantFrom(
    'constructor = 1',
    '__proto__ = x',
    'prototype = 1',
    'tostring = 1',
    'hasownproperty = 1',
    '__definegetter__ = 1',
    'max_size = 1\u2028x',
    'max_size = 10G # a\u2028b',
    'jobs = 4 #\rnote',
    'jobs\0 = 4',
    '= 4',
    'jobs =',
    'JOBS = 4',
    'jobs == 4',
    'remote = "ws://h"x"',
    'log_level = "debug',
    '#'.repeat(1000),
    ' '.repeat(1000) + 'x',
    'a'.repeat(5000) + ' = 1',
    `jobs = ${'9'.repeat(400)}`,
  ),
  fc.tuple(fc.constantFrom(...KEYS, 'constructor', '__proto__', 'valueof'), fc.string({ unit: 'binary', maxLength: 12 })).map(([k, v]) => `${k} = ${v}`),
  fc.string({ unit: 'binary', maxLength: 30 }),
);

describe('fuzz: configuration', () => {
  test('well-formed files parse to exactly the model map', async (t) => {
    await fuzz(
      t,
      'config text (exact)',
      fc.property(fc.array(lineArb, { maxLength: 12 }), fc.boolean(), (lines, crlf) => {
        const { text, want } = render(lines, crlf);
        assert.deepEqual({ ...parseConfigText(text, FILE) }, want);
      }),
      { seed: 0xc0f001, numRuns: 3000, timeLimitMs: 1_500 },
    );
  });

  test('arbitrary text: known settings only, or a ConfigError naming file:line', async (t) => {
    await fuzz(
      t,
      'config text (arbitrary)',
      fc.property(
        fc.oneof(
          fc.string({ unit: 'binary', maxLength: 200 }),
          fc
            .array(
              fc.oneof(
                hostileLine,
                lineArb.map((l) => render([l], false).text),
              ),
              { maxLength: 8 },
            )
            .map((ls) => ls.join('\n')),
        ),
        (text) => checkText(text),
      ),
      { seed: 0xc0f002, numRuns: 4000, timeLimitMs: 1_500 },
    );
  });

  describe('loadConfig', () => {
    let root: string;
    before(() => {
      root = tempDir('fuzz-config');
      mkdirSync(join(root, 'cache'));
      mkdirSync(join(root, 'a-directory'));
    });
    after(() => rmSync(root, { recursive: true, force: true }));

    /** Mostly values that are valid for the key (so that the ok side is reached), some hostile. */
    const validFor: Record<ConfigKey, fc.Arbitrary<string>> = {
      max_size: fc.constantFrom('10G', '512M', '1.5GiB', '4096', '2KiB', '1T'),
      jobs: fc.integer({ min: 1, max: 64 }).map(String),
      idle_timeout: fc.nat({ max: 100000 }).map(String),
      log_level: fc.constantFrom('error', 'warn', 'info', 'debug'),
      remote: fc.constantFrom('', 'ws://team:7777', 'wss://cache.example/x'),
      remote_token: fc.string({ maxLength: 20 }),
      remote_mode: fc.constantFrom('read-only', 'read-write'),
      remote_ca: fc.string({ maxLength: 20 }),
      remote_timeout_ms: fc.integer({ min: 1, max: 1e6 }).map(String),
      remote_retry_ms: fc.integer({ min: 1, max: 1e6 }).map(String),
      upload_queue: fc.nat({ max: 1e6 }).map(String),
      remote_prefetch: fc.constantFrom('on', 'off'),
      verify: fc.constantFrom('off', 'all', 'sample:0.5', 'sample:1', 'sample:0'),
      build_gap_ms: fc.integer({ min: 1, max: 1e6 }).map(String),
    };
    const hostileValue = fc.oneof(
      fc.constantFrom(
        '',
        '0',
        '-1',
        '1.5',
        '99999999999T',
        '9'.repeat(400),
        '1e3',
        '0x10',
        'Infinity',
        'NaN',
        ' 8 ',
        'loud',
        'http://x',
        'ws://a b',
        'sample:2',
        '__proto__',
        'constructor',
        '0.0001K',
      ),
      fc.string({ unit: 'binary', maxLength: 10 }),
    );
    const settingArb = fc.constantFrom(...KEYS).chain((k) => fc.tuple(fc.constant(k), fc.oneof({ weight: 4, arbitrary: validFor[k] }, { weight: 1, arbitrary: hostileValue })));
    const envArb = fc.record({
      dir: fc.oneof({ weight: 6, arbitrary: fc.constantFrom('abs', 'abs-slashes', 'unset-home') }, { weight: 1, arbitrary: fc.constant('relative') }),
      config: fc.oneof({ weight: 6, arbitrary: fc.constantFrom('default', 'explicit') }, { weight: 1, arbitrary: fc.constantFrom('missing', 'directory') }),
      fileText: fc
        .array(
          fc.oneof(
            { weight: 6, arbitrary: fc.tuple(settingArb, fc.constantFrom('', ' ', '\t'), fc.constantFrom('', ' # c')).map(([[k, v], sp, c]) => `${sp}${k} = ${v}${c}`) },
            { weight: 1, arbitrary: fc.constantFrom('', '# comment') },
            { weight: 1, arbitrary: hostileLine },
          ),
          { maxLength: 6 },
        )
        .map((ls) => ls.join('\n')),
      vars: fc.array(settingArb, { maxLength: 4 }).map((l) => Object.fromEntries(l)),
    });

    test('a sane Config with honest origins, or a ConfigError naming its source', async (t) => {
      let n = 0;
      const kinds = { ok: 0, error: 0 };
      await fuzz(
        t,
        'loadConfig',
        fc.property(envArb, (e) => {
          const dir = join(root, `d${n++}`);
          mkdirSync(dir);
          const file = join(dir, 'ltocache.conf');
          writeFileSync(file, e.fileText);
          const env: NodeJS.ProcessEnv = { HOME: root };
          if (e.dir === 'abs') env.LTOCACHE_DIR = dir;
          if (e.dir === 'abs-slashes') env.LTOCACHE_DIR = `${dir}///`;
          if (e.dir === 'relative') env.LTOCACHE_DIR = 'relative/dir';
          if (e.dir === 'unset-home') env.HOME = dir; // → <dir>/.cache/ltocache (no file there)
          if (e.config === 'explicit') env.LTOCACHE_CONFIG = file;
          if (e.config === 'missing') env.LTOCACHE_CONFIG = join(dir, 'nope.conf');
          if (e.config === 'directory') env.LTOCACHE_CONFIG = join(root, 'a-directory');
          for (const [k, v] of Object.entries(e.vars)) env[`LTOCACHE_${k.toUpperCase()}`] = v;
          let loaded: ReturnType<typeof loadConfig> | undefined;
          try {
            loaded = timed('loadConfig', 200, () => loadConfig(env));
          } catch (err) {
            if (!(err instanceof ConfigError)) throw err;
            kinds.error++;
            const named = Object.keys(env).filter((k) => k.startsWith('LTOCACHE_') && err.message.includes(k));
            const configFile = env.LTOCACHE_CONFIG || join(env.LTOCACHE_DIR ? env.LTOCACHE_DIR.replace(/\/+$/, '') : '', 'ltocache.conf');
            assert.ok(named.length > 0 || err.message.includes(configFile), `error names neither the file nor a variable: ${err.message}`);
            return;
          }
          kinds.ok++;
          const { config, origins } = loaded;
          assert.ok(Number.isSafeInteger(config.max_size) && config.max_size > 0, `max_size ${config.max_size}`);
          for (const [k, min] of [
            ['jobs', 1],
            ['idle_timeout', 0],
            ['remote_timeout_ms', 1],
            ['remote_retry_ms', 1],
            ['upload_queue', 0],
            ['build_gap_ms', 1],
          ] as const) {
            assert.ok(Number.isSafeInteger(config[k]) && config[k] >= min, `${k} = ${config[k]}`);
          }
          assert.ok(['error', 'warn', 'info', 'debug'].includes(config.log_level));
          assert.ok(['read-only', 'read-write'].includes(config.remote_mode));
          assert.ok(config.remote === '' || /^wss?:\/\/\S+$/.test(config.remote));
          assert.ok(config.dir.startsWith('/') && (config.dir === '/' || !config.dir.endsWith('/')));
          const fileValues = e.config === 'missing' || e.config === 'directory' || (e.dir === 'unset-home' && e.config === 'default') ? {} : parseConfigText(e.fileText, file);
          for (const k of KEYS) {
            const ev = env[`LTOCACHE_${k.toUpperCase()}`];
            const want = ev !== undefined && ev !== '' ? 'env' : k in fileValues ? 'file' : 'default';
            assert.equal(origins[k], want, `origin of ${k}`);
            if (want === 'env' && typeof config[k] === 'string') assert.equal(config[k], ev, `${k} from env`);
            if (want === 'file' && typeof config[k] === 'string') assert.equal(config[k], fileValues[k], `${k} from file`);
          }
        }),
        { seed: 0xc0f003, numRuns: 1500, timeLimitMs: 3_000 },
      );
      t.diagnostic(`ok ${kinds.ok}, ConfigError ${kinds.error}`);
      assert.ok(kinds.ok > 50 && kinds.error > 50, JSON.stringify(kinds));
    });
  });

  test('regressions', () => {
    for (const r of CONFIG_REGRESSIONS) {
      if (r.kind === 'text') checkText(r.text);
      else {
        const dir = tempDir('fuzz-config-reg');
        try {
          const env = { HOME: dir, LTOCACHE_DIR: dir, ...r.env };
          let err: unknown;
          try {
            const { config } = loadConfig(env);
            assert.ok(Number.isSafeInteger(config.max_size) && config.max_size > 0, `${r.name}: max_size ${config.max_size}`);
          } catch (e) {
            err = e;
          }
          if (r.expectError) {
            assert.ok(err instanceof ConfigError, `${r.name}: expected a ConfigError`);
            assert.match(err.message, new RegExp(Object.keys(r.env)[0]!), r.name);
          } else if (err) throw err;
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      }
    }
  });
});
