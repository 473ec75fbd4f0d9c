import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { CLI_WORDS, COMMANDS } from '../../src/cli/commandTable.js';
import { generatedFiles } from '../../src/cli/docs.js';
import { compareVersions } from '../../src/cli/main.js';
import { TOP } from '../support/env.js';

test('README command table, man page and completions are what src/cli/commandTable.ts generates (npm run docs)', () => {
  for (const [rel, text] of generatedFiles(TOP)) assert.equal(readFileSync(join(TOP, rel), 'utf8'), text, `${rel} is stale: run npm run docs`);
});

test('every command of the table is one the native client hands to the CLI (is_cli_command)', () => {
  const src = readFileSync(join(TOP, 'client', 'ltocache.c'), 'utf8');
  const m = /static int is_cli_command[^{]*\{[^{]*\{([^}]*)\}/.exec(src);
  assert.ok(m, 'is_cli_command list not found');
  const words = [...m[1]!.matchAll(/"([^"]+)"/g)].map((x) => x[1]);
  for (const w of CLI_WORDS) assert.ok(words.includes(w), `client/ltocache.c is_cli_command lacks '${w}'`);
  assert.ok(COMMANDS.every((c) => c.rows.length > 0));
});

test('compareVersions orders dotted versions numerically', () => {
  assert.equal(compareVersions('0.1.0', '0.1.0'), 0);
  assert.equal(compareVersions('0.9.0', '0.10.0'), -1);
  assert.equal(compareVersions('1.0', '0.99.99'), 1);
});
