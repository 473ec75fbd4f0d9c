import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Semaphore } from '../../src/pipeline/semaphore.js';

test('a slot held past the stuck time while a job waits is taken back; its late release does nothing', async () => {
  let reclaimed = 0;
  const s = new Semaphore(1, 80, (n) => (reclaimed += n));
  const stuck = await s.acquire();
  let granted = false;
  const waiting = s.acquire().then((r) => {
    granted = true;
    return r;
  });
  await sleep(30);
  assert.equal(granted, false, 'still within the stuck time');
  const release = await waiting;
  assert.equal(reclaimed, 1);
  assert.equal(s.active, 1);
  stuck();
  assert.equal(s.active, 1, 'the stuck holder gives back nothing: the slot is no longer its');
  release();
  assert.equal(s.active, 0);
});

test('slots are not taken back when nobody waits, nor when the holder releases within the stuck time', async () => {
  let reclaimed = 0;
  const s = new Semaphore(1, 60, (n) => (reclaimed += n));
  const first = await s.acquire();
  await sleep(100);
  assert.equal(reclaimed, 0, 'held long, but nobody waited');
  first();
  // Released within the stuck time: the waiter is served then, and nothing is taken back.
  const holder = await s.acquire();
  const waiter = s.acquire();
  await sleep(30);
  holder();
  (await waiter)();
  assert.equal(reclaimed, 0);
  assert.equal(s.active, 0);
});

test('without stuck holders the limit holds and waiters are served in order', async () => {
  const s = new Semaphore(2, 10_000);
  const a = await s.acquire();
  const b = await s.acquire();
  const order: string[] = [];
  const granted = (name: string) => (r: () => void) => {
    order.push(name);
    return r;
  };
  const c = s.acquire().then(granted('c'));
  const d = s.acquire().then(granted('d'));
  assert.equal(s.active, 2);
  a();
  (await c)();
  b();
  (await d)();
  assert.deepEqual(order, ['c', 'd']);
  assert.equal(s.active, 0);
});
