import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { runCompiler } from '../../src/pipeline/runCompiler.js';
import { decodeDone, encodeDone, FrameDecoder, ProtocolError } from '../../src/protocol/clientFrames.js';
import { base64Length, limitsHeader, MAX_DONE_PAYLOAD, MAX_OUTPUT_STREAM, MAX_REQUEST_PAYLOAD, RESULT_OVERHEAD } from '../../src/protocol/limits.js';
import { EntryRecord } from '../../src/store/record.js';
import { TOP } from '../support/env.js';

test('client/limits.h is what src/protocol/limits.ts generates (npm run build regenerates it)', () => {
  assert.equal(readFileSync(join(TOP, 'client', 'limits.h'), 'utf8'), limitsHeader());
});

function header(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n, 0);
  return b;
}

test('request decoder: a frame of exactly MAX_REQUEST_PAYLOAD is accepted, one byte more is not', () => {
  assert.deepEqual(new FrameDecoder(MAX_REQUEST_PAYLOAD).push(header(MAX_REQUEST_PAYLOAD)), []);
  assert.throws(() => new FrameDecoder(MAX_REQUEST_PAYLOAD).push(header(MAX_REQUEST_PAYLOAD + 1)), ProtocolError);
  assert.equal(new FrameDecoder().maxFrame, MAX_REQUEST_PAYLOAD);
});

test("'D' at MAX_DONE_PAYLOAD (both streams at MAX_OUTPUT_STREAM) decodes; one byte more is rejected", () => {
  const full = Buffer.alloc(MAX_OUTPUT_STREAM, 0x61);
  const frame = encodeDone({ exit: 0, signal: 0, stdout: full, stderr: full });
  assert.equal(frame.length - 4, MAX_DONE_PAYLOAD);
  assert.equal(MAX_DONE_PAYLOAD, RESULT_OVERHEAD + 2 * MAX_OUTPUT_STREAM);
  const [payload] = new FrameDecoder(MAX_DONE_PAYLOAD).push(frame);
  const d = decodeDone(payload!);
  assert.equal(d.stdout.length, MAX_OUTPUT_STREAM);
  const over = encodeDone({ exit: 0, signal: 0, stdout: Buffer.alloc(MAX_OUTPUT_STREAM + 1), stderr: full });
  assert.throws(() => new FrameDecoder(MAX_DONE_PAYLOAD).push(over), ProtocolError);
  assert.throws(() => decodeDone(over.subarray(4)), ProtocolError);
});

test('stored record: output of MAX_OUTPUT_STREAM bytes fits, longer base64 does not', () => {
  const base = {
    v: 1 as const,
    outputs: [{ name: 'obj', digest: '0'.repeat(32), size: 1 }],
    stderr: '',
    exitCode: 0 as const,
    compileMs: 1,
    createdAt: 1,
  };
  const atLimit = Buffer.alloc(MAX_OUTPUT_STREAM).toString('base64');
  assert.equal(atLimit.length, base64Length(MAX_OUTPUT_STREAM));
  const ok = EntryRecord.safeParse({ ...base, stdout: atLimit });
  assert.ok(ok.success, ok.success ? '' : ok.error.message);
  assert.equal(EntryRecord.safeParse({ ...base, stdout: atLimit + 'A' }).success, false);
  assert.equal(EntryRecord.safeParse({ ...base, stdout: '', stderr: atLimit + 'AAAA' }).success, false);
});

test('runCompiler keeps an exit status and a signal death apart, for any signal', async () => {
  const go = (script: string) =>
    runCompiler({ compiler: '/bin/sh', args: ['-c', script], cwd: '/', env: { PATH: '/usr/bin:/bin' }, umask: 0o022, signal: new AbortController().signal });
  const exited = await go('exit 130');
  assert.deepEqual({ exit: exited.exitCode, signal: exited.signal }, { exit: 130, signal: 0 });
  const usr1 = await go('kill -USR1 $$');
  assert.deepEqual({ exit: usr1.exitCode, signal: usr1.signal }, { exit: 128 + 10, signal: 10 });
  const segv = await go('kill -SEGV $$');
  assert.deepEqual({ exit: segv.exitCode, signal: segv.signal }, { exit: 139, signal: 11 });
});
