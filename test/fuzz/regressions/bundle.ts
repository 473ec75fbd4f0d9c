/**
 * Bundles that once made an unpackBundle property fail, or that pin a hostile shape
 * (docs/reliability.md "## Fuzzing"). Replayed by test/fuzz/bundle.test.ts: each is the
 * packBundle output for `files`, with header `edits` applied (checksum recomputed).
 */
export interface BundleRegression {
  name: string;
  /** The declared files: [name, content hex]. */
  files: [string, string][];
  /** Header rewrites: which entry (0-based, in file order), which field, the new value. */
  edits: ({ entry: number } & ({ field: 'size'; value: string } | { field: 'type'; value: number } | { field: 'name'; value: string }))[];
  expect: 'ok' | 'rejected';
}

export const BUNDLE_REGRESSIONS: BundleRegression[] = [
  {
    // Found by 'bundle damaged' (seed 11588067): typeflag '5' (directory) with a non-zero size.
    // tar-stream hands out an entry stream that never ends for it; unpackBundle waited for
    // that 'end' to move on, so the promise never settled (a peer could pin a stream slot and
    // the buffered bundle forever). Fixed in unpackBundle: a rejection stops the extraction.
    name: 'directory entry with a non-zero size',
    files: [
      ['a', '029315c10003'],
      ['x9999', '73'],
    ],
    edits: [
      { entry: 0, field: 'type', value: 0x35 },
      { entry: 0, field: 'size', value: '00000037441' },
    ],
    expect: 'rejected',
  },
  {
    name: 'directory entry with a size of one block',
    files: [['obj', '010203']],
    edits: [
      { entry: 0, field: 'type', value: 0x35 },
      { entry: 0, field: 'size', value: '00000001000' },
    ],
    expect: 'rejected',
  },
  {
    name: 'hard link carrying the data',
    files: [['obj', '010203']],
    edits: [{ entry: 0, field: 'type', value: 0x31 }],
    expect: 'rejected',
  },
  {
    name: 'traversal name',
    files: [['obj', '010203']],
    edits: [{ entry: 0, field: 'name', value: '../obj' }],
    expect: 'rejected',
  },
  {
    name: 'unedited',
    files: [
      ['obj', '010203'],
      ['dwo', ''],
    ],
    edits: [],
    expect: 'ok',
  },
];
