import assert from 'node:assert/strict';
import { test } from 'node:test';
import { within } from '../../src/dtlto/distribution.js';

test('within: a name that starts with two dots is inside; .. and its descendants are not', () => {
  assert.equal(within('/b/out', '/b/out/..m.1.7.native.o'), true);
  assert.equal(within('/b/out', '/b/out/sub/x.o'), true);
  assert.equal(within('/b/out', '/b/out'), false);
  assert.equal(within('/b/out', '/b'), false);
  assert.equal(within('/b/out', '/b/other/x.o'), false);
  assert.equal(within('/b/out', '/elsewhere/x.o'), false);
});
