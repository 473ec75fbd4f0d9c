import type { BundleLimits } from '../../../src/remote/bundle.js';

/**
 * Bundles that once made an unpackBundle property fail, or that pin a hostile shape
 * (docs/reliability.md "## Fuzzing"). Replayed by test/fuzz/bundle.test.ts.
 */
export interface BundleRegression {
  name: string;
  /** The declared files: [name, content hex]. */
  files: [string, string][];
  bundleHex: string;
  limits?: BundleLimits;
  expect: 'ok' | 'rejected';
}

export const BUNDLE_REGRESSIONS: BundleRegression[] = [];
