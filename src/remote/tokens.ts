import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Scope } from '../protocol/remote.js';

/** One line of the tokens file. `secret` stays in memory only; nothing logs it. */
export interface Token {
  name: string;
  scope: Scope;
  secret: string;
}

export class TokensError extends Error {
  override name = 'TokensError';
}

export const MIN_SECRET_LENGTH = 16;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/;
/** RFC 6750 b64token: what may follow `Bearer ` in an Authorization header. */
const SECRET_RE = /^[A-Za-z0-9._~+/-]+=*$/;
const RANK: Record<Scope, number> = { read: 0, write: 1, admin: 2 };

/** `write` implies `read`; `admin` implies `write`. */
export function scopeAllows(have: Scope, need: Scope): boolean {
  return RANK[have] >= RANK[need];
}

/**
 * Parses a tokens file: one `NAME SCOPE SECRET` per line, whitespace-separated; `#` at the start
 * of a line or after whitespace starts a comment; blank lines are ignored. Throws TokensError
 * naming the file and line; the message never contains a secret.
 */
export function parseTokens(text: string, file = 'tokens'): Token[] {
  const tokens: Token[] = [];
  const names = new Map<string, number>();
  const secrets = new Map<string, number>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const at = `${file}:${i + 1}`;
    const line = raw.replace(/(^|\s)#.*$/, '').trim();
    if (!line) return;
    const fields = line.split(/\s+/);
    if (fields.length !== 3) throw new TokensError(`${at}: expected 'NAME SCOPE SECRET', found ${fields.length} field${fields.length === 1 ? '' : 's'}`);
    const [name, scope, secret] = fields as [string, string, string];
    if (!NAME_RE.test(name)) throw new TokensError(`${at}: the token name (first column) must be 1-64 characters of A-Z a-z 0-9 . _ @ - and start with a letter or digit`);
    const s = Scope.safeParse(scope);
    if (!s.success) throw new TokensError(`${at}: the scope (second column) must be read, write or admin`);
    if (secret.length < MIN_SECRET_LENGTH) throw new TokensError(`${at}: the secret (third column) is shorter than ${MIN_SECRET_LENGTH} characters`);
    if (!SECRET_RE.test(secret)) throw new TokensError(`${at}: the secret (third column) may only contain A-Z a-z 0-9 . _ ~ + / - (and trailing =)`);
    const dupName = names.get(name);
    if (dupName !== undefined) throw new TokensError(`${at}: the token name is already used on line ${dupName}`);
    const dupSecret = secrets.get(secret);
    if (dupSecret !== undefined) throw new TokensError(`${at}: the secret is the same as the one on line ${dupSecret}`);
    names.set(name, i + 1);
    secrets.set(secret, i + 1);
    tokens.push({ name, scope: s.data, secret });
  });
  return tokens;
}

/** Reads and parses a tokens file; an empty one is an error, since it would lock everyone out. */
export function loadTokensFile(file: string): Token[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new TokensError(`cannot read tokens file ${file}: ${(e as Error).message}`);
  }
  const tokens = parseTokens(text, file);
  if (tokens.length === 0) throw new TokensError(`${file}: no tokens defined`);
  return tokens;
}

const sha256 = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

/**
 * Looks a presented secret up in constant time with respect to the secrets: both sides are
 * reduced to SHA-256 digests (equal lengths) and compared with timingSafeEqual against every
 * token, with no early exit.
 */
export class TokenTable {
  private readonly entries: { token: Token; digest: Buffer }[];

  constructor(tokens: readonly Token[]) {
    this.entries = tokens.map((token) => ({ token, digest: sha256(token.secret) }));
  }

  get size(): number {
    return this.entries.length;
  }

  authenticate(secret: string): Token | null {
    const presented = sha256(secret);
    let found: Token | null = null;
    for (const e of this.entries) {
      const same = timingSafeEqual(presented, e.digest);
      if (same && found === null) found = e.token;
    }
    return found;
  }
}

/** The secret from `Authorization: Bearer <secret>`, or null when the header is absent or another scheme. */
export function parseBearer(header: string | undefined): string | null {
  if (header === undefined) return null;
  const m = /^Bearer[ ]+(\S+)\s*$/i.exec(header);
  return m ? m[1]! : null;
}
