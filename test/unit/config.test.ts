import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { resolveCacheDir } from '../../src/config/cacheDir.js';
import { ConfigError, ConfigShape, loadConfig, parseConfigText, parseSize } from '../../src/config/config.js';
import { tempDir as envTempDir } from '../support/env.js';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});
function tempDir(): string {
  const d = envTempDir('config');
  dirs.push(d);
  return d;
}

const GiB = 2 ** 30;
const MiB = 2 ** 20;

/** A cache dir holding ltocache.conf with these lines. */
function withConf(lines: string[]): { dir: string; file: string } {
  const dir = tempDir();
  const file = join(dir, 'ltocache.conf');
  fs.writeFileSync(file, lines.join('\n') + '\n');
  return { dir, file };
}

function configError(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof ConfigError, `expected ConfigError, got ${String(e)}`);
    return e.message;
  }
  assert.fail('expected a ConfigError');
}

describe('cache dir', () => {
  test('LTOCACHE_DIR first, then absolute XDG_CACHE_HOME, then HOME', () => {
    assert.equal(resolveCacheDir({ LTOCACHE_DIR: '/a/b', XDG_CACHE_HOME: '/x', HOME: '/h' }), '/a/b');
    assert.equal(resolveCacheDir({ XDG_CACHE_HOME: '/x', HOME: '/h' }), '/x/ltocache');
    assert.equal(resolveCacheDir({ HOME: '/h' }), '/h/.cache/ltocache');
    // A relative XDG_CACHE_HOME is ignored, as the spec says.
    assert.equal(resolveCacheDir({ XDG_CACHE_HOME: 'rel/cache', HOME: '/h' }), '/h/.cache/ltocache');
    // Empty LTOCACHE_DIR counts as unset.
    assert.equal(resolveCacheDir({ LTOCACHE_DIR: '', HOME: '/h' }), '/h/.cache/ltocache');
  });

  test('trailing slashes are stripped, a lone / is kept', () => {
    assert.equal(resolveCacheDir({ LTOCACHE_DIR: '/a/b///' }), '/a/b');
    assert.equal(resolveCacheDir({ LTOCACHE_DIR: '/' }), '/');
    assert.equal(resolveCacheDir({ LTOCACHE_DIR: '///' }), '/');
    assert.equal(resolveCacheDir({ HOME: '/h/' }), '/h//.cache/ltocache');
  });

  test('a relative LTOCACHE_DIR is an error, a ConfigError from loadConfig', () => {
    assert.throws(() => resolveCacheDir({ LTOCACHE_DIR: 'rel/dir' }), /LTOCACHE_DIR must be an absolute path, got 'rel\/dir'/);
    const msg = configError(() => loadConfig({ LTOCACHE_DIR: 'rel/dir' }));
    assert.match(msg, /LTOCACHE_DIR/);
    assert.match(msg, /rel\/dir/);
  });
});

describe('loadConfig', () => {
  test('defaults, with every origin "default"', () => {
    const dir = tempDir();
    const { config, origins } = loadConfig({ LTOCACHE_DIR: dir + '/' });
    const expected: Record<string, unknown> = {
      max_size: 10 * GiB,
      jobs: Math.max(1, cpus().length),
      idle_timeout: 10_800,
      log_level: 'info',
      remote: '',
      remote_token: '',
      remote_mode: 'read-write',
      remote_ca: '',
      remote_timeout_ms: 300,
      upload_queue: 256,
      verify: 'off',
      dir,
      configFile: join(dir, 'ltocache.conf'),
    };
    for (const [k, v] of Object.entries(expected)) assert.deepEqual((config as Record<string, unknown>)[k], v, k);
    // One origin per setting, all defaults.
    assert.deepEqual(Object.keys(origins).sort(), Object.keys(ConfigShape).sort());
    assert.ok(Object.values(origins).every((o) => o === 'default'));
  });

  test('the dir comes from XDG_CACHE_HOME or HOME when LTOCACHE_DIR is unset', () => {
    const xdg = tempDir();
    assert.equal(loadConfig({ XDG_CACHE_HOME: xdg, HOME: '/nonexistent' }).config.dir, `${xdg}/ltocache`);
    const home = tempDir();
    const { config } = loadConfig({ HOME: home });
    assert.equal(config.dir, `${home}/.cache/ltocache`);
    assert.equal(config.configFile, `${home}/.cache/ltocache/ltocache.conf`);
  });

  test('file values override defaults; comments, blanks and quotes', () => {
    const { dir, file } = withConf([
      '# ltocache settings',
      '',
      'max_size = 512M',
      'log_level=debug   # trailing comment',
      '  jobs = 3  ',
      'remote = "wss://cache.example:8443/ltocache"',
      'remote_token = abc#def',
      'verify = sample:0.25',
      'remote_mode = read-only',
    ]);
    const { config, origins } = loadConfig({ LTOCACHE_DIR: dir });
    assert.equal(config.configFile, file);
    assert.equal(config.max_size, 512 * MiB);
    assert.equal(config.log_level, 'debug');
    assert.equal(config.jobs, 3);
    assert.equal(config.remote, 'wss://cache.example:8443/ltocache');
    assert.equal(config.remote_token, 'abc#def');
    assert.equal(config.verify, 'sample:0.25');
    assert.equal(config.remote_mode, 'read-only');
    assert.equal(config.idle_timeout, 10_800);
    assert.equal(origins.max_size, 'file');
    assert.equal(origins.jobs, 'file');
    assert.equal(origins.remote_mode, 'file');
    assert.equal(origins.idle_timeout, 'default');
    assert.equal(origins.upload_queue, 'default');
  });

  test('environment overrides the file; an empty variable does not', () => {
    const { dir } = withConf(['max_size = 512M', 'jobs = 3', 'log_level = debug']);
    const { config, origins } = loadConfig({ LTOCACHE_DIR: dir, LTOCACHE_MAX_SIZE: '1.5GiB', LTOCACHE_JOBS: '', LTOCACHE_IDLE_TIMEOUT: '60', LTOCACHE_REMOTE_MODE: 'read-only' });
    assert.equal(config.max_size, 1.5 * GiB);
    assert.equal(origins.max_size, 'env');
    assert.equal(config.jobs, 3);
    assert.equal(origins.jobs, 'file');
    assert.equal(config.idle_timeout, 60);
    assert.equal(origins.idle_timeout, 'env');
    assert.equal(config.remote_mode, 'read-only');
    assert.equal(origins.remote_mode, 'env');
    assert.equal(origins.log_level, 'file');
  });

  test('LTOCACHE_CONFIG names the file to read', () => {
    const other = tempDir();
    const file = join(other, 'custom.conf');
    fs.writeFileSync(file, 'idle_timeout = 5\n');
    // A file in the cache dir is then ignored.
    const { dir } = withConf(['idle_timeout = 7']);
    const { config, origins } = loadConfig({ LTOCACHE_DIR: dir, LTOCACHE_CONFIG: file });
    assert.equal(config.configFile, file);
    assert.equal(config.idle_timeout, 5);
    assert.equal(origins.idle_timeout, 'file');
  });

  test('LTOCACHE_CONFIG naming a missing file is an error', () => {
    const dir = tempDir();
    const missing = join(dir, 'nope.conf');
    const msg = configError(() => loadConfig({ LTOCACHE_DIR: dir, LTOCACHE_CONFIG: missing }));
    assert.match(msg, /LTOCACHE_CONFIG/);
    assert.ok(msg.includes(missing), msg);
  });

  test('a config path that is a directory is an error naming it', () => {
    const dir = tempDir();
    fs.mkdirSync(join(dir, 'ltocache.conf'));
    const msg = configError(() => loadConfig({ LTOCACHE_DIR: dir }));
    assert.ok(msg.startsWith(`${join(dir, 'ltocache.conf')}:`), msg);
  });
});

describe('bad configuration', () => {
  test('an unknown key names the file and line', () => {
    const { dir, file } = withConf(['# comment', 'jobs = 2', 'max_sise = 1G']);
    const msg = configError(() => loadConfig({ LTOCACHE_DIR: dir }));
    assert.ok(msg.startsWith(`${file}:3: unknown setting 'max_sise'`), msg);
    assert.match(msg, /known: .*max_size/);
  });

  test('a malformed line names the file and line', () => {
    const { dir, file } = withConf(['jobs = 2', 'this is not a setting']);
    const msg = configError(() => loadConfig({ LTOCACHE_DIR: dir }));
    assert.equal(msg, `${file}:2: expected 'key = value', got 'this is not a setting'`);
  });

  const fileCases: [string, string, RegExp][] = [
    ['max_size = ten', 'max_size', /not a size: 'ten'/],
    ['verify = sometimes', 'verify', /verify is off, all or sample:<fraction 0\.\.1>/],
    ['verify = sample:1.5', 'verify', /verify is off, all or sample/],
    ['remote = http://cache.example/', 'remote', /remote must be a ws:\/\/ or wss:\/\/ URL/],
    ['jobs = -2', 'jobs', /.+/],
    ['jobs = 0', 'jobs', /.+/],
    ['jobs = many', 'jobs', /.+/],
    ['jobs = 1.5', 'jobs', /.+/],
    ['log_level = loud', 'log_level', /.+/],
    ['upload_queue = -1', 'upload_queue', /.+/],
    ['remote_mode = write-only', 'remote_mode', /.+/],
    ['idle_timeout = -1', 'idle_timeout', /.+/],
  ];
  for (const [line, key, detail] of fileCases) {
    test(`file: ${line}`, () => {
      const { dir, file } = withConf([line]);
      const msg = configError(() => loadConfig({ LTOCACHE_DIR: dir }));
      assert.ok(msg.includes(`${file}: ${key}: `), msg);
      assert.match(msg, detail);
    });
  }

  const envCases: [string, string, RegExp][] = [
    ['LTOCACHE_MAX_SIZE', 'ten', /not a size: 'ten'/],
    ['LTOCACHE_VERIFY', 'sometimes', /verify is off, all or sample/],
    ['LTOCACHE_REMOTE', 'cache.example:80', /ws:\/\/ or wss:\/\//],
    ['LTOCACHE_JOBS', '-1', /.+/],
  ];
  for (const [name, value, detail] of envCases) {
    test(`env: ${name}=${value}`, () => {
      const dir = tempDir();
      const msg = configError(() => loadConfig({ LTOCACHE_DIR: dir, [name]: value }));
      assert.ok(msg.includes(`${name}: `), msg);
      assert.ok(!msg.includes('ltocache.conf'), msg);
      assert.match(msg, detail);
    });
  }

  test('a bad number says what was wrong and quotes the value given', () => {
    const dir = tempDir();
    for (const [name, value, detail] of [
      ['LTOCACHE_IDLE_TIMEOUT', '1.5', 'not a whole number'],
      ['LTOCACHE_JOBS', 'abc', 'not a number'],
      ['LTOCACHE_REMOTE_TIMEOUT_MS', '0', 'must be at least 1'],
    ] as const) {
      const msg = configError(() => loadConfig({ LTOCACHE_DIR: dir, [name]: value }));
      assert.ok(msg.includes(`${name}: ${detail} (got '${value}')`), msg);
    }
    const { dir: d2, file } = withConf(['log_level = loud']);
    assert.match(
      configError(() => loadConfig({ LTOCACHE_DIR: d2 })),
      new RegExp(`${file}: log_level: .*error.*\\(got 'loud'\\)`),
    );
  });

  test('remote_ca must name a readable file by an absolute path', () => {
    const dir = tempDir();
    const pem = join(dir, 'ca.pem');
    fs.writeFileSync(pem, '-----BEGIN CERTIFICATE-----\n');
    assert.equal(loadConfig({ LTOCACHE_DIR: dir, LTOCACHE_REMOTE_CA: pem }).config.remote_ca, pem);
    assert.match(
      configError(() => loadConfig({ LTOCACHE_DIR: dir, LTOCACHE_REMOTE_CA: 'ca.pem' })),
      /LTOCACHE_REMOTE_CA: must be an absolute path \(got 'ca\.pem'\)/,
    );
    assert.match(
      configError(() => loadConfig({ LTOCACHE_DIR: dir, LTOCACHE_REMOTE_CA: join(dir, 'missing.pem') })),
      /LTOCACHE_REMOTE_CA: cannot read the CA file: ENOENT/,
    );
    const { dir: d2, file } = withConf([`remote_ca = ${dir}`]);
    assert.ok(configError(() => loadConfig({ LTOCACHE_DIR: d2 })).includes(`${file}: remote_ca: cannot read the CA file: EISDIR`));
  });

  test('every invalid setting is reported, not only the first', () => {
    const { dir } = withConf(['max_size = ten', 'jobs = -2']);
    const msg = configError(() => loadConfig({ LTOCACHE_DIR: dir }));
    assert.match(msg, /max_size/);
    assert.match(msg, /jobs/);
  });
});

describe('parseConfigText', () => {
  test('returns raw strings: quotes stripped, comments and blank lines ignored, CRLF accepted', () => {
    const text = '# header\r\nmax_size = 1G\r\n\r\n  jobs=2 # two\nremote_token = "a b"\nremote_ca =\n';
    assert.deepEqual(parseConfigText(text, 'f.conf'), { max_size: '1G', jobs: '2', remote_token: 'a b', remote_ca: '' });
  });

  test('a later line for the same key wins', () => {
    assert.deepEqual(parseConfigText('jobs = 1\njobs = 4\n', 'f.conf'), { jobs: '4' });
  });

  test('errors name the given file and the 1-based line', () => {
    assert.throws(
      () => parseConfigText('\n\nJobs = 2', 'my.conf'),
      (e: unknown) => e instanceof ConfigError && e.message.startsWith("my.conf:3: expected 'key = value'"),
    );
    assert.throws(
      () => parseConfigText('# c\nnope = 1', 'my.conf'),
      (e: unknown) => e instanceof ConfigError && e.message.startsWith("my.conf:2: unknown setting 'nope'"),
    );
  });
});

describe('parseSize', () => {
  const good: [string, number][] = [
    ['10G', 10 * GiB],
    ['512M', 512 * MiB],
    ['1.5GiB', 1.5 * GiB],
    ['4096', 4096],
    ['4K', 4096],
    ['2KiB', 2048],
    ['1T', 2 ** 40],
    ['10g', 10 * GiB],
    ['10GB', 10 * GiB],
    ['100B', 100],
    [' 64 M ', 64 * MiB],
    ['0.5K', 512],
  ];
  for (const [text, bytes] of good) test(`${JSON.stringify(text)} = ${bytes}`, () => assert.equal(parseSize(text), bytes));

  for (const text of ['ten', '', '-1', '1.5.5', '10X', 'G', '1e3', '10 G B']) {
    test(`${JSON.stringify(text)} is not a size`, () => assert.throws(() => parseSize(text), /not a size/));
  }
});
