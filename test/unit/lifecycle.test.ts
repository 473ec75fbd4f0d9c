import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { Lifecycle } from '../../src/daemon/lifecycle.js';
import { Logger } from '../../src/util/log.js';

test('close ends within its drain bound while a client stays connected with a job running', async () => {
  const dir = fs.mkdtempSync(join(tmpdir(), 'ltocache-lifecycle-'));
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
      onDirGone: () => {},
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

test('a cache directory removed, or replaced by another at its path, is reported once', async () => {
  const sockets = fs.mkdtempSync(join(tmpdir(), 'ltocache-lifecycle-sock-'));
  const parent = fs.mkdtempSync(join(tmpdir(), 'ltocache-lifecycle-dir-'));
  const running: Lifecycle[] = [];
  const until = async (done: () => boolean) => {
    for (let i = 0; i < 300 && !done(); i++) await new Promise((r) => setTimeout(r, 10));
  };
  const watch = async (dir: string, name: string) => {
    fs.mkdirSync(dir);
    const gone = { n: 0 };
    const lc = new Lifecycle({
      dir,
      socketPath: join(sockets, `${name}.sock`),
      idleTimeoutS: 0,
      log: new Logger(null),
      onConnection: () => {},
      onIdle: () => {},
      onDirGone: () => void gone.n++,
      flush: async () => {},
    });
    running.push(lc);
    await lc.start();
    return gone;
  };
  try {
    const kept = await watch(join(parent, 'kept'), 'kept');
    const removed = await watch(join(parent, 'removed'), 'removed');
    const replaced = await watch(join(parent, 'replaced'), 'replaced');
    // A file added inside changes the directory's times, not what it is.
    fs.writeFileSync(join(parent, 'kept', 'digests.json'), '{}');
    fs.rmSync(join(parent, 'removed'), { recursive: true });
    // Renamed away and made anew (a saved copy restored in its place): the old inode still exists.
    fs.renameSync(join(parent, 'replaced'), join(parent, 'replaced.old'));
    fs.mkdirSync(join(parent, 'replaced'));
    await until(() => removed.n > 0 && replaced.n > 0);
    await new Promise((r) => setTimeout(r, 1200));
    assert.deepEqual([kept.n, removed.n, replaced.n], [0, 1, 1]);
  } finally {
    for (const lc of running) await lc.close(0);
    fs.rmSync(sockets, { recursive: true, force: true });
    fs.rmSync(parent, { recursive: true, force: true });
  }
});
