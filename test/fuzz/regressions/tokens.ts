/**
 * Tokens files that once made a tokens property fail, or that pin a hostile shape
 * (docs/reliability.md "## Fuzzing"). Replayed by test/fuzz/tokens.test.ts.
 */
export const TOKENS_REGRESSIONS: { name: string; text: string; expect: 'ok' | 'error' }[] = [
  { name: 'secret on a line with a bad scope is not echoed', text: 'ci owner abcdefghijklmnop0123', expect: 'error' },
  { name: 'comment glued to the secret is part of it', text: 'ci read abcdefghijklmnop#x', expect: 'error' },
  { name: 'NBSP separates fields', text: 'ci\u00a0read abcdefghijklmnop0123', expect: 'ok' },
  { name: 'duplicate secret names the first line only', text: 'a read abcdefghijklmnop0123\nb write abcdefghijklmnop0123', expect: 'error' },
  // size, once per run (each must stay linear: the parser's regexes cannot backtrack)
  { name: '50k spaces', text: ' '.repeat(50_000) + 'x', expect: 'error' },
  { name: '50k hashes', text: '#'.repeat(50_000), expect: 'ok' },
  { name: '20k fields', text: 'a '.repeat(20_000), expect: 'error' },
  { name: '100k-character secret', text: `n read ${'a'.repeat(100_000)}`, expect: 'ok' },
];
