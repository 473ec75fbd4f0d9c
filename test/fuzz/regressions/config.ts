/**
 * Configuration inputs that once made a config property fail (docs/reliability.md
 * "## Fuzzing"). Replayed by test/fuzz/config.test.ts.
 */
export type ConfigRegression = { kind: 'text'; name: string; text: string } | { kind: 'env'; name: string; env: Record<string, string>; expectError: boolean };

export const CONFIG_REGRESSIONS: ConfigRegression[] = [
  // Found by 'config text (arbitrary)' (seed 12644354): `key in ConfigShape` also matched
  // Object.prototype names, so these lines were accepted and silently ignored instead of being
  // reported as unknown settings. Fixed in parseConfigText (own properties only).
  { kind: 'text', name: 'constructor is not a setting', text: 'constructor = ' },
  { kind: 'text', name: '__proto__ is not a setting', text: 'jobs = 2\n__proto__ = 1' },
  { kind: 'text', name: 'valueof is not a setting', text: 'valueof = 1' },
  // Found by 'loadConfig' (seed 12644355): parseSize returned 1.0995e23 for 99999999999T and
  // Infinity for 400 nines, and max_size took it. Fixed in parseSize (safe integers only).
  { kind: 'env', name: 'max_size beyond 2^53', env: { LTOCACHE_MAX_SIZE: '99999999999T' }, expectError: true },
  { kind: 'env', name: 'max_size of Infinity', env: { LTOCACHE_MAX_SIZE: '9'.repeat(400) }, expectError: true },
  { kind: 'env', name: 'max_size of 8 PiB - 1 is fine', env: { LTOCACHE_MAX_SIZE: '8191T' }, expectError: false },
];
