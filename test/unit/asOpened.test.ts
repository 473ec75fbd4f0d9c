import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { asOpened } from '../../src/util/asOpened.js';
import { tempDir } from '../support/env.js';

test('asOpened: lexical for ordinary paths; a path with a `..` component kept as written, so it resolves through a symbolic link as the kernel does', () => {
  assert.equal(asOpened('/w/b', 'x/./y.o'), '/w/b/x/y.o');
  assert.equal(asOpened('/w/b', '/abs//z.o'), '/abs/z.o');
  assert.equal(asOpened('/w/b', '..m.o'), '/w/b/..m.o');
  assert.equal(asOpened('/w/b', 'sub/../a.o'), '/w/b/sub/../a.o');
  assert.equal(asOpened('/w/b/', '../a.o'), '/w/b/../a.o');
  assert.equal(asOpened('/w/b', '/r/sub/..'), '/r/sub/..');
  const root = realpathSync(tempDir('asopened'));
  mkdirSync(join(root, 'real', 'inner'), { recursive: true });
  mkdirSync(join(root, 'build'));
  writeFileSync(join(root, 'real', 'a.o'), 'real');
  writeFileSync(join(root, 'build', 'a.o'), 'stale copy');
  symlinkSync(join(root, 'real', 'inner'), join(root, 'build', 'sub'));
  // realpathSync.native: Node's own realpath normalises lexically first.
  assert.equal(realpathSync.native(asOpened(join(root, 'build'), 'sub/../a.o')), join(root, 'real', 'a.o'));
  assert.equal(readFileSync(asOpened(join(root, 'build'), 'sub/../a.o'), 'utf8'), 'real');
});
