/**
 * Bitstreams that once made a moduleTable/bitstream property fail, or that pin a hostile
 * shape (docs/reliability.md "## Fuzzing"). Replayed by test/e2e/moduleTableFuzz.test.ts, which
 * checks the outcome kind and the general contract (bit offset in the reason, time bound).
 */
export const INDEX_REGRESSIONS: { name: string; hex: string; expect: 'ok' | 'invalid' }[] = [
  { name: 'magic only', hex: '4243c0de', expect: 'invalid' },
  { name: 'wrapper header pointing past the end', hex: 'dec0170b000000001400000000ffffff00000000', expect: 'invalid' },
  // ENTER_SUBBLOCK id 19, width 4, length word 0xffffffff
  { name: 'huge block length', hex: '4243c0de' + '35080000' + 'ffffffff', expect: 'invalid' },
];
