import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { allSchemas, schemaText } from '../../src/protocol/schemas.js';
import { TOP } from '../support/env.js';

test('cache-schema/ holds exactly the schemas the code enforces (run `npm run schemas` after a change)', () => {
  const dir = join(TOP, 'cache-schema');
  const generated = allSchemas();
  const committed = readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort();
  assert.deepEqual(committed, Object.keys(generated).sort());
  for (const [name, schema] of Object.entries(generated)) {
    assert.equal(readFileSync(join(dir, name), 'utf8'), schemaText(schema), `${name} is stale`);
  }
});
