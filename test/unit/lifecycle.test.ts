import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { Lifecycle } from '../../src/daemon/lifecycle.js';
import { ensurePrivateDir } from '../../src/daemon/socketPath.js';
import { SWEEP_MIN_AGE_MS } from '../../src/daemon/sweepSocketDir.js';
import { socketDirFor } from '../../src/protocol/clientFrames.js';
import { Logger } from '../../src/util/log.js';
import { tempDir } from '../support/env.js';

test('close ends within its drain bound while a client stays connected with a job running', async () => {
  const dir = tempDir('lifecycle');
  let client: Socket | undefined;
  try {
    const socketPath = join(dir, 'd.sock');
    const lc = new Lifecycle({
      dir,
      socketPath,
      idleTimeoutS: 0,
      log: new Logger(null),
      onConnection: () => lc.jobStarted(),
      onIdle: () => {},
      onStale: () => {},
      flush: async () => {},
    });
    await lc.start();
    // A client compiling a long job after the daemon's answer: connected, its job never ends.
    const c = connect(socketPath);
    client = c;
    const clientClosed = new Promise<void>((r) => c.on('close', () => r()));
    c.on('error', () => {});
    await new Promise<void>((r) => c.on('connect', () => r()));
    for (let i = 0; i < 100 && lc.activeJobs === 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(lc.activeJobs, 1);
    const t0 = Date.now();
    const closing = lc.close(200).then(() => 'closed');
    const late = new Promise((r) => setTimeout(() => r('still waiting'), 3000));
    assert.equal(await Promise.race([closing, late]), 'closed');
    assert.ok(Date.now() - t0 < 2000, `closed after ${Date.now() - t0} ms`);
    await clientClosed;
    lc.removePidFile();
  } finally {
    // Failing, the listener would otherwise keep the test process alive.
    client?.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a cache directory or code file removed, or replaced by another at its path, is reported once', async () => {
  const sockets = tempDir('lifecycle-sock');
  const parent = tempDir('lifecycle-dir');
  const running: Lifecycle[] = [];
  const until = async (done: () => boolean) => {
    for (let i = 0; i < 300 && !done(); i++) await new Promise((r) => setTimeout(r, 10));
  };
  const watch = async (name: string) => {
    const dir = join(parent, name);
    fs.mkdirSync(dir);
    const codeFile = join(parent, `${name}.js`);
    fs.writeFileSync(codeFile, 'export {};\n');
    const seen: string[] = [];
    const lc = new Lifecycle({
      dir,
      codeFile,
      socketPath: join(sockets, `${name}.sock`),
      idleTimeoutS: 0,
      log: new Logger(null),
      onConnection: () => {},
      onIdle: () => {},
      onStale: (what) => void seen.push(what),
      flush: async () => {},
    });
    running.push(lc);
    await lc.start();
    return { dir, codeFile, seen };
  };
  try {
    const kept = await watch('kept');
    const removed = await watch('removed');
    const replaced = await watch('replaced');
    const rebuilt = await watch('rebuilt');
    const reinstalled = await watch('reinstalled');
    // A file added inside changes the directory's times, not what it is.
    fs.writeFileSync(join(kept.dir, 'digests.json'), '{}');
    fs.rmSync(removed.dir, { recursive: true });
    // Renamed away and made anew (a saved copy restored in its place): the old inode still exists.
    fs.renameSync(replaced.dir, `${replaced.dir}.old`);
    fs.mkdirSync(replaced.dir);
    // A compiler writing over the code in place, and a package manager replacing the file.
    fs.writeFileSync(rebuilt.codeFile, 'export const x = 1;\n');
    fs.renameSync(reinstalled.codeFile, `${reinstalled.codeFile}.old`);
    fs.writeFileSync(reinstalled.codeFile, 'export {};\n');
    await until(() => [removed, replaced, rebuilt, reinstalled].every((w) => w.seen.length > 0));
    await new Promise((r) => setTimeout(r, 1200));
    assert.deepEqual(
      [kept, removed, replaced, rebuilt, reinstalled].map((w) => w.seen),
      [[], ['cache directory'], ['cache directory'], ['code'], ['code']],
    );
  } finally {
    for (const lc of running) await lc.close(0);
    fs.rmSync(sockets, { recursive: true, force: true });
    fs.rmSync(parent, { recursive: true, force: true });
  }
});

test('a started daemon sweeps its socket directory of old markers', async () => {
  const dir = tempDir('lifecycle-sweep');
  const sockDir = socketDirFor(process.getuid!());
  await ensurePrivateDir(sockDir, process.getuid!());
  const marker = join(sockDir, `${randomBytes(8).toString('hex')}.startfail`);
  fs.writeFileSync(marker, '');
  const old = new Date(Date.now() - SWEEP_MIN_AGE_MS - 60_000);
  fs.utimesSync(marker, old, old);
  const lc = new Lifecycle({
    dir,
    socketPath: join(dir, 'd.sock'),
    idleTimeoutS: 0,
    log: new Logger(null),
    onConnection: () => {},
    onIdle: () => {},
    onStale: () => {},
    flush: async () => {},
    sweepAfterMs: 0,
  });
  try {
    await lc.start();
    for (let i = 0; i < 300 && fs.existsSync(marker); i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(fs.existsSync(marker), false, 'the old marker is still there');
  } finally {
    await lc.close(0);
    lc.removePidFile();
    fs.rmSync(marker, { force: true });
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
