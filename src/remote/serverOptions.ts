import { isAbsolute, join } from 'node:path';
import { z } from 'zod';
import { DEFAULT_LIMITS, Limits, Scope } from '../protocol/remote.js';
import { GIB } from '../store/storeOptions.js';
import { Logger } from '../util/log.js';
import { parseRedisUrl } from './storage/redisStorage.js';
import { MIN_SECRET_LENGTH, type Token } from './tokens.js';

const Pem = z.union([z.string().min(1), z.instanceof(Buffer)]);

const TokenShape = z.object({
  name: z.string().min(1),
  scope: Scope,
  secret: z.string().min(MIN_SECRET_LENGTH, `secrets must be at least ${MIN_SECRET_LENGTH} characters`),
});

export const TokenList = z
  .array(TokenShape)
  .min(1, 'at least one token is needed')
  .superRefine((tokens, ctx) => {
    if (new Set(tokens.map((t) => t.name)).size !== tokens.length) ctx.addIssue({ code: 'custom', message: 'token names must be unique' });
    if (new Set(tokens.map((t) => t.secret)).size !== tokens.length) ctx.addIssue({ code: 'custom', message: 'token secrets must be unique' });
  });

export const ServerOptions = z
  .object({
    /** Store directory (absolute); created if missing. Exactly one of dir and storage. */
    dir: z.string().refine(isAbsolute, 'dir must be an absolute path').optional(),
    /** Shared storage URL: redis://, rediss://, redis+cluster:// (see RedisStorage). */
    storage: z
      .string()
      .refine((u) => {
        try {
          parseRedisUrl(u);
          return true;
        } catch {
          return false;
        }
      }, 'storage must be redis://[USER:PASS@]HOST:PORT[/DB], rediss://… or redis+cluster://HOST:PORT,HOST:PORT,…')
      .optional(),
    host: z.string().min(1).default('127.0.0.1'),
    /** 0 picks a free port; CacheServer.port tells which. */
    port: z.number().int().min(0).max(65535).default(7717),
    maxBytes: z
      .number()
      .int()
      .positive()
      .default(10 * GIB),
    tokens: TokenList,
    /** PEM contents (not paths). Both or neither. */
    tls: z.object({ cert: Pem, key: Pem }).optional(),
    /** Access log path; undefined → DIR/access.log (none with storage), null → none. */
    accessLog: z.string().nullable().optional(),
    limits: Limits.partial().default({}),
    /** Bad messages on one connection before it is closed. */
    maxBadMessages: z.number().int().positive().default(10),
    /** How long stop() lets in-flight requests finish before cutting connections. */
    shutdownGraceMs: z.number().int().nonnegative().default(10_000),
    /** Simultaneous authenticated connections; more are refused with HTTP 503. */
    maxClients: z.number().int().positive().default(1024),
    /** How often changed counters are written to the store. */
    statsFlushMs: z.number().int().positive().default(1000),
    /** Diagnostics (start, stop, internal errors); default: warnings and errors on stderr. */
    log: z.custom<Logger>((v) => v instanceof Logger, 'log must be a Logger').optional(),
  })
  .strict()
  .refine((o) => (o.dir === undefined) !== (o.storage === undefined), 'exactly one of dir and storage is needed');
export type ServerOptionsInput = z.input<typeof ServerOptions>;

export interface ResolvedServerOptions {
  dir: string | null;
  storage: string | null;
  host: string;
  port: number;
  maxBytes: number;
  tokens: Token[];
  tls: { cert: string | Buffer; key: string | Buffer } | null;
  accessLog: string | null;
  limits: Limits;
  maxBadMessages: number;
  shutdownGraceMs: number;
  maxClients: number;
  statsFlushMs: number;
  log: Logger;
}

export class ServerOptionsError extends Error {
  override name = 'ServerOptionsError';
}

function issues(e: z.ZodError): string {
  return e.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
}

/** Validates a token list for CacheServer.setTokens; throws ServerOptionsError. */
export function parseTokenList(input: unknown): Token[] {
  const r = TokenList.safeParse(input);
  if (!r.success) throw new ServerOptionsError(`invalid tokens: ${issues(r.error)}`);
  return r.data;
}

/** Throws ServerOptionsError with a readable message (never containing a secret). */
export function parseServerOptions(input: unknown): ResolvedServerOptions {
  const r = ServerOptions.safeParse(input);
  if (!r.success) throw new ServerOptionsError(`invalid server options: ${issues(r.error)}`);
  const o = r.data;
  return {
    dir: o.dir ?? null,
    storage: o.storage ?? null,
    host: o.host,
    port: o.port,
    maxBytes: o.maxBytes,
    tokens: o.tokens,
    tls: o.tls ?? null,
    accessLog: o.accessLog === undefined ? (o.dir ? join(o.dir, 'access.log') : null) : o.accessLog,
    limits: { ...DEFAULT_LIMITS, ...Object.fromEntries(Object.entries(o.limits).filter(([, v]) => v !== undefined)) },
    maxBadMessages: o.maxBadMessages,
    shutdownGraceMs: o.shutdownGraceMs,
    maxClients: o.maxClients,
    statsFlushMs: o.statsFlushMs,
    log: o.log ?? new Logger(null, 'warn'),
  };
}
