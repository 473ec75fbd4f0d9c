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
  for (const text of ['.incbin \\f', '.incbin "\\f"', '.include name.s', '.incbin ""', '.incbin "a\nb"', '.include', '.incbin "$0"', '.incbin "blob$1"']) {
    assert.equal(directivesInText(text).kind, 'unsure', text);
  }
});

test('a directive name built by macro or repetition substitution is unsure (each of these reads blob.bin with llvm-mc 19)', () => {
  const built = {
    'macro argument': '.macro ldfile dir, f\n .\\dir "\\f"\n .endm\n .section .rodata\nblob:\n ldfile incbin, blob.bin\n',
    'macro join': '.macro emb f\n .inc\\()bin "\\f"\n.endm\nemb blob.bin\n',
    '.irp': '.irp d,incbin\n .\\d "blob.bin"\n.endr\n',
    '.irpc': '.irpc d,i\n .\\d\\()ncbin "blob.bin"\n.endr\n',
    '.rept join': '.rept 1\n .inc\\()bin "blob.bin"\n.endr\n',
    'argument alone': '.macro m d\n\\d "blob.bin"\n.endm\nm .incbin\n',
    'after ;': '.macro m d; .long 0; .\\d "blob.bin"; .endm; m incbin',
    'after a label': '.macro m d\nfoo : .\\d "blob.bin"\n.endm\nm incbin\n',
    'after a comment': '.macro m d\n/* c */ .\\d "blob.bin"\n.endm\nm incbin\n',
    'Darwin $0': '.macro m\n .$0 "blob.bin"\n.endm\nm incbin\n',
  };
  for (const [what, text] of Object.entries(built)) assert.equal(directivesInText(text).kind, 'unsure', what);
  assert.equal(directivesInText('.altmacro\n.macro m d\n .long d\n.endm\n').kind, 'unsure', '.altmacro: %expr, <str>');
});

test('a string macro argument is pasted without quotes: a directive in one is unsure, even in a text that only invokes the macro', () => {
  // With `.macro m a` / `.long \a\()bin "real.bin"`: `.long 1; .incbin "real.bin"`.
  assert.equal(directivesInText('m "1; .inc"\n').kind, 'unsure');
  // With `.macro m a, b` / `.long \a "\b"`: reads real.bin, not ", ".
  assert.equal(directivesInText('m "1; .incbin ", "real.bin"\n').kind, 'unsure');
  assert.equal(directivesInText('.ascii ".incbin \\"x\\""').kind, 'unsure');
  // With `.macro m a, b, c` / `.long \a "real.bin", \c`: a string across a line break reads real.bin,
  // not ",,0"; then strings whose bounds a quote in a comment or a character literal could shift.
  for (const text of ['m "1\n.incbin ",,0"\n"\n', '.byte \'"\'\n.incbin "a"', '.incbin "a" # "\n', '/* " */ .incbin "a"']) {
    assert.equal(directivesInText(text).kind, 'unsure', text);
  }
});

test('macros that substitute only operands stay ok and their literal .incbin is still found', () => {
  // The Linux kernel's _ASM_EXTABLE_TYPE_REG, carried in x86 inline asm.
  const extable = [
    '.macro extable_type_reg type:req reg:req',
    '.set .Lfound, 0',
    '.set .Lregnr, 0',
    '.irp rs,rax,rcx,rdx,rbx,rsp,rbp,rsi,rdi,r8,r9,r10,r11,r12,r13,r14,r15',
    '.ifc \\reg, %\\rs',
    '.set .Lfound, .Lfound+1',
    '.long \\type + (.Lregnr << 8)',
    '.endif',
    '.set .Lregnr, .Lregnr+1',
    '.endr',
    '.if (.Lfound != 1)',
    '.error "extable_type_reg: bad register argument"',
    '.endif',
    '.endm',
    'extable_type_reg reg=%eax, type=11',
    '.purgem extable_type_reg',
  ].join('\n');
  assert.deepEqual(directivesInText(extable), { kind: 'ok', refs: [] });
  assert.deepEqual(directivesInText(`${extable}\n.pushsection .rodata, "a"\nblob: .incbin "x.bin"\n.popsection`), {
    kind: 'ok',
    refs: [{ directive: 'incbin', name: 'x.bin' }],
  });
  assert.deepEqual(directivesInText('.macro put v\n .long \\v; .ascii "" "\\0"\n.endm\nput 3\n.incbin "y"'), { kind: 'ok', refs: [{ directive: 'incbin', name: 'y' }] });
});

test('the text scan never throws and is linear (no rescans of heads that overlap)', () => {
  fc.assert(
    fc.property(fc.string({ unit: fc.constantFrom(...'.incbin"\\$;:{}*/ \n\tm#\'x'), maxLength: 200 }), (text) => {
      const r = directivesInText(text);
      return r.kind === 'ok' || r.kind === 'unsure';
    }),
    { numRuns: 3000, seed: 7 },
  );
  const t0 = performance.now();
  for (const text of ['{'.repeat(1e6), '*/'.repeat(5e5), ` ${'a{'.repeat(5e5)}`, `${'{'.repeat(1000)}${' '.repeat(1000)}`.repeat(500)]) directivesInText(text);
  assert.ok(performance.now() - t0 < 5000, 'linear in the text');
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
