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
    const lc = new Lifecycle({ dir, socketPath, idleTimeoutS: 0, log: new Logger(null), onConnection: () => lc.jobStarted(), onIdle: () => {}, flush: async () => {} });
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
