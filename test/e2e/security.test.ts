import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import crypto, { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { createServer as createNetServer, type Server as NetServer, connect as netConnect, type Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { WebSocket, WebSocketServer } from 'ws';
import type { ThinBuild } from '../../src/demo/thinBuild.js';
import { hashBytes, initHash } from '../../src/key/hash.js';
import { encodePassthrough, socketDirFor, socketPathFor } from '../../src/protocol/clientFrames.js';
import { DEFAULT_LIMITS, decodeBinary, encodeBinary } from '../../src/protocol/remote.js';
import { unpackBundle } from '../../src/remote/bundle.js';
import { parseTokens, TokenTable } from '../../src/remote/tokens.js';
import type { StatsView } from '../../src/stats/counters.js';
import type { EntryRecord } from '../../src/store/record.js';
import { processAlive } from '../../src/util/processAlive.js';
import { Direct } from '../support/direct.js';
import { CacheEnv, CLI, CLIENT, runAsync, TOP, tempDir } from '../support/env.js';
import { rawTar } from '../support/rawTar.js';
import { ServerProcess, TOKENS } from '../support/server.js';
import { sharedTree } from '../support/sharedTree.js';
import { waitFor } from '../support/waitFor.js';

/**
 * Security (issue 5, "Security"): the private socket directory, secrets never logged, constant-time
 * token comparison, bundles from a hostile server, and a flood of hostile connections against
 * `ltocache serve`. Loopback only; every loop is bounded.
 *
 * Reproduce one: node --test --test-name-pattern='<name>' dist/test/e2e/security.test.js
 */

await initHash();

const IS_ROOT = process.getuid?.() === 0;

function buildAll(b: ThinBuild, cache: CacheEnv, extra: string[] = []): void {
  for (const m of b.modules) {
    const r = b.backend(m, { wrapper: [CLIENT], extra, env: cache.env });
    assert.equal(r.status, 0, `backend ${m}: ${r.stderr}`);
  }
}

const { tree: sharedBase, cleanup } = sharedTree('sec-tree');

function cacheEnv(name: string, extra: Record<string, string> = {}): CacheEnv {
  const c = new CacheEnv(`sec-${name}`, extra);
  cleanup.push(() => {
    const pid = c.daemonPid();
    c.destroy();
    if (pid && processAlive(pid)) process.kill(pid, 'SIGKILL');
  });
  return c;
}

function tree(name: string): { b: ThinBuild; direct: Direct } {
  const top = tempDir(`sec-${name}`);
  cleanup.push(() => rmSync(top, { recursive: true, force: true }));
  const b = sharedBase().copyTo(join(top, 'src'));
  return { b, direct: new Direct(b) };
}

// ---------------------------------------------------------------------------------------------
// 7. The socket directory

describe('the socket directory is private', () => {
  let user = '';
  let uid = -1;
  let gid = -1;
  const made: string[] = [];
  const opened: { dir: string; mode: number }[] = [];
  before(() => {
    if (!IS_ROOT) return;
    const name = `ltocache-probe-${randomBytes(3).toString('hex')}`;
    const r = spawnSync('useradd', ['-M', '-r', '-s', '/usr/sbin/nologin', name], { encoding: 'utf8' });
    if (r.status !== 0) return;
    user = name;
    uid = Number(spawnSync('id', ['-u', name], { encoding: 'utf8' }).stdout.trim());
    gid = Number(spawnSync('id', ['-g', name], { encoding: 'utf8' }).stdout.trim());
    // The probe user runs the client and the CLI from this checkout: a checkout that is, or is in,
    // a private directory (e.g. `mktemp -d`, mode 0700) gets search permission for others on it
    // and its ancestors for the duration of these tests, and the modes are put back afterwards.
    for (let d = TOP; d !== dirname(d); d = dirname(d)) {
      const st = statSync(d);
      if ((st.mode & 0o001) === 0 && st.uid === process.getuid!()) {
        opened.push({ dir: d, mode: st.mode & 0o7777 });
        chmodSync(d, (st.mode & 0o7777) | 0o001);
      }
    }
  });
  after(() => {
    for (const o of opened.reverse()) chmodSync(o.dir, o.mode);
    if (uid >= 0) rmSync(socketDirFor(uid), { recursive: true, force: true });
    for (const d of made) rmSync(d, { recursive: true, force: true });
    if (user) spawnSync('userdel', [user]);
  });

  /** Runs argv as the probe user with exactly `env` (setpriv keeps the environment). */
  function asProbe(argv: string[], env: NodeJS.ProcessEnv, cwd = '/'): { status: number; stdout: string; stderr: string } {
    const r = spawnSync('setpriv', [`--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', '--', ...argv], { env, cwd, encoding: 'utf8', timeout: 30_000 });
    return { status: r.status ?? 128, stdout: r.stdout, stderr: r.stderr };
  }

  test("another user cannot reach the daemon's socket: EACCES, and the daemon never sees a connection", { timeout: 60_000 }, (t) => {
    if (!IS_ROOT) return t.skip('needs root to create a throwaway user (useradd) and switch to it');
    if (!user) return t.skip('useradd failed; cannot create the probe user');
    const cache = cacheEnv('private');
    cache.start();
    const sock = socketPathFor(cache.dir, process.getuid!());
    assert.ok(existsSync(sock));
    const before = cache.stats();
    const probe = `const net = require('net'); const fs = require('fs');
      const out = {};
      try { fs.lstatSync(process.argv[1]); out.lstat = 'ok'; } catch (e) { out.lstat = e.code; }
      try { fs.readdirSync(require('path').dirname(process.argv[1])); out.readdir = 'ok'; } catch (e) { out.readdir = e.code; }
      const s = net.connect(process.argv[1]);
      s.on('connect', () => { out.connect = 'connected'; console.log(JSON.stringify(out)); s.destroy(); });
      s.on('error', (e) => { out.connect = e.code; console.log(JSON.stringify(out)); });`;
    let attempts = 0;
    for (let i = 0; i < 5; i++) {
      const r = asProbe([process.execPath, '-e', probe, sock], { PATH: process.env.PATH });
      attempts++;
      assert.equal(r.status, 0, r.stderr);
      assert.deepEqual(JSON.parse(r.stdout), { lstat: 'EACCES', readdir: 'EACCES', connect: 'EACCES' });
    }
    const after = cache.stats();
    assert.deepEqual(after.errors_by_kind, before.errors_by_kind, 'the daemon saw no (bad) request');
    assert.equal(after.hits + after.misses + after.uncacheable, before.hits + before.misses + before.uncacheable);
    t.diagnostic(`probe_user=${user} connect_attempts=${attempts} eacces=${attempts} reached_daemon=0`);
  });

  test('a socket directory owned by someone else, group/other-accessible or a symlink: the client never connects (direct exec), the daemon refuses it', {
    timeout: 60_000,
  }, async (t) => {
    if (!IS_ROOT) return t.skip('needs root to create a throwaway user and plant a directory it does not own');
    if (!user) return t.skip('useradd failed; cannot create the probe user');
    // The probe user's own checkout and cache dir.
    const home = tempDir('sec-probe-home');
    made.push(home);
    const b = sharedBase().copyTo(join(home, 'src'));
    const cacheDir = join(home, 'cache');
    mkdirSync(cacheDir);
    spawnSync('chown', ['-R', `${uid}:${gid}`, home]);
    chmodSync(home, 0o755);
    const direct = new Direct(b);
    const expected = direct.get('lonely');
    const env = { PATH: process.env.PATH, HOME: home, LTOCACHE_DIR: cacheDir, LTOCACHE_START_TIMEOUT_MS: '500', LTOCACHE_IDLE_TIMEOUT: '30' };

    // An impostor "daemon" listening where the probe user's client would look. It answers 'P'.
    const dir = socketDirFor(uid);
    rmSync(dir, { recursive: true, force: true });
    const seen: string[] = [];
    const impostor: NetServer = createNetServer((s: Socket) => {
      seen.push('connection');
      s.on('error', () => {});
      s.once('data', () => s.end(encodePassthrough('impostor')));
    });
    cleanup.push(() => new Promise<void>((r) => impostor.close(() => r())));
    const plant = (mode: number, owner: number, link = false) => {
      rmSync(dir, { recursive: true, force: true });
      const real = link ? `${dir}.target` : dir;
      rmSync(real, { recursive: true, force: true });
      mkdirSync(real);
      chownSync(real, owner, owner === 0 ? 0 : gid);
      chmodSync(real, mode);
      if (link) symlinkSync(real, dir);
      made.push(real);
      return real;
    };
    const listenIn = async (real: string) => {
      const p = join(real, socketPathFor(cacheDir, uid).split('/').pop()!);
      await new Promise<void>((r) => {
        impostor.close(() => r());
        if (!impostor.listening) r();
      });
      rmSync(p, { force: true });
      await new Promise<void>((res, rej) => {
        impostor.once('error', rej);
        impostor.listen(p, () => res());
      });
      chmodSync(p, 0o777);
    };
    const job = async () => {
      rmSync(join(b.dir, 'lonely.thinlto-native.o'), { force: true });
      // Asynchronously: the impostor lives in this process and must be able to answer.
      const r = await runAsync('setpriv', [`--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', '--', CLIENT, b.clang, ...b.backendArgs('lonely')], { cwd: b.dir, env });
      assert.equal(r.status, 0, r.stderr);
      assert.ok(readFileSync(join(b.dir, 'lonely.thinlto-native.o')).equals(expected), 'direct exec gave the right object');
    };
    const unsafe: [string, () => string][] = [
      ['owned by root, mode 0777', () => plant(0o777, 0)],
      ['owned by root, mode 0700', () => plant(0o700, 0)],
      ['owned by the user, mode 0755', () => plant(0o755, uid)],
      ['owned by the user, mode 0770', () => plant(0o770, uid)],
      ['a symlink to a directory the user owns, mode 0700', () => plant(0o700, uid, true)],
    ];
    let refusedByClient = 0;
    let refusedByDaemon = 0;
    for (const [name, make] of unsafe) {
      const real = make();
      await listenIn(real);
      await job();
      assert.deepEqual(seen, [], `${name}: the client connected to the impostor`);
      refusedByClient++;
      // The daemon, started by hand as that user, refuses the directory too.
      const d = asProbe([process.execPath, CLI, 'daemon', 'run'], env);
      assert.notEqual(d.status, 0, `${name}: the daemon started`);
      const log = existsSync(join(cacheDir, 'daemon.log')) ? readFileSync(join(cacheDir, 'daemon.log'), 'utf8') : '';
      assert.match(d.stderr + log, /refusing to use it|must be 0700|is not a directory/, `${name}: ${d.stderr}`);
      refusedByDaemon++;
    }
    // Control: the same impostor in a directory that passes the checks is reached.
    const ok = plant(0o700, uid);
    await listenIn(ok);
    await job();
    assert.deepEqual(seen, ['connection'], 'control: a safe directory is used');
    rmSync(dir, { recursive: true, force: true });
    t.diagnostic(`unsafe_dirs=${unsafe.length} client_refused=${refusedByClient} daemon_refused=${refusedByDaemon} impostor_connections=0 control_connections=1 builds_broken=0`);
  });
});

// ---------------------------------------------------------------------------------------------
// 8. Secrets never logged

describe('secrets never logged', () => {
  test('after auth successes and failures, no secret is in the access log, stdout, stderr or daemon.log; the access log names tokens', { timeout: 90_000 }, async (t) => {
    const dir = tempDir('sec-serve');
    cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
    const tokensFile = join(dir, 'tokens');
    writeFileSync(tokensFile, `ci write ${TOKENS.write}\ndev read ${TOKENS.read}\nops admin ${TOKENS.admin}\n`, { mode: 0o600 });
    const child: ChildProcess = spawn(process.execPath, [CLI, 'serve', '--listen', '127.0.0.1:0', '--dir', join(dir, 'data'), '--tokens', tokensFile], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    cleanup.push(() => void child.kill('SIGKILL'));
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    await waitFor('the server to listen', () => /listening on ws:\/\//.test(out), 20_000);
    const url = /listening on (ws:\/\/\S+)/.exec(out)![1]!;

    const wrong = [
      TOKENS.write.slice(0, -1) + (TOKENS.write.endsWith('f') ? 'e' : 'f'), // right prefix and length
      'X' + TOKENS.read.slice(1), // right suffix and length
      TOKENS.admin + 'x',
      TOKENS.write.slice(0, 20),
      randomBytes(24).toString('base64url'),
    ];
    const reload = `reloaded-secret-${randomBytes(8).toString('hex')}`;
    const every = [TOKENS.write, TOKENS.read, TOKENS.admin, ...wrong, reload];

    let refused = 0;
    let accepted = 0;
    const open = (headers: Record<string, string>, path = '/') =>
      new Promise<WebSocket | number>((res) => {
        const ws = new WebSocket(url + path, { headers });
        ws.once('open', () => res(ws));
        ws.once('unexpected-response', (req, r) => {
          req.destroy();
          res(r.statusCode ?? 0);
        });
        ws.once('error', () => res(-1));
      });
    const talk = async (ws: WebSocket, msgs: unknown[]): Promise<Record<string, unknown>[]> => {
      const got: Record<string, unknown>[] = [];
      ws.on('message', (d, bin) => {
        if (!bin) got.push(JSON.parse(d.toString()));
      });
      for (const m of msgs) ws.send(JSON.stringify(m));
      await waitFor('replies', () => got.length >= msgs.length, 5000, 10);
      ws.close();
      return got;
    };
    // Failures: wrong secrets, no header, other schemes, a secret in the URL.
    for (const s of wrong) {
      assert.equal(await open({ authorization: `Bearer ${s}` }), 401);
      refused++;
    }
    for (const h of [{} as Record<string, string>, { authorization: `Basic ${Buffer.from(`ci:${TOKENS.write}`).toString('base64')}` }, { authorization: TOKENS.write }]) {
      assert.equal(await open(h), 401);
      refused++;
    }
    assert.equal(await open({}, `/?token=${TOKENS.write}`), 401);
    refused++;
    // Successes with each scope, and a refused put with the read token.
    const hello = { type: 'hello', protocol: 1, client: 'security.test' };
    const key = hashBytes('security-test-key');
    for (const [secret, msgs] of [
      [TOKENS.write, [hello, { type: 'get', id: 1, key }, { type: 'ping', id: 2 }]],
      [
        TOKENS.read,
        [
          hello,
          { type: 'get', id: 1, key },
          {
            type: 'put',
            id: 2,
            key,
            entry: { v: 1, outputs: [{ name: 'obj', digest: key, size: 1 }], stdout: '', stderr: '', exitCode: 0, compileMs: 1, createdAt: 1 },
            bundleBytes: 1,
          },
        ],
      ],
      [TOKENS.admin, [hello, { type: 'admin', id: 1, op: 'reset-stats' }, { type: 'stats', id: 2 }]],
    ] as const) {
      const ws = await open({ authorization: `Bearer ${secret}` });
      assert.ok(ws instanceof WebSocket);
      const replies = await talk(ws, [...msgs]);
      assert.equal(replies[0]!.type, 'welcome');
      accepted++;
    }
    // A reload with a broken tokens file that carries a new secret: refused, and not printed.
    writeFileSync(tokensFile, `ci write ${TOKENS.write}\nnew write ${reload} extra-field\n`);
    child.kill('SIGHUP');
    await waitFor('the reload error', () => /tokens file not reloaded/.test(err), 10_000);
    writeFileSync(tokensFile, `ci write ${TOKENS.write}\nbad-scope superuser ${reload}\n`);
    child.kill('SIGHUP');
    await waitFor('the second reload error', () => (err.match(/tokens file not reloaded/g) ?? []).length >= 2, 10_000);
    writeFileSync(tokensFile, `ci write ${TOKENS.write}\ndev read ${TOKENS.read}\nops admin ${TOKENS.admin}\n`);

    // Daemons with a valid and a wrong token: their logs must not carry the secret either.
    const { b } = tree('secrets');
    const good = cacheEnv('secrets-good', { LTOCACHE_REMOTE: url, LTOCACHE_REMOTE_TOKEN: TOKENS.write, LTOCACHE_LOG_LEVEL: 'debug' });
    const bad = cacheEnv('secrets-bad', { LTOCACHE_REMOTE: url, LTOCACHE_REMOTE_TOKEN: wrong[0]!, LTOCACHE_LOG_LEVEL: 'debug' });
    for (const c of [good, bad]) {
      c.start();
      for (const m of ['lonely', 'strx']) assert.equal(b.backend(m, { wrapper: [CLIENT], env: c.env, out: `${m}.${c === good ? 'g' : 'b'}.o` }).status, 0);
    }
    await waitFor('the upload', () => good.stats().uploads >= 2, 15_000, 200);
    assert.ok(bad.stats().remote_errors >= 1, 'the wrong token was refused');
    const config = good.cli(['config', 'show']);
    good.stop();
    bad.stop();

    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
    const access = readFileSync(join(dir, 'data', 'access.log'), 'utf8');
    const texts: [string, string][] = [
      ['access.log', access],
      ['server stdout', out],
      ['server stderr', err],
      ['daemon.log (valid token)', readFileSync(join(good.dir, 'daemon.log'), 'utf8')],
      ['daemon.log (wrong token)', readFileSync(join(bad.dir, 'daemon.log'), 'utf8')],
      ['ltocache config show', config.stdout + config.stderr],
    ];
    let checks = 0;
    for (const [where, text] of texts) {
      for (const s of every) {
        // the secret, or a long piece of one
        for (const piece of [s, s.slice(0, 16), s.slice(-16)]) assert.ok(!text.includes(piece), `${where} contains (part of) a secret`);
        checks++;
      }
    }
    const lines = access
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { token: string | null; op: string; result: string });
    for (const name of ['ci', 'dev', 'ops'])
      assert.ok(
        lines.some((l) => l.token === name),
        `access log names token ${name}`,
      );
    assert.ok(lines.filter((l) => l.op === 'connect' && l.token === null && (l.result === 'bad-token' || l.result === 'no-token')).length >= refused);
    assert.ok(lines.some((l) => l.op === 'put' && l.token === 'dev' && l.result === 'forbidden'));
    t.diagnostic(
      `auth_refused=${refused} auth_accepted=${accepted} bad_reloads=2 daemons=2 secrets=${every.length} logs_checked=${texts.length} secret_checks=${checks} secrets_found=0`,
    );
  });
});

// ---------------------------------------------------------------------------------------------
// 9. Constant-time token comparison

describe('tokens compared in constant time', () => {
  test('authenticate compares fixed-length digests against every token, with no early exit; near-miss secrets are rejected', (t) => {
    const secrets = [
      'shared-prefix-0123456789-AAAA',
      'shared-prefix-0123456789-AAAB',
      'shared-prefix-0123456789-BAAA',
      randomBytes(24).toString('base64url'),
      randomBytes(40).toString('base64url'),
    ];
    const table = new TokenTable(parseTokens(secrets.map((s, i) => `t${i} ${['read', 'write', 'admin'][i % 3]} ${s}`).join('\n')));
    const real = crypto.timingSafeEqual;
    const calls: [number, number][] = [];
    (crypto as { timingSafeEqual: typeof real }).timingSafeEqual = (a, b) => {
      calls.push([(a as Buffer).length, (b as Buffer).length]);
      return real(a, b);
    };
    syncBuiltinESMExports();
    let tried = 0;
    try {
      const check = (s: string, expect: string | null) => {
        calls.length = 0;
        assert.equal(table.authenticate(s)?.name ?? null, expect, JSON.stringify(s));
        assert.equal(calls.length, secrets.length, `${JSON.stringify(s)}: compared against every token`);
        for (const [a, b] of calls) assert.deepEqual([a, b], [32, 32], 'digests of equal length, whatever the secret length');
        tried++;
      };
      for (const [i, s] of secrets.entries()) check(s, `t${i}`);
      const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
      for (const s of secrets) {
        for (let at = 0; at < s.length; at++) {
          // every single-character change, same length and same prefix up to `at`
          const c = alphabet[(alphabet.indexOf(s[at]!) + 1) % alphabet.length]!;
          const near = s.slice(0, at) + c + s.slice(at + 1);
          if (!secrets.includes(near)) check(near, null);
        }
        for (const near of [s.slice(0, -1), `${s}A`, s.toUpperCase() === s ? s.toLowerCase() : s.toUpperCase(), ` ${s}`, `${s} `, `${s}\n`, s + '\0']) {
          if (!secrets.includes(near)) check(near, null);
        }
      }
      check('', null);
      check('x'.repeat(100_000), null);
    } finally {
      (crypto as { timingSafeEqual: typeof real }).timingSafeEqual = real;
      syncBuiltinESMExports();
    }
    assert.ok(tried > 150);
    t.diagnostic(
      `tokens=${secrets.length} secrets_tried=${tried} (valid ${secrets.length}, near misses ${tried - secrets.length}) comparisons_per_call=${secrets.length} digest_bytes=32 wrong_accepted=0`,
    );
  });
});

// ---------------------------------------------------------------------------------------------
// 10. Bundles from a hostile server

function record(outputs: { name: string; data: Buffer }[]): EntryRecord {
  return {
    v: 1,
    outputs: outputs.map((o) => ({ name: o.name, digest: hashBytes(o.data), size: o.data.length })),
    stdout: '',
    stderr: '',
    exitCode: 0,
    compileMs: 100,
    createdAt: Date.now(),
  };
}

/** Speaks protocol v1 well enough to serve whatever `answer` returns for each get. */
class HostileServer {
  readonly wss: WebSocketServer;
  gets = 0;
  answer: (key: string) => Promise<{ text: string | object; binary?: Buffer | null }> = async (key) => ({ text: { type: 'miss', key } });
  constructor() {
    this.wss = new WebSocketServer({ host: '127.0.0.1', port: 0, maxPayload: 1 << 20 });
    this.wss.on('connection', (ws) => {
      ws.on('error', () => {});
      ws.on('message', (data, isBinary) => {
        if (isBinary) return;
        const m = JSON.parse(data.toString()) as { type: string; id: number; key: string };
        if (m.type === 'hello') ws.send(JSON.stringify({ type: 'welcome', protocol: 1, scope: 'read', limits: DEFAULT_LIMITS }));
        else if (m.type === 'get') {
          this.gets++;
          void this.answer(m.key).then(({ text, binary }) => {
            ws.send(typeof text === 'string' ? text.replaceAll('$ID', String(m.id)).replaceAll('$KEY', m.key) : JSON.stringify({ ...text, id: m.id, key: m.key }));
            if (binary) ws.send(encodeBinary(m.id, binary));
          });
        } else if (m.type === 'ping') ws.send(JSON.stringify({ type: 'pong', id: m.id }));
      });
    });
  }
  ready(): Promise<string> {
    return new Promise((r) => {
      const go = () => r(`ws://127.0.0.1:${(this.wss.address() as { port: number }).port}`);
      if (this.wss.address()) go();
      else this.wss.once('listening', go);
    });
  }
  close(): Promise<void> {
    for (const c of this.wss.clients) c.terminate();
    return new Promise((r) => this.wss.close(() => r()));
  }
}

function listing(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir).sort() : [];
}

describe('bundles from a hostile team server', () => {
  test('a bundle with ../, an absolute path, links, extra or wrong files is rejected, counted, compiled instead; no file appears outside the declared outputs', {
    timeout: 90_000,
  }, async (t) => {
    const hostile = new HostileServer();
    cleanup.push(() => hostile.close());
    const url = await hostile.ready();
    const { b, direct } = tree('hostile');
    const watch = tempDir('sec-watch');
    cleanup.push(() => rmSync(watch, { recursive: true, force: true }));
    const cache = cacheEnv('hostile', { LTOCACHE_REMOTE: url, LTOCACHE_REMOTE_TOKEN: 'anything-0123456789', LTOCACHE_REMOTE_RETRY_MS: '1', LTOCACHE_REMOTE_TIMEOUT_MS: '3000' });
    cache.start();
    const m = 'lonely';
    const obj = direct.get(m);
    const other = direct.get('strx');
    const evil = Buffer.from('#!/bin/sh\necho owned\n');
    const abs = join(watch, 'evil-abs');
    const ok = (extra: Partial<EntryRecord> = {}) => ({ ...record([{ name: 'obj', data: obj }]), ...extra });
    type Case = { name: string; record: EntryRecord | string; bundle: Buffer; counted: 'remote' | 'mismatch' };
    const cases: Case[] = [
      {
        name: '../evil beside obj',
        record: ok(),
        bundle: await rawTar([
          { name: 'obj', data: obj },
          { name: '../evil', data: evil },
        ]),
        counted: 'remote',
      },
      { name: 'obj named ../../obj', record: ok(), bundle: await rawTar([{ name: '../../obj', data: obj }]), counted: 'remote' },
      {
        name: 'an absolute path',
        record: ok(),
        bundle: await rawTar([
          { name: 'obj', data: obj },
          { name: abs, data: evil },
        ]),
        counted: 'remote',
      },
      { name: 'obj as an absolute path', record: ok(), bundle: await rawTar([{ name: join(b.dir, `${m}.thinlto-native.o`), data: obj }]), counted: 'remote' },
      { name: 'obj a symlink to /etc/passwd', record: ok(), bundle: await rawTar([{ name: 'obj', type: 'symlink', linkname: '/etc/passwd' }]), counted: 'remote' },
      {
        name: 'a symlink beside obj',
        record: ok(),
        bundle: await rawTar([
          { name: 'obj', data: obj },
          { name: 'evil-link', type: 'symlink', linkname: abs },
        ]),
        counted: 'remote',
      },
      { name: 'obj a hard link', record: ok(), bundle: await rawTar([{ name: 'obj', type: 'link', linkname: '../evil' }]), counted: 'remote' },
      {
        name: 'obj a directory',
        record: ok(),
        bundle: await rawTar([
          { name: 'obj', type: 'directory' },
          { name: 'obj', data: obj },
        ]),
        counted: 'remote',
      },
      {
        name: 'an extra undeclared file',
        record: ok(),
        bundle: await rawTar([
          { name: 'obj', data: obj },
          { name: 'evil', data: evil },
        ]),
        counted: 'remote',
      },
      {
        name: 'obj twice',
        record: ok(),
        bundle: await rawTar([
          { name: 'obj', data: obj },
          { name: 'obj', data: other.subarray(0, obj.length) },
        ]),
        counted: 'remote',
      },
      {
        name: 'content not matching the declared digest',
        record: ok(),
        bundle: await rawTar([{ name: 'obj', data: Buffer.concat([obj.subarray(0, 64), Buffer.from([obj[64]! ^ 1]), obj.subarray(65)]) }]),
        counted: 'remote',
      },
      { name: 'garbage instead of a tar', record: ok(), bundle: randomBytes(2048), counted: 'remote' },
      {
        name: 'a record naming ../evil (schema)',
        record: JSON.stringify({
          type: 'hit',
          id: 0,
          key: '',
          entry: { ...record([{ name: 'obj', data: obj }]), outputs: [{ name: '../evil', digest: hashBytes(evil), size: evil.length }] },
          bundleBytes: 10,
        }),
        bundle: await rawTar([{ name: '../evil', data: evil }]),
        counted: 'remote',
      },
      { name: 'a bundle above the 64 MiB frame limit', record: ok(), bundle: Buffer.alloc(DEFAULT_LIMITS.maxBundleBytes + 1024), counted: 'remote' },
      {
        name: 'a well-formed bundle declaring an extra output',
        record: record([
          { name: 'obj', data: obj },
          { name: 'evil', data: evil },
        ]),
        bundle: await rawTar([
          { name: 'obj', data: obj },
          { name: 'evil', data: evil },
        ]),
        counted: 'mismatch',
      },
    ];
    const parent = dirname(b.dir);
    const before = { dir: listing(b.dir), parent: listing(parent), watch: listing(watch), root: listing('/') };
    let remoteCounted = 0;
    let mismatchCounted = 0;
    const outs: string[] = [];
    for (const [i, c] of cases.entries()) {
      hostile.answer = async () => {
        if (typeof c.record === 'string') return { text: c.record.replace('"id":0', '"id":$ID').replace('"key":""', '"key":"$KEY"'), binary: c.bundle };
        return { text: { type: 'hit', entry: c.record, bundleBytes: c.bundle.length }, binary: c.bundle };
      };
      const out = `${m}.hostile${i}.o`;
      outs.push(out);
      const s0: StatsView = cache.stats();
      const gets = hostile.gets;
      // Asynchronously: the hostile server lives in this process and must keep answering.
      // The output name is not keyed: a per-case diagnostics flag (no effect on the object) gives
      // each case its own key, so each lookup reaches the hostile server.
      const r = await runAsync(CLIENT, [b.clang, ...b.backendArgs(m, [`-fmessage-length=${100 + i}`], out)], { cwd: b.dir, env: cache.env });
      assert.equal(r.status, 0, `${c.name}: ${r.stderr}`);
      assert.ok(readFileSync(join(b.dir, out)).equals(obj), `${c.name}: the object is not direct clang's`);
      const s1 = cache.stats();
      assert.equal(hostile.gets - gets, 1, `${c.name}: the daemon asked the hostile server`);
      assert.equal(s1.hits - s0.hits, 0, `${c.name}: served as a hit`);
      assert.equal(s1.misses - s0.misses, 1, `${c.name}: compiled`);
      if (c.counted === 'remote') {
        assert.equal(s1.remote_errors - s0.remote_errors, 1, `${c.name}: counted in remote_errors`);
        remoteCounted++;
      } else {
        assert.equal((s1.errors_by_kind.entry_outputs_mismatch ?? 0) - (s0.errors_by_kind.entry_outputs_mismatch ?? 0), 1, `${c.name}: counted`);
        mismatchCounted++;
      }
      assert.deepEqual(listing(b.dir), [...before.dir, ...outs].sort(), `${c.name}: a file appeared in the build dir`);
      assert.deepEqual(listing(parent), before.parent, `${c.name}: a file appeared in the parent dir`);
      assert.deepEqual(listing(watch), before.watch, `${c.name}: a file appeared at the absolute path`);
      assert.deepEqual(listing('/'), before.root, `${c.name}: a file appeared in / (the daemon's cwd)`);
    }
    // Control: the same server with a well-formed bundle of the right object is a remote hit, so
    // the rejections above were the bundle checks at work, not a harness that never worked.
    const wellFormed = await rawTar([{ name: 'obj', data: obj }]);
    hostile.answer = async () => ({ text: { type: 'hit', entry: ok(), bundleBytes: wellFormed.length }, binary: wellFormed });
    const s0 = cache.stats();
    assert.equal((await runAsync(CLIENT, [b.clang, ...b.backendArgs(m, [], `${m}.control.o`)], { cwd: b.dir, env: cache.env })).status, 0);
    const s1 = cache.stats();
    assert.equal(s1.remote_hits - s0.remote_hits, 1, 'control: a well-formed bundle is a remote hit');
    assert.ok(readFileSync(join(b.dir, `${m}.control.o`)).equals(obj));
    assert.ok(!existsSync('/evil') && !existsSync(abs));
    t.diagnostic(
      `hostile_bundles=${cases.length} rejected_remote_errors=${remoteCounted} rejected_output_mismatch=${mismatchCounted} files_outside_outputs=0 wrong_objects=0 builds_broken=0 control_remote_hits=1`,
    );
  });

  test('trust model: a writer is trusted for content; verify=all audits a poisoned hit, logs and purges it locally', { timeout: 60_000 }, async (t) => {
    const hostile = new HostileServer();
    cleanup.push(() => hostile.close());
    const url = await hostile.ready();
    const { b, direct } = tree('poison');
    const cache = cacheEnv('poison', { LTOCACHE_REMOTE: url, LTOCACHE_REMOTE_TOKEN: 'anything-0123456789', LTOCACHE_VERIFY: 'all', LTOCACHE_REMOTE_TIMEOUT_MS: '3000' });
    cache.start();
    const wrongObj = direct.get('strx');
    const poisoned = await rawTar([{ name: 'obj', data: wrongObj }]);
    hostile.answer = async () => ({ text: { type: 'hit', entry: record([{ name: 'obj', data: wrongObj }]), bundleBytes: poisoned.length }, binary: poisoned });
    const job = () => runAsync(CLIENT, [b.clang, ...b.backendArgs('lonely')], { cwd: b.dir, env: cache.env });
    const r = await job();
    assert.equal(r.status, 0);
    // By design the digest check passes: the poisoner declared the digest of what it sent.
    assert.ok(readFileSync(join(b.dir, 'lonely.thinlto-native.o')).equals(wrongObj), 'a write-token holder can poison (documented)');
    await waitFor('the audit', () => cache.stats().verify_mismatches >= 1, 20_000, 200);
    assert.match(readFileSync(join(cache.dir, 'daemon.log'), 'utf8'), /verify: a served object differs from a fresh compile; entry purged/);
    // With the poison still on the server, read-only use of an untrusted server does not help;
    // stop asking it (here: the server answers miss) and the next build compiles the right object.
    hostile.answer = async (key) => ({ text: { type: 'miss', key } });
    assert.equal((await job()).status, 0);
    assert.ok(readFileSync(join(b.dir, 'lonely.thinlto-native.o')).equals(direct.get('lonely')));
    t.diagnostic('poisoned_hits_served=1 (by design: writers are trusted for content) verify_mismatches=1 purged_locally=1');
  });
});

// ---------------------------------------------------------------------------------------------
// 11. A flood against the server

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

/** Resolves when the WebSocket is open; rejects if the upgrade is refused or fails. */
function opened(ws: WebSocket): Promise<void> {
  return new Promise((res, rej) => {
    ws.once('open', () => res());
    ws.once('unexpected-response', (_req, r) => rej(new Error(`upgrade refused: HTTP ${r.statusCode}`)));
    ws.once('error', (e) => rej(e));
  });
}

/** An HTTP upgrade by hand; resolves with the socket once the 101 (or another status) arrives. */
function rawUpgrade(port: number, secret: string | null): Promise<{ sock: Socket; status: number }> {
  return new Promise((res) => {
    const sock = netConnect(port, '127.0.0.1');
    sock.on('error', () => {});
    let got = '';
    sock.on('data', function onData(d: Buffer) {
      got += d.toString('latin1');
      if (got.includes('\r\n\r\n')) {
        sock.off('data', onData);
        res({ sock, status: Number(/^HTTP\/1\.1 (\d+)/.exec(got)?.[1] ?? 0) });
      }
    });
    sock.on('close', () => res({ sock, status: Number(/^HTTP\/1\.1 (\d+)/.exec(got)?.[1] ?? 0) }));
    sock.write(
      `GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n` +
        `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\n${secret ? `Authorization: Bearer ${secret}\r\n` : ''}\r\n`,
    );
  });
}

/** A masked client frame header claiming `len` bytes of payload, and a few of them. */
function hugeFrame(opcode: number, len: bigint): Buffer {
  const h = Buffer.alloc(2 + 8 + 4 + 16);
  h[0] = 0x80 | opcode;
  h[1] = 0x80 | 127;
  h.writeBigUInt64BE(len, 2);
  randomBytes(4).copy(h, 10);
  return h;
}

describe('limits under a flood', () => {
  test('200 hostile connections (oversize frames, junk, bad auth, slowloris): the server stays up, memory bounded, a legitimate client keeps getting hits', {
    timeout: 120_000,
  }, async (t) => {
    const server = new ServerProcess(['--max-bundle', '4M', '--idle-timeout', '60']);
    cleanup.push(() => server.kill().then(() => rmSync(server.dir, { recursive: true, force: true })));
    const url = await server.start();
    const port = server.port;
    const pid = server.child!.pid!;
    // Alice fills the server.
    const alice = tree('flood-alice');
    const ac = cacheEnv('flood-alice', { LTOCACHE_REMOTE: url, LTOCACHE_REMOTE_TOKEN: TOKENS.write });
    ac.start();
    buildAll(alice.b, ac);
    await waitFor('uploads', () => ac.stats().uploads >= alice.b.modules.length, 20_000, 200);
    ac.stop();
    const stored = () =>
      readFileSync(join(server.dir, 'data', 'access.log'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { op: string; key: string; result: string })
        .filter((l) => l.op === 'put' && l.result === 'stored')
        .map((l) => l.key);
    await waitFor('the access log', () => stored().length >= alice.b.modules.length, 10_000);
    const keys = stored();
    assert.equal(keys.length, alice.b.modules.length);
    const objects = alice.b.modules.map((m) => alice.direct.get(m));
    // Bob is ready before the flood; he builds during it.
    const bob = tree('flood-bob');
    const bc = cacheEnv('flood-bob', { LTOCACHE_REMOTE: url, LTOCACHE_REMOTE_TOKEN: TOKENS.read, LTOCACHE_REMOTE_TIMEOUT_MS: '15000' });
    bc.start();
    await sleep(500);
    const rss0 = rssKiB(pid);
    let rssMax = rss0;
    const sampler = setInterval(() => {
      if (processAlive(pid)) rssMax = Math.max(rssMax, rssKiB(pid));
    }, 50);

    const held: (Socket | WebSocket)[] = [];
    const kinds = ['oversize-binary', 'oversize-text-header', 'big-text', 'junk-frames', 'junk-json', 'no-auth', 'bad-auth', 'http-junk', 'slowloris', 'idle'] as const;
    const outcome = new Map<string, number>();
    const note = (k: string): void => void outcome.set(k, (outcome.get(k) ?? 0) + 1);
    const bigText = 'x'.repeat(2 << 20);
    const one = async (kind: (typeof kinds)[number]): Promise<void> => {
      switch (kind) {
        case 'oversize-binary':
        case 'oversize-text-header': {
          const { sock, status } = await rawUpgrade(port, TOKENS.read);
          assert.equal(status, 101);
          sock.write(hugeFrame(kind === 'oversize-binary' ? 0x2 : 0x1, 1n << 40n));
          sock.write(randomBytes(4096));
          await new Promise((r) => sock.once('close', r));
          return note(`${kind}: closed`);
        }
        case 'big-text':
        case 'junk-json': {
          const ws = new WebSocket(url, { headers: { authorization: `Bearer ${TOKENS.read}` } });
          ws.on('error', () => {});
          await opened(ws);
          ws.send(JSON.stringify({ type: 'hello', protocol: 1, client: 'flood' }));
          const closed = new Promise<number>((r) => ws.once('close', (code) => r(code)));
          if (kind === 'big-text') {
            for (let i = 0; i < 3; i++) ws.send(bigText);
            await sleep(200);
            held.push(ws);
            return note('big-text: rejected, held');
          }
          for (let i = 0; i < 20; i++) ws.send(i % 2 ? randomBytes(64).toString('latin1') : `{"type":"get","id":${i},"key":"../../etc/passwd"}`);
          note(`junk-json: closed ${await closed}`);
          return;
        }
        case 'junk-frames': {
          const { sock, status } = await rawUpgrade(port, TOKENS.read);
          assert.equal(status, 101);
          sock.write(randomBytes(256).fill(0x0f, 0, 1));
          await new Promise((r) => sock.once('close', r));
          return note('junk-frames: closed');
        }
        case 'no-auth':
        case 'bad-auth': {
          const { sock, status } = await rawUpgrade(port, kind === 'no-auth' ? null : `${TOKENS.read}x`);
          sock.destroy();
          return note(`${kind}: ${status}`);
        }
        case 'http-junk': {
          const sock = netConnect(port, '127.0.0.1');
          sock.on('error', () => {});
          sock.resume(); // read the 400, or the close is never seen
          sock.write(randomBytes(2048));
          await new Promise((r) => sock.once('close', r));
          return note('http-junk: closed');
        }
        case 'slowloris': {
          const sock = netConnect(port, '127.0.0.1');
          sock.on('error', () => {});
          sock.write('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ');
          held.push(sock);
          return note('slowloris: held');
        }
        case 'idle': {
          const ws = new WebSocket(url, { headers: { authorization: `Bearer ${TOKENS.read}` } });
          ws.on('error', () => {});
          await opened(ws);
          held.push(ws);
          return note('idle: held');
        }
      }
    };
    const N = 200;
    // Each connection settles within 40 s or fails the test naming its kind (no silent hang).
    const bounded = (kind: (typeof kinds)[number]) =>
      Promise.race([one(kind), new Promise<never>((_, rej) => setTimeout(() => rej(new Error(`flood connection '${kind}' did not settle in 40 s`)), 40_000).unref())]);
    const flood = Promise.all(Array.from({ length: N }, (_, i) => bounded(kinds[i % kinds.length]!)));

    // Meanwhile: a plain protocol client asks for every key, again and again, and checks bytes.
    const legit = new WebSocket(url, { headers: { authorization: `Bearer ${TOKENS.read}` } });
    legit.on('error', () => {});
    await opened(legit);
    const inbox: (Record<string, unknown> | { binary: Buffer; id: number })[] = [];
    legit.on('message', (d, bin) => {
      if (!bin) return void inbox.push(JSON.parse(d.toString()) as Record<string, unknown>);
      const { id: got, bundle } = decodeBinary(d as Buffer);
      inbox.push({ binary: bundle, id: got });
    });
    legit.send(JSON.stringify({ type: 'hello', protocol: 1, client: 'legit' }));
    let legitHits = 0;
    let id = 0;
    const legitLoop = (async () => {
      for (let round = 0; round < 8; round++) {
        for (const k of keys) {
          const my = ++id;
          legit.send(JSON.stringify({ type: 'get', id: my, key: k }));
          await waitFor(`get ${my}`, () => inbox.some((m) => 'binary' in m && m.id === my), 20_000, 5);
          const hit = inbox.find((m) => !('binary' in m) && m.id === my) as { type: string; entry: EntryRecord };
          const bin = inbox.find((m) => 'binary' in m && m.id === my) as { binary: Buffer };
          assert.equal(hit.type, 'hit');
          const u = await unpackBundle(hit.entry, bin.binary, { maxBundleBytes: 4 << 20, maxEntries: 16 });
          assert.equal(u.kind, 'ok');
          assert.ok(u.kind === 'ok' && objects.some((o) => o.equals(u.files.get('obj')!)), 'a served object is one of direct clang');
          legitHits++;
        }
      }
    })();
    // And a teammate's real build through the daemon (asynchronously: the flood goes on).
    for (const m of bob.b.modules) {
      const r = await runAsync(CLIENT, [bob.b.clang, ...bob.b.backendArgs(m)], { cwd: bob.b.dir, env: bc.env });
      assert.equal(r.status, 0, r.stderr);
    }
    await legitLoop;
    await flood;
    const bobStats = bc.stats();
    assert.equal(bobStats.remote_hits, bob.b.modules.length, `bob got remote hits during the flood: ${JSON.stringify(bobStats)}`);
    for (const m of bob.b.modules) assert.ok(readFileSync(join(bob.b.dir, `${m}.thinlto-native.o`)).equals(alice.direct.get(m)), m);

    // Still up, still answering, memory bounded.
    assert.equal(server.child!.exitCode, null, 'the server is still running');
    const health = await fetch(`http://127.0.0.1:${port}/healthz`);
    assert.equal(health.status, 200);
    const statsId = ++id;
    legit.send(JSON.stringify({ type: 'stats', id: statsId }));
    await waitFor('stats', () => inbox.some((m) => !('binary' in m) && m.id === statsId), 10_000, 10);
    const st = (inbox.find((m) => !('binary' in m) && m.id === statsId) as { stats: Record<string, number> }).stats;
    clearInterval(sampler);
    const rss1 = rssKiB(pid);
    for (const h of held) h instanceof WebSocket ? h.terminate() : h.destroy();
    legit.close();
    const growthMiB = (rssMax - rss0) / 1024;
    assert.ok(growthMiB < 256, `server RSS grew by ${growthMiB.toFixed(1)} MiB during the flood`);
    assert.ok(st.auth_failures! >= (N / kinds.length) * 2, `auth failures counted: ${st.auth_failures}`);
    assert.ok(st.bad_messages! >= N / kinds.length, `bad messages counted: ${st.bad_messages}`);
    assert.equal(outcome.get('no-auth: 401'), N / kinds.length);
    assert.equal(outcome.get('bad-auth: 401'), N / kinds.length);
    t.diagnostic(
      `connections=${N} outcomes=${JSON.stringify(Object.fromEntries(outcome))} server_auth_failures=${st.auth_failures} server_bad_messages=${st.bad_messages} ` +
        `legit_hits=${legitHits} bob_remote_hits=${bobStats.remote_hits} rss_kib before=${rss0} max=${rssMax} after=${rss1} wrong_objects=0 server_up=1`,
    );
  });
});
