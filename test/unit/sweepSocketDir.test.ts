import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { SWEEP_MIN_AGE_MS, sweepSocketDir } from '../../src/daemon/sweepSocketDir.js';
import { tempDir } from '../support/env.js';

/** A socket file nothing listens on, as a killed daemon leaves it (a process that exits without closing its server). */
function deadSocket(path: string): void {
  execFileSync(process.execPath, ['-e', `require('node:net').createServer().listen(${JSON.stringify(path)}, () => process.exit(0))`]);
}

test('the socket directory sweep removes old markers and dead sockets, and nothing else', async () => {
  const dir = tempDir('sweep');
  const server = createServer();
  try {
    const old = new Date(Date.now() - SWEEP_MIN_AGE_MS - 60_000);
    const at = (name: string) => join(dir, name);
    const age = (name: string) => fs.utimesSync(at(name), old, old);
    const h = (n: number) => n.toString(16).padStart(16, '0');
    // Removed: old markers, an old socket nothing listens on.
    for (const name of [`${h(1)}.startfail`, `${h(2)}.silent`]) {
      fs.writeFileSync(at(name), '');
      age(name);
    }
    deadSocket(at(`${h(3)}.sock`));
    age(`${h(3)}.sock`);
    // Kept: a fresh marker and a fresh dead socket (a daemon between bind and listen), an old
    // socket a daemon listens on, the caller's own socket, names ltocache does not make, a
    // regular file named like a socket, a directory named like a marker.
    fs.writeFileSync(at(`${h(4)}.startfail`), '');
    deadSocket(at(`${h(5)}.sock`));
    await new Promise<void>((r) => server.listen(at(`${h(6)}.sock`), () => r()));
    age(`${h(6)}.sock`);
    deadSocket(at(`${h(7)}.sock`));
    age(`${h(7)}.sock`);
    for (const name of ['notours.sock', `${h(8)}.startfail.bak`, `${h(9)}.sock`]) {
      fs.writeFileSync(at(name), '');
      age(name);
    }
    fs.mkdirSync(at(`${h(10)}.silent`));
    age(`${h(10)}.silent`);

    const { removed } = await sweepSocketDir(dir, at(`${h(7)}.sock`));
    assert.deepEqual(removed.sort(), [`${h(1)}.startfail`, `${h(2)}.silent`, `${h(3)}.sock`]);
    assert.deepEqual(
      fs.readdirSync(dir).sort(),
      [`${h(10)}.silent`, `${h(4)}.startfail`, `${h(5)}.sock`, `${h(6)}.sock`, `${h(7)}.sock`, `${h(8)}.startfail.bak`, `${h(9)}.sock`, 'notours.sock'].sort(),
    );
    // The daemon still listening is still reachable.
    await new Promise<void>((resolve, reject) => {
      const c = createConnection(at(`${h(6)}.sock`));
      c.once('connect', () => {
        c.destroy();
        resolve();
      });
      c.once('error', reject);
    });
  } finally {
    server.close();
  }
});

test('a socket directory that cannot be read is swept of nothing, without an error', async () => {
  assert.deepEqual(await sweepSocketDir(join(tmpdir(), 'ltocache-sweep-absent-dir-nowhere'), '/nowhere.sock'), { removed: [] });
});
