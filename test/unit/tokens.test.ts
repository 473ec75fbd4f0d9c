import assert from 'node:assert/strict';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadTokensFile, parseBearer, parseTokens, scopeAllows, TokensError, TokenTable } from '../../src/remote/tokens.js';
import { tempDir } from '../support/env.js';

const A = 'aaaaaaaaaaaaaaaa1';
const B = 'bbbbbbbbbbbbbbbb2';
const C = 'cccccccccccccccc3';

test('parses NAME SCOPE SECRET lines with comments and blank lines', () => {
  const text = ['# team tokens', '', `ci    write  ${A}`, `  alice read ${B}   # laptop`, `ops admin ${C}`, '   ', '#disabled read dddddddddddddddd'].join('\n');
  assert.deepEqual(parseTokens(text, 'tok'), [
    { name: 'ci', scope: 'write', secret: A },
    { name: 'alice', scope: 'read', secret: B },
    { name: 'ops', scope: 'admin', secret: C },
  ]);
  assert.deepEqual(parseTokens('\r\n# only comments\r\n'), []);
  assert.deepEqual(parseTokens(`ci write ${A}\r\n`), [{ name: 'ci', scope: 'write', secret: A }]);
});

test('malformed lines are errors naming the file and line, never the secret', () => {
  const cases: [string, RegExp][] = [
    [`ci write`, /tok:2: expected 'NAME SCOPE SECRET', found 2 fields/],
    [`ci write ${A} extra`, /tok:2: expected 'NAME SCOPE SECRET', found 4 fields/],
    [`ci owner ${A}`, /tok:2: the scope \(second column\) must be read, write or admin/],
    [`ci write tiny123`, /tok:2: the secret \(third column\) is shorter than 16 characters/],
    [`ci write ${A}"quoted"`, /tok:2: the secret \(third column\) may only contain/],
    [`-ci write ${A}`, /tok:2: the token name \(first column\) must be/],
    [`ci write ${A}\nci read ${B}`, /tok:3: the token name is already used on line 2/],
    [`ci write ${A}\nbob read ${A}`, /tok:3: the secret is the same as the one on line 2/],
    // Columns swapped: the secret stands where the name goes, and must not be echoed either.
    [`${A} write tiny-name`, /tok:2: the secret \(third column\) is shorter than 16 characters/],
  ];
  for (const [body, re] of cases) {
    assert.throws(
      () => parseTokens(`# header\n${body}`, 'tok'),
      (e: unknown) => {
        assert.ok(e instanceof TokensError, String(e));
        assert.match(e.message, re);
        assert.ok(!e.message.includes(A) && !e.message.includes('tiny123'), `secret leaked: ${e.message}`);
        return true;
      },
    );
  }
});

test('loadTokensFile: missing and empty files are errors', (t) => {
  const dir = tempDir('tokens');
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  assert.throws(() => loadTokensFile(join(dir, 'nope')), /cannot read tokens file/);
  writeFileSync(join(dir, 'empty'), '# nothing\n');
  assert.throws(() => loadTokensFile(join(dir, 'empty')), /no tokens defined/);
  writeFileSync(join(dir, 'ok'), `ci write ${A}\n`);
  assert.equal(loadTokensFile(join(dir, 'ok'))[0]!.name, 'ci');
});

test('scopes: write implies read, admin implies write', () => {
  assert.ok(scopeAllows('read', 'read'));
  assert.ok(!scopeAllows('read', 'write'));
  assert.ok(!scopeAllows('read', 'admin'));
  assert.ok(scopeAllows('write', 'read'));
  assert.ok(scopeAllows('write', 'write'));
  assert.ok(!scopeAllows('write', 'admin'));
  assert.ok(scopeAllows('admin', 'read'));
  assert.ok(scopeAllows('admin', 'write'));
  assert.ok(scopeAllows('admin', 'admin'));
});

test('TokenTable.authenticate finds the right token and rejects everything else', () => {
  const table = new TokenTable(parseTokens(`ci write ${A}\nalice read ${B}\nops admin ${C}`));
  assert.equal(table.size, 3);
  assert.equal(table.authenticate(A)?.name, 'ci');
  assert.equal(table.authenticate(B)?.name, 'alice');
  assert.equal(table.authenticate(C)?.scope, 'admin');
  for (const wrong of ['', A.slice(0, -1), `${A}x`, A.toUpperCase(), B.replace('2', '3'), ' '.repeat(17)]) {
    assert.equal(table.authenticate(wrong), null, JSON.stringify(wrong));
  }
  assert.equal(new TokenTable([]).authenticate(A), null);
});

test('parseBearer', () => {
  assert.equal(parseBearer(undefined), null);
  assert.equal(parseBearer(''), null);
  assert.equal(parseBearer(`Basic ${A}`), null);
  assert.equal(parseBearer('Bearer'), null);
  assert.equal(parseBearer(`Bearer ${A}`), A);
  assert.equal(parseBearer(`bearer  ${A} `), A);
  assert.equal(parseBearer(`Bearer ${A} ${B}`), null);
});
