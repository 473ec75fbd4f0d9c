import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { clientCacheDir } from '../../src/config/cacheDir.js';
import {
  CompileRequest,
  decodeCompileRequest,
  decodeDistributeRequest,
  decodeJson,
  decodeReply,
  decodeStored,
  encodeCompileRequest,
  encodeCompileYourself,
  encodeDistributeRequest,
  encodeFrame,
  encodeJson,
  encodePassthrough,
  encodeResult,
  encodeStored,
  encodeStoreYourself,
  FrameDecoder,
  fnv1a64Hex,
  OPAQUE_ENV_PREFIX,
  ProtocolError,
  socketDirFor,
  socketPathFor,
} from '../../src/protocol/clientFrames.js';

const sample: CompileRequest = {
  version: 2,
  stderrTty: true,
  compilesOnMiss: false,
  storesOnMiss: false,
  compileOptions: false,
  redirectsOutput: false,
  umask: 0o022,
  compiler: '/usr/bin/clang-19',
  cwd: '/home/u/linux',
  args: ['-x', 'ir', '-fthinlto-index=mm/util.o.thinlto.bc', '', 'with space', 'ünïcødé ✓', '-c', '-o', 'mm/util.thinlto-native.o', 'mm/util.o'],
  env: { PATH: '/usr/bin:/bin', EMPTY: '', KV: 'a=b=c', ÜNI: 'ü' },
};

/** Strips the u32 length prefix of a frame produced by an encoder, checking it. */
function payloadOf(frame: Buffer): Buffer {
  assert.equal(frame.readUInt32LE(0), frame.length - 4);
  return frame.subarray(4);
}

/** A raw 'C' payload builder that allows anything (bad versions, NULs, wrong counts...). */
function rawRequest(o: {
  type?: number;
  version?: number;
  flags?: number;
  umask?: number;
  compiler?: Buffer | string;
  cwd?: Buffer | string;
  args?: (Buffer | string)[];
  argc?: number;
  env?: (Buffer | string)[];
  envc?: number;
  trailing?: Buffer;
}): Buffer {
  const parts: Buffer[] = [];
  const u32 = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(n >>> 0, 0);
    parts.push(b);
  };
  const str = (s: Buffer | string) => {
    const b = typeof s === 'string' ? Buffer.from(s, 'utf8') : s;
    u32(b.length);
    parts.push(b);
  };
  parts.push(Buffer.from([o.type ?? 0x43, o.version ?? 2]));
  u32(o.flags ?? 0);
  u32(o.umask ?? 0o22);
  str(o.compiler ?? '/usr/bin/clang');
  str(o.cwd ?? '/tmp');
  const args = o.args ?? ['-c'];
  u32(o.argc ?? args.length);
  args.forEach(str);
  const env = o.env ?? ['A=1'];
  u32(o.envc ?? env.length);
  env.forEach(str);
  if (o.trailing) parts.push(o.trailing);
  return Buffer.concat(parts);
}

function rejects(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof ProtocolError, `expected ProtocolError, got ${String(e)}`);
    assert.match(e.message, re);
    return true;
  });
}

test('compile request round trip', () => {
  const frame = encodeCompileRequest(sample);
  const decoded = decodeCompileRequest(payloadOf(frame));
  assert.deepEqual({ ...decoded, env: { ...decoded.env } }, sample);
  const plain = decodeCompileRequest(payloadOf(encodeCompileRequest({ ...sample, stderrTty: false, args: [], env: {} })));
  assert.equal(plain.stderrTty, false);
  assert.deepEqual(plain.args, []);
  assert.deepEqual({ ...plain.env }, {});
});

test("distribution request 'T': the 'C' layout with the compiler \"distribute\"; neither frame is taken for the other", () => {
  const req = { ...sample, compiler: 'distribute' as const, args: ['prog.1.dist-file.json'] };
  const payload = payloadOf(encodeDistributeRequest(req));
  assert.equal(payload[0], 0x54);
  const decoded = decodeDistributeRequest(payload);
  assert.deepEqual({ ...decoded, env: { ...decoded.env } }, req);
  assert.deepEqual(
    payload,
    rawRequest({ type: 0x54, flags: 1, umask: 0o022, compiler: 'distribute', cwd: sample.cwd, args: req.args, env: Object.entries(sample.env).map(([k, v]) => `${k}=${v}`) }),
  );
  rejects(() => decodeDistributeRequest(rawRequest({ type: 0x54, compiler: '/usr/bin/clang' })), /invalid distribution request 'T'.*compiler/);
  rejects(() => decodeDistributeRequest(payloadOf(encodeCompileRequest(sample))), /expected distribution request 'T'/);
  rejects(() => decodeCompileRequest(payload), /expected compile request 'C'/);
});

test('the raw builder matches the encoder (layout check)', () => {
  const req: CompileRequest = {
    version: 2,
    stderrTty: false,
    compilesOnMiss: false,
    storesOnMiss: false,
    compileOptions: false,
    redirectsOutput: false,
    umask: 0o22,
    compiler: '/usr/bin/clang',
    cwd: '/tmp',
    args: ['-c'],
    env: { A: '1' },
  };
  assert.deepEqual(payloadOf(encodeCompileRequest(req)), rawRequest({}));
});

test('every truncation of a valid request is rejected', () => {
  const payload = payloadOf(encodeCompileRequest(sample));
  for (let n = 0; n < payload.length; n++) {
    assert.throws(
      () => decodeCompileRequest(payload.subarray(0, n)),
      (e: unknown) => e instanceof ProtocolError && /truncated at|too large|empty payload/.test(e.message),
      `prefix of ${n} bytes`,
    );
  }
  rejects(() => decodeCompileRequest(payload.subarray(0, 3)), /truncated at flags/);
});

test('malformed requests name what is wrong', () => {
  rejects(() => decodeCompileRequest(rawRequest({ type: 0x52 })), /wrong frame type 0x52/);
  rejects(() => decodeCompileRequest(rawRequest({ version: 1 })), /unsupported protocol version 1/);
  rejects(() => decodeCompileRequest(rawRequest({ flags: 0x22 })), /unknown flag bits/);
  rejects(() => decodeCompileRequest(rawRequest({ umask: 0o1000 })), /invalid compile request.*umask/);
  rejects(() => decodeCompileRequest(rawRequest({ compiler: 'clang' })), /compiler is not an absolute path/);
  rejects(() => decodeCompileRequest(rawRequest({ cwd: 'rel/dir' })), /cwd is not an absolute path/);
  rejects(() => decodeCompileRequest(rawRequest({ trailing: Buffer.from([0]) })), /1 trailing bytes/);
  rejects(() => decodeCompileRequest(rawRequest({ env: ['NOEQUALS'] })), /entry 0 is not of the form K=V/);
  rejects(() => decodeCompileRequest(rawRequest({ env: ['=x'] })), /not of the form K=V/);
  rejects(() => decodeCompileRequest(rawRequest({ env: ['__proto__=x'] })), /__proto__/);
  rejects(() => decodeCompileRequest(rawRequest({ args: [Buffer.from([0x66, 0xff, 0x6f])] })), /argument 0 is not valid UTF-8/);
});

test('an environment entry that is not UTF-8 is carried opaque (set, by its bytes), not a refused request; in a distribution request it is refused', () => {
  const latin1 = Buffer.concat([Buffer.from('LEGACY='), Buffer.from([0x63, 0x61, 0x66, 0xe9])]);
  const other = Buffer.concat([Buffer.from('LEGACY='), Buffer.from([0x63, 0x61, 0x66, 0xe8])]);
  const badName = Buffer.concat([Buffer.from([0xff]), Buffer.from('=x')]);
  const r = decodeCompileRequest(rawRequest({ env: ['A=1', latin1, badName] }));
  assert.deepEqual(Object.keys(r.env), ['A', 'LEGACY']);
  assert.equal(r.env.LEGACY, `${OPAQUE_ENV_PREFIX}636166e9`);
  assert.notEqual(decodeCompileRequest(rawRequest({ env: [other] })).env.LEGACY, r.env.LEGACY);
  assert.ok(CompileRequest.safeParse(r).success);
  rejects(() => decodeDistributeRequest(rawRequest({ type: 0x54, compiler: 'distribute', env: [latin1] })), /environment entry 0 is not valid UTF-8/);
});

test('NUL bytes in strings are rejected', () => {
  rejects(() => decodeCompileRequest(rawRequest({ args: ['-c', 'a\0b'] })), /argument 1 contains a NUL/);
  rejects(() => decodeCompileRequest(rawRequest({ compiler: '/usr/bin/cl\0ang' })), /compiler contains a NUL/);
  rejects(() => decodeCompileRequest(rawRequest({ cwd: '/t\0' })), /cwd contains a NUL/);
  rejects(() => decodeCompileRequest(rawRequest({ env: ['A=\0'] })), /environment entry 0 contains a NUL/);
  assert.throws(() => encodeCompileRequest({ ...sample, args: ['x\0'] }));
});

test('huge counts are rejected before allocating', () => {
  rejects(() => decodeCompileRequest(rawRequest({ argc: 0xffffffff })), /argc 4294967295 too large/);
  rejects(() => decodeCompileRequest(rawRequest({ args: [], argc: 5 })), /argc 5 too large: 11 bytes remain/);
  rejects(() => decodeCompileRequest(rawRequest({ args: [], argc: 2 })), /truncated at argument 1/);
  rejects(() => decodeCompileRequest(rawRequest({ envc: 0x40000000 })), /envc 1073741824 too large/);
  // A string length larger than the payload is a truncation, not an allocation.
  const p = rawRequest({});
  p.writeUInt32LE(0xfffffff0, 10); // compiler length
  rejects(() => decodeCompileRequest(p), /truncated at compiler/);
});

test('duplicate environment names: first wins, like getenv', () => {
  const req = decodeCompileRequest(rawRequest({ env: ['A=1', 'B=2', 'A=3'] }));
  assert.deepEqual({ ...req.env }, { A: '1', B: '2' });
});

test('requests with byte-equal environments share one frozen decoded environment; any other byte decodes anew', () => {
  const a = decodeCompileRequest(payloadOf(encodeCompileRequest({ ...sample, args: ['-c'] })));
  const b = decodeCompileRequest(payloadOf(encodeCompileRequest({ ...sample, args: ['-S'], cwd: '/elsewhere' })));
  assert.equal(a.env, b.env, 'one object for the same environment');
  assert.ok(Object.isFrozen(a.env));
  assert.deepEqual(b.args, ['-S']);
  assert.equal(b.cwd, '/elsewhere');
  const c = decodeCompileRequest(payloadOf(encodeCompileRequest({ ...sample, env: { ...sample.env, EXTRA: '1' } })));
  assert.notEqual(c.env, a.env);
  assert.equal(c.env.EXTRA, '1');
  // A malformed environment is refused even right after a valid one was remembered.
  decodeCompileRequest(rawRequest({ env: ['A=1'] }));
  rejects(() => decodeCompileRequest(rawRequest({ env: ['A=1', 'bad'] })), /environment entry 1 is not of the form K=V/);
  rejects(() => decodeCompileRequest(rawRequest({ env: ['A=1'], trailing: Buffer.from('x') })), /trailing bytes/);
});

test('FrameDecoder: one byte at a time, and many frames in one chunk', () => {
  const frames = [
    encodeCompileRequest(sample),
    encodeResult(1, Buffer.from('out'), Buffer.from('err\n')),
    encodePassthrough('key: unreadable input'),
    encodeJson({ op: 'stats', n: [1, 2] }),
    encodeResult(0, Buffer.alloc(0), Buffer.alloc(0)),
  ];
  const stream = Buffer.concat(frames);
  const expected = frames.map(payloadOf);

  const d1 = new FrameDecoder();
  const got1: Buffer[] = [];
  for (let i = 0; i < stream.length; i++) got1.push(...d1.push(stream.subarray(i, i + 1)));
  assert.deepEqual(got1, expected);
  assert.equal(d1.pending, 0);
  d1.end();

  const d2 = new FrameDecoder();
  assert.deepEqual(d2.push(stream), expected);

  // random split points
  for (let round = 0; round < 50; round++) {
    const d = new FrameDecoder();
    const got: Buffer[] = [];
    let at = 0;
    while (at < stream.length) {
      const n = 1 + Math.floor(Math.random() * 40);
      got.push(...d.push(stream.subarray(at, at + n)));
      at += n;
    }
    assert.deepEqual(got, expected);
  }
});

test('FrameDecoder: oversized and empty frames, incomplete stream', () => {
  const d = new FrameDecoder(100);
  const header = Buffer.alloc(4);
  header.writeUInt32LE(101, 0);
  rejects(() => d.push(header), /frame of 101 bytes exceeds the limit of 100 bytes/);
  rejects(() => d.push(Buffer.from([1])), /exceeds the limit/); // stays failed

  const ok = new FrameDecoder(100);
  header.writeUInt32LE(100, 0);
  assert.deepEqual(ok.push(Buffer.concat([header, Buffer.alloc(100, 7)])), [Buffer.alloc(100, 7)]);

  // default limit is 16 MiB, checked from the header alone
  const big = Buffer.alloc(4);
  big.writeUInt32LE(16 * 1024 * 1024 + 1, 0);
  rejects(() => new FrameDecoder().push(big), /exceeds the limit of 16777216/);

  rejects(() => new FrameDecoder().push(Buffer.alloc(4)), /empty frame/);

  const partial = new FrameDecoder();
  assert.deepEqual(partial.push(encodePassthrough('x').subarray(0, 6)), []);
  rejects(() => partial.end(), /stream ended inside a frame \(6 bytes pending\)/);
});

test('result and passthrough round trips', () => {
  const out = randomBytes(1000);
  const err = Buffer.from('warning: stack frame size (1032) exceeds limit (1024)\n');
  const r = decodeReply(payloadOf(encodeResult(143, out, err)));
  assert.deepEqual(r, { kind: 'result', exit: 143, signal: 0, stdout: out, stderr: err });
  const killed = decodeReply(payloadOf(encodeResult({ exit: 128 + 11, signal: 11 }, out, err)));
  assert.deepEqual(killed, { kind: 'result', exit: 139, signal: 11, stdout: out, stderr: err });
  assert.throws(() => encodeResult({ exit: 0, signal: 65 }, Buffer.alloc(0), Buffer.alloc(0)), RangeError);
  assert.throws(() => encodeResult({ exit: 0, signal: -1 }, Buffer.alloc(0), Buffer.alloc(0)), RangeError);
  assert.deepEqual(decodeReply(payloadOf(encodePassthrough('miss: remote down ✓'))), {
    kind: 'passthrough',
    reason: 'miss: remote down ✓',
  });
  assert.throws(() => encodeResult(256, Buffer.alloc(0), Buffer.alloc(0)), RangeError);
  assert.throws(() => encodeResult(-1, Buffer.alloc(0), Buffer.alloc(0)), RangeError);
  assert.throws(() => encodeResult(1.5, Buffer.alloc(0), Buffer.alloc(0)), RangeError);
});

test('decodeReply applies the C client acceptance rules', () => {
  const good = payloadOf(encodeResult(0, Buffer.from('a'), Buffer.from('b')));
  for (let n = 0; n < good.length; n++) {
    assert.throws(() => decodeReply(good.subarray(0, n)), ProtocolError, `prefix ${n}`);
  }
  rejects(() => decodeReply(Buffer.concat([good, Buffer.from([0])])), /trailing bytes after result/);
  const neg = Buffer.from(good);
  neg.writeInt32LE(-1, 1);
  rejects(() => decodeReply(neg), /exit status -1/);
  const badSignal = Buffer.from(good);
  badSignal.writeInt32LE(65, 5);
  rejects(() => decodeReply(badSignal), /signal 65/);
  rejects(() => decodeReply(Buffer.from('Qxxxx')), /wrong frame type 0x51/);
  rejects(() => decodeReply(payloadOf(encodeJson({}))), /wrong frame type 0x4a/);
});

test("'S' carries a memo whole; 'E' round-trips and every malformed field is named", () => {
  const memo = Buffer.from('LTOMEMO\x01 any bytes');
  assert.deepEqual(decodeReply(payloadOf(encodeStoreYourself(memo))), { kind: 'store-yourself', memo });
  rejects(() => decodeReply(Buffer.from('S')), /'S' without a memo/);
  // For a client that set flag bit 3, 'M' and 'S' carry the compile options byte after the type.
  const colour = { colour: true };
  assert.deepEqual(decodeReply(payloadOf(encodeStoreYourself(memo, colour)), true), { kind: 'store-yourself', memo, options: colour });
  assert.deepEqual([...payloadOf(encodeStoreYourself(memo, colour)).subarray(0, 2)], [0x53, 1]);
  assert.deepEqual(decodeReply(payloadOf(encodeCompileYourself({ colour: false })), true), { kind: 'compile-yourself', options: { colour: false } });
  assert.deepEqual([...payloadOf(encodeCompileYourself(colour))], [0x4d, 1]);
  assert.deepEqual([...payloadOf(encodeCompileYourself())], [0x4d]);
  rejects(() => decodeReply(Buffer.from([0x4d, 4]), true), /unknown compile option bits 0x4/);
  // An output redirect: u32 index, then the argument, the temp and the output as strs.
  const redirect = { index: 7, arg: '-odir/.x.o.ltocache-out-0123456789ab', temp: '/w/dir/.x.o.ltocache-out-0123456789ab', output: '/w/dir/x.o' };
  const m = payloadOf(encodeCompileYourself({ colour: true, redirect }));
  assert.deepEqual([...m.subarray(0, 6)], [0x4d, 3, 7, 0, 0, 0]);
  assert.deepEqual(decodeReply(m, true), { kind: 'compile-yourself', options: { colour: true, redirect } });
  assert.deepEqual(decodeReply(payloadOf(encodeStoreYourself(memo, { colour: false, redirect })), true), { kind: 'store-yourself', options: { colour: false, redirect }, memo });
  rejects(() => decodeReply(m.subarray(0, m.length - 1), true), /truncated/);
  rejects(() => decodeReply(Buffer.concat([m, Buffer.from([0])]), true), /trailing bytes/);
  rejects(() => decodeReply(payloadOf(encodeCompileYourself({ colour: false, redirect: { ...redirect, temp: 'rel' } })), true), /must be absolute/);
  assert.throws(() => encodeCompileYourself({ colour: false, redirect: { ...redirect, arg: 'a\0b' } }), /NUL/);
  rejects(() => decodeReply(Buffer.from([0x4d, 1])), /trailing bytes/);
  const stored = {
    memoWritten: true,
    outputs: [
      { digest: 'a'.repeat(32), size: 12_288 },
      { digest: '0123456789abcdef0123456789abcdef', size: 2 ** 40 },
    ],
  };
  const good = payloadOf(encodeStored(stored));
  assert.deepEqual(decodeStored(good), stored);
  assert.equal(decodeStored(payloadOf(encodeStored({ ...stored, memoWritten: false }))).memoWritten, false);
  for (let n = 0; n < good.length; n++) assert.throws(() => decodeStored(good.subarray(0, n)), ProtocolError, `prefix ${n}`);
  rejects(() => decodeStored(Buffer.concat([good, Buffer.from([0])])), /stored frame of 87 bytes, expected 86/);
  const edit = (at: number, bytes: number[] | string) => {
    const b = Buffer.from(good);
    (typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : Buffer.from(bytes)).copy(b, at);
    return b;
  };
  rejects(() => decodeStored(edit(1, [2])), /memo written flag 2/);
  rejects(() => decodeStored(edit(2, [0, 0, 0, 0])), /output count 0/);
  rejects(() => decodeStored(edit(2, [17, 0, 0, 0])), /output count 17/);
  rejects(() => decodeStored(edit(6, 'A')), /output 0: digest/);
  rejects(() => decodeStored(edit(6 + 32, [0, 0, 0, 0, 0, 0, 0, 0])), /output 0: size 0/);
  rejects(() => decodeStored(edit(46 + 32, [0, 0, 0, 0, 0, 0, 0, 0x80])), /output 1: size \d+ out of range/);
  rejects(() => decodeStored(payloadOf(encodeResult(0, Buffer.alloc(0), Buffer.alloc(0)))), /expected stored 'E'/);
});

test('JSON frames', () => {
  const v = { cmd: 'stats', opts: { json: true }, list: [1, 'two', null] };
  assert.deepEqual(decodeJson(payloadOf(encodeJson(v))), v);
  assert.throws(() => encodeJson(undefined), TypeError);
  rejects(() => decodeJson(Buffer.from('J{bad')), /does not parse/);
  rejects(() => decodeJson(Buffer.from('C{}')), /wrong frame type 0x43/);
  rejects(() => decodeJson(Buffer.from([0x4a, 0xff])), /not valid UTF-8/);
  assert.throws(() => encodeFrame(Buffer.alloc(0)), RangeError);
});

function fnvReference(bytes: Uint8Array): string {
  let h = 0xcbf29ce484222325n;
  for (const b of bytes) h = ((h ^ BigInt(b)) * 0x100000001b3n) & 0xffffffffffffffffn;
  return h.toString(16).padStart(16, '0');
}

test('fnv1a64Hex: published vectors and a BigInt reference', () => {
  assert.equal(fnv1a64Hex(''), 'cbf29ce484222325');
  assert.equal(fnv1a64Hex('a'), 'af63dc4c8601ec8c');
  assert.equal(fnv1a64Hex('foobar'), '85944171f73967e8');
  for (let i = 0; i < 200; i++) {
    const b = randomBytes(i);
    assert.equal(fnv1a64Hex(b), fnvReference(b));
  }
  assert.equal(fnv1a64Hex('/home/ü/.cache/ltocache'), fnvReference(Buffer.from('/home/ü/.cache/ltocache')));
});

test('socket location rule', () => {
  assert.equal(socketDirFor(1000), '/tmp/ltocache-1000');
  const p = socketPathFor('/home/u/.cache/ltocache', 1000);
  assert.equal(p, `/tmp/ltocache-1000/${fnv1a64Hex('/home/u/.cache/ltocache')}.sock`);
  assert.equal(socketPathFor('/home/u/.cache/ltocache///', 1000), p);
  assert.equal(socketPathFor('/', 0), `/tmp/ltocache-0/${fnv1a64Hex('/')}.sock`);
  assert.throws(() => socketPathFor('relative/dir', 0), RangeError);
  assert.throws(() => socketDirFor(-1), RangeError);

  assert.equal(clientCacheDir({ LTOCACHE_DIR: '/x/y/', HOME: '/h' }), '/x/y');
  assert.equal(clientCacheDir({ LTOCACHE_DIR: 'rel', HOME: '/h' }), undefined);
  assert.equal(clientCacheDir({ LTOCACHE_DIR: '', XDG_CACHE_HOME: '/c', HOME: '/h' }), '/c/ltocache');
  assert.equal(clientCacheDir({ XDG_CACHE_HOME: 'c', HOME: '/h/' }), '/h//.cache/ltocache');
  assert.equal(clientCacheDir({ HOME: 'h' }), undefined);
  assert.equal(clientCacheDir({}), undefined);
});
