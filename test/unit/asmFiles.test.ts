import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { directivesInText, scanBitcodeAsm } from '../../src/key/asmFiles.js';

test('plain string operands are found, in any case, with leading blanks', () => {
  const r = directivesInText('.pushsection .data\n\t.INCBIN "a/b.gz", 4\n .include\t"x.s"\n.incbin "a/b.gz"');
  assert.deepEqual(r, {
    kind: 'ok',
    refs: [
      { directive: 'incbin', name: 'a/b.gz' },
      { directive: 'include', name: 'x.s' },
      { directive: 'incbin', name: 'a/b.gz' },
    ],
  });
});

test('similar names are not directives; asm without them has no refs', () => {
  assert.deepEqual(directivesInText('.incbinx "a"\n.include_me "b"\nmov %eax, %ebx'), { kind: 'ok', refs: [] });
});

test('an operand that is not a plain literal is unsure, never guessed', () => {
  for (const text of ['.incbin \\f', '.incbin "\\f"', '.include name.s', '.incbin ""', '.incbin "a\nb"', '.include']) {
    assert.equal(directivesInText(text).kind, 'unsure', text);
  }
});

test('bytes that are not bitcode, or truncated bitcode, are unsure, never an exception', () => {
  assert.equal(scanBitcodeAsm(new Uint8Array([1, 2, 3])).kind, 'unsure');
  assert.equal(scanBitcodeAsm(new Uint8Array([0x42, 0x43, 0xc0, 0xde, 0x35, 0x14, 0, 0])).kind, 'unsure');
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 512 }), (tail) => {
      const b = new Uint8Array(4 + tail.length - (tail.length % 4));
      b.set([0x42, 0x43, 0xc0, 0xde]);
      b.set(tail.subarray(0, b.length - 4), 4);
      const r = scanBitcodeAsm(b);
      return r.kind === 'ok' || r.kind === 'unsure';
    }),
    { numRuns: 2000, seed: 42 },
  );
});
