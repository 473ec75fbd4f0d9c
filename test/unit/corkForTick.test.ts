import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import { corkForTick } from '../../src/util/corkForTick.js';

/** A stream that records each system-call-sized write it is handed: one entry per _write/_writev. */
function recorder(): { stream: Writable; calls: string[][] } {
  const calls: string[][] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      calls.push([chunk.toString()]);
      cb();
    },
    writev(chunks, cb) {
      calls.push(chunks.map((c) => (c.chunk as Buffer).toString()));
      cb();
    },
  });
  return { stream, calls };
}

const nextTick = () => new Promise<void>((r) => process.nextTick(r));

test('writes made in one tick reach the stream as one writev, on the next tick', async () => {
  const { stream, calls } = recorder();
  corkForTick(stream);
  stream.write('a');
  corkForTick(stream);
  stream.write('b');
  stream.write('c');
  assert.deepEqual(calls, [], 'nothing is written within the tick');
  await nextTick();
  assert.deepEqual(calls, [['a', 'b', 'c']]);
});

test('each tick is corked on its own: a later tick flushes its own writes', async () => {
  const { stream, calls } = recorder();
  corkForTick(stream);
  stream.write('a');
  await nextTick();
  corkForTick(stream);
  stream.write('b');
  stream.write('c');
  await nextTick();
  assert.deepEqual(calls, [['a'], ['b', 'c']]);
  assert.equal(stream.writableCorked, 0, 'the stream is left uncorked');
});

test('a destroyed or missing socket is left alone', () => {
  const { stream } = recorder();
  stream.destroy();
  corkForTick(stream);
  assert.equal(stream.writableCorked, 0);
  corkForTick(undefined);
});
