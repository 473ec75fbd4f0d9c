/**
 * Fuzz: the team server's tokens file (src/remote/tokens.ts parseTokens) and the bearer header.
 *
 *  - Generated well-formed files (any whitespace between fields, comments, blank lines, CRLF):
 *    exactly the model's token list, in order.
 *  - Arbitrary text and single-fault mutations of good files (a field too short, a bad scope,
 *    a bad character, a duplicate name or secret, a missing/extra field, fields swapped): a
 *    token list in which every token is valid and names and secrets are unique, or a
 *    TokensError that starts `<file>:<line>: ` with a real line number and never contains a
 *    secret (any third field of the input); never another exception.
 *  - parseBearer: `Bearer <secret>` gives the secret back; anything else gives null or a
 *    string without whitespace.
 */

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { MIN_SECRET_LENGTH, parseBearer, parseTokens, type Token, TokensError } from '../../src/remote/tokens.js';
import { fuzz, timed } from './common.js';
import { TOKENS_REGRESSIONS } from './regressions/tokens.js';

const FILE = '/etc/ltocache/tokens';
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/;
const SECRET_RE = /^[A-Za-z0-9._~+/-]+=*$/;

const nameArb = fc.tuple(fc.constantFrom(...'aZ09'), fc.string({ unit: fc.constantFrom(...'abyZ09._@-'), maxLength: 20 })).map(([a, b]) => a + b);
const secretArb = fc
  .tuple(fc.string({ unit: fc.constantFrom(...'abXY0189._~+/-'), minLength: MIN_SECRET_LENGTH, maxLength: 40 }), fc.constantFrom('', '=', '=='))
  .map(([s, pad]) => s + pad);
const scopeArb = fc.constantFrom('read' as const, 'write' as const, 'admin' as const);
const tokensArb: fc.Arbitrary<Token[]> = fc
  .uniqueArray(fc.record({ name: nameArb, scope: scopeArb, secret: secretArb }), { maxLength: 6, selector: (t) => t.name })
  .filter((ts) => new Set(ts.map((t) => t.secret)).size === ts.length);
const ws = fc.constantFrom(' ', '\t', '  ', ' \t ');
const layoutArb: fc.Arbitrary<Layout> = fc.record({
  lead: fc.constantFrom('', ' ', '\t'),
  sep1: ws,
  sep2: ws,
  trail: fc.constantFrom('', ' ', ' # owner: ci', '\t#x'),
  before: fc.array(fc.constantFrom('', '# comment', '   ', '\t# indented comment', '#NAME read xxxxxxxxxxxxxxxx'), { maxLength: 2 }),
});

interface Layout {
  lead: string;
  sep1: string;
  sep2: string;
  trail: string;
  before: string[];
}

function render(tokens: Token[], layouts: Layout[], crlf: boolean): string {
  const lines: string[] = [];
  tokens.forEach((t, i) => {
    const l = layouts[i % Math.max(1, layouts.length)] ?? { lead: '', sep1: ' ', sep2: ' ', trail: '', before: [] };
    lines.push(...l.before, `${l.lead}${t.name}${l.sep1}${t.scope}${l.sep2}${t.secret}${l.trail}`);
  });
  return lines.join(crlf ? '\r\n' : '\n');
}

/** Fields of the text as the parser splits them: [third fields (secrets), all other fields]. */
function fieldsIn(text: string): { secrets: string[]; others: string[] } {
  const rows = text.split(/\r?\n/).map((l) =>
    l
      .replace(/(^|\s)#.*$/, '')
      .trim()
      .split(/\s+/),
  );
  return { secrets: rows.filter((f) => f.length >= 3).map((f) => f[2]!), others: rows.flatMap((f) => [f[0] ?? '', f[1] ?? '', ...f.slice(3)]) };
}

function check(text: string): 'ok' | 'error' {
  const lines = text.split(/\r?\n/).length;
  let tokens: Token[];
  try {
    tokens = timed('parseTokens', 200, () => parseTokens(text, FILE));
  } catch (e) {
    if (!(e instanceof TokensError)) throw e;
    const m = /^\/etc\/ltocache\/tokens:(\d+): /.exec(e.message);
    assert.ok(m, `error does not name file:line: ${e.message}`);
    assert.ok(Number(m[1]) >= 1 && Number(m[1]) <= lines);
    // No secret in the message, however short (unless the same text is also a name or scope,
    // which messages may quote; or so short that it is part of the fixed wording).
    const { secrets, others } = fieldsIn(text);
    for (const s of secrets) {
      if (s.length < 6 || others.some((o) => o.includes(s)) || FILE.includes(s)) continue;
      assert.ok(!e.message.includes(s), `error message leaks a secret: ${e.message}`);
    }
    return 'error';
  }
  const names = new Set<string>();
  const secrets = new Set<string>();
  for (const t of tokens) {
    assert.match(t.name, NAME_RE);
    assert.ok(['read', 'write', 'admin'].includes(t.scope));
    assert.ok(t.secret.length >= MIN_SECRET_LENGTH && SECRET_RE.test(t.secret), 'invalid secret accepted');
    assert.ok(!names.has(t.name) && !secrets.has(t.secret), 'duplicate accepted');
    names.add(t.name);
    secrets.add(t.secret);
  }
  return 'ok';
}

type Fault =
  | { f: 'short-secret' }
  | { f: 'bad-scope'; scope: string }
  | { f: 'bad-char'; ch: string; field: 0 | 1 | 2 }
  | { f: 'dup-name' }
  | { f: 'dup-secret' }
  | { f: 'drop-field'; field: 0 | 1 | 2 }
  | { f: 'extra-field' }
  | { f: 'swap' };
const faultArb: fc.Arbitrary<Fault> = fc.oneof(
  fc.constant({ f: 'short-secret' as const }),
  fc.record({ f: fc.constant('bad-scope' as const), scope: fc.constantFrom('Read', 'ADMIN', 'readwrite', 'owner', '') }),
  fc.record({
    f: fc.constant('bad-char' as const),
    ch: fc.constantFrom('!', '=', '"', '\u00e9', '\0', '\u00a0', '$', '*'),
    field: fc.constantFrom(0 as const, 1 as const, 2 as const),
  }),
  fc.constant({ f: 'dup-name' as const }),
  fc.constant({ f: 'dup-secret' as const }),
  fc.record({ f: fc.constant('drop-field' as const), field: fc.constantFrom(0 as const, 1 as const, 2 as const) }),
  fc.constant({ f: 'extra-field' as const }),
  fc.constant({ f: 'swap' as const }),
);

/** Applies one fault to token `at`; returns the new line list (other lines untouched). */
function faulty(tokens: Token[], at: number, fault: Fault): string {
  const fields = tokens.map((t) => [t.name, t.scope, t.secret as string]);
  const i = at % tokens.length;
  const row = fields[i]!;
  switch (fault.f) {
    case 'short-secret':
      row[2] = row[2]!.slice(0, MIN_SECRET_LENGTH - 1);
      break;
    case 'bad-scope':
      row[1] = fault.scope;
      break;
    case 'bad-char':
      row[fault.field] = row[fault.field]!.slice(0, 1) + fault.ch + row[fault.field]!.slice(1);
      break;
    case 'dup-name':
      if (tokens.length > 1) row[0] = fields[(i + 1) % tokens.length]![0]!;
      break;
    case 'dup-secret':
      if (tokens.length > 1) row[2] = fields[(i + 1) % tokens.length]![2]!;
      break;
    case 'drop-field':
      row.splice(fault.field, 1);
      break;
    case 'extra-field':
      row.push('extra');
      break;
    case 'swap':
      [row[0], row[2]] = [row[2]!, row[0]!];
      break;
  }
  return fields.map((f) => f.join(' ')).join('\n');
}

describe('fuzz: tokens file', () => {
  test('well-formed files parse to exactly the model list', async (t) => {
    await fuzz(
      t,
      'tokens (exact)',
      fc.property(tokensArb, fc.array(layoutArb, { maxLength: 4 }), fc.boolean(), (tokens, layouts, crlf) => {
        const text = render(tokens, layouts, crlf);
        assert.deepEqual(
          parseTokens(text, FILE),
          tokens.map((x) => ({ name: x.name, scope: x.scope, secret: x.secret })),
        );
      }),
      { seed: 0x70c001, numRuns: 3000, timeLimitMs: 1_500 },
    );
  });

  test('single faults are reported with file:line and no secret', async (t) => {
    let errors = 0;
    const r = await fuzz(
      t,
      'tokens (faults)',
      fc.property(
        tokensArb.filter((ts) => ts.length > 0),
        fc.nat(),
        faultArb,
        (tokens, at, fault) => {
          const text = faulty(tokens, at, fault);
          if (check(text) === 'error') errors++;
        },
      ),
      { seed: 0x70c002, numRuns: 3000, timeLimitMs: 1_500 },
    );
    assert.ok(errors > r.runs / 2, `${errors} of ${r.runs} faults reported`);
  });

  test('arbitrary text: valid unique tokens, or a TokensError with file:line and no secret', async (t) => {
    await fuzz(
      t,
      'tokens (arbitrary)',
      fc.property(
        fc.oneof(
          fc.string({ unit: 'binary', maxLength: 200 }),
          fc
            .array(
              fc.oneof(
                fc.string({ unit: 'binary', maxLength: 40 }),
                tokensArb.map((ts) => render(ts, [], false)),
              ),
              { maxLength: 5 },
            )
            .map((l) => l.join('\n')),
          fc.constantFrom(' '.repeat(2_000) + 'x', '#'.repeat(2_000), 'a '.repeat(1_000), `n read ${'a'.repeat(5_000)}`),
        ),
        (text) => void check(text),
      ),
      { seed: 0x70c003, numRuns: 3000, timeLimitMs: 2_000 },
    );
  });

  test('parseBearer', async (t) => {
    await fuzz(
      t,
      'parseBearer',
      fc.property(secretArb, fc.constantFrom('Bearer ', 'bearer ', 'BEARER  '), fc.string({ unit: 'binary', maxLength: 40 }), (secret, scheme, junk) => {
        assert.equal(parseBearer(`${scheme}${secret}`), secret);
        assert.equal(parseBearer(`${scheme}${secret} `), secret);
        for (const h of [junk, `Bearer ${junk}`, `Basic ${secret}`, `Bearer ${secret} extra`]) {
          const got = timed('parseBearer', 50, () => parseBearer(h));
          if (got !== null) assert.ok(got.length > 0 && !/\s/.test(got), JSON.stringify(got));
        }
        assert.equal(parseBearer(undefined), null);
      }),
      { seed: 0x70c004, numRuns: 2000, timeLimitMs: 500 },
    );
  });

  test('regressions', () => {
    for (const r of TOKENS_REGRESSIONS) assert.equal(check(r.text), r.expect, r.name);
  });
});
