import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { z } from 'zod';
import { resolveCacheDir } from './cacheDir.js';

const SIZE_RE = /^(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?$/i;

/** Parses "10G", "512M", "1.5GiB", "4096" into bytes (binary multiples). */
export function parseSize(text: string): number {
  const m = SIZE_RE.exec(text.trim());
  if (!m) throw new Error(`not a size: '${text}' (examples: 10G, 512M, 4096)`);
  const unit = (m[2] ?? 'B').toUpperCase()[0] as 'B' | 'K' | 'M' | 'G' | 'T';
  const mult = { B: 1, K: 1 << 10, M: 1 << 20, G: 1 << 30, T: 2 ** 40 }[unit];
  const bytes = Math.floor(Number(m[1]) * mult);
  // "9999…9T" would otherwise come out as 1e23 or Infinity: not a byte count anything can use.
  if (!Number.isSafeInteger(bytes)) throw new Error(`size too large: '${text}' (at most ${Number.MAX_SAFE_INTEGER} bytes)`);
  return bytes;
}

const sizeField = z.union([z.number().int().positive(), z.string()]).transform((v, ctx) => {
  if (typeof v === 'number') return v;
  try {
    const n = parseSize(v);
    if (n <= 0) throw new Error(`size must be positive, got '${v}'`);
    return n;
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message });
    return z.NEVER;
  }
});
const intField = (min: number) =>
  z.coerce
    .number({ error: 'not a number' })
    .int({ error: 'not a whole number' })
    .min(min, { error: `must be at least ${min}` });

/** Every setting, its validation and default. Keys are the config-file spelling. */
export const ConfigShape = {
  max_size: sizeField.default(10 * 2 ** 30),
  jobs: intField(1).default(Math.max(1, cpus().length)),
  /** Three hours, as Bazel's and Gradle's build daemons: a daemon that exits between an edit and the
   * next build makes that build's first daemon job wait for its start (≈ 0.2 s, docs/benchmarks.md). */
  idle_timeout: intField(0).default(10_800),
  log_level: z.enum(['error', 'warn', 'info', 'debug']).default('info'),
  /** One team server URL, or several serving the same cache, comma- or space-separated. */
  remote: z
    .string()
    .superRefine((v, ctx) => {
      if (v.trim() === '') return;
      const urls = v.split(/[\s,]+/).filter((u) => u !== '');
      const bad = urls.find((u) => !/^wss?:\/\/[^\s,]+$/.test(u));
      if (bad !== undefined) ctx.addIssue({ code: 'custom', message: `remote must be a ws:// or wss:// URL, or several (comma- or space-separated); '${bad}' is not` });
      else if (new Set(urls).size !== urls.length) ctx.addIssue({ code: 'custom', message: 'remote names a URL twice' });
    })
    .transform((v) => v.trim())
    .default(''),
  remote_token: z.string().default(''),
  remote_mode: z.enum(['read-only', 'read-write']).default('read-write'),
  remote_ca: z.string().default(''),
  remote_timeout_ms: intField(1).default(300),
  remote_retry_ms: intField(1).default(10_000),
  upload_queue: intField(0).default(256),
  /** Share team memos and prefetch a build's entries from the team cache (docs/team-cache.md "Team memos"). */
  remote_prefetch: z.enum(['on', 'off']).default('on'),
  verify: z
    .string()
    .regex(/^(off|all|sample:(0(\.\d+)?|1(\.0+)?))$/, 'verify is off, all or sample:<fraction 0..1>')
    .default('off'),
  build_gap_ms: intField(1).default(10_000),
};
const ConfigSchema = z.object(ConfigShape).strict();
export type Config = z.infer<typeof ConfigSchema> & { dir: string; configFile: string };
export type ConfigKey = keyof typeof ConfigShape;
export type Origin = 'default' | 'file' | 'env';

export class ConfigError extends Error {}

/**
 * Parses the config file format: `key = value` lines, `#` starts a comment, blank lines ignored.
 * Unknown keys and malformed lines are errors that name the line.
 */
export function parseConfigText(text: string, file: string): Record<string, string> {
  const out: Record<string, string> = {};
  // Split on CRLF too: a '\r' left on the line stops `.` and so the comment strip below.
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.replace(/(^|\s)#.*$/, '').trim();
    if (!line) return;
    const m = /^([a-z_]+)\s*=\s*(.*)$/.exec(line);
    if (!m) throw new ConfigError(`${file}:${i + 1}: expected 'key = value', got '${raw.trim()}'`);
    const key = m[1]!;
    // Own keys only: `in` also saw Object.prototype, so `constructor = 1` was silently accepted.
    if (!Object.hasOwn(ConfigShape, key)) throw new ConfigError(`${file}:${i + 1}: unknown setting '${key}' (known: ${Object.keys(ConfigShape).join(', ')})`);
    out[key] = m[2]!.replace(/^"(.*)"$/, '$1');
  });
  return out;
}

export interface LoadedConfig {
  config: Config;
  origins: Record<ConfigKey, Origin>;
}

/** Loads defaults < config file < LTOCACHE_* environment, validated once. Throws ConfigError. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): LoadedConfig {
  let dir: string;
  try {
    dir = resolveCacheDir(env);
  } catch (e) {
    throw new ConfigError((e as Error).message);
  }
  const configFile = env.LTOCACHE_CONFIG || join(dir, 'ltocache.conf');
  let fileValues: Record<string, string> = {};
  try {
    fileValues = parseConfigText(readFileSync(configFile, 'utf8'), configFile);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw e instanceof ConfigError ? e : new ConfigError(`${configFile}: ${(e as Error).message}`);
    }
    if (env.LTOCACHE_CONFIG) throw new ConfigError(`LTOCACHE_CONFIG names a missing file: ${configFile}`);
  }
  const raw: Record<string, unknown> = {};
  const origins = {} as Record<ConfigKey, Origin>;
  for (const key of Object.keys(ConfigShape) as ConfigKey[]) {
    const envValue = env[`LTOCACHE_${key.toUpperCase()}`];
    if (envValue !== undefined && envValue !== '') {
      raw[key] = envValue;
      origins[key] = 'env';
    } else if (key in fileValues) {
      raw[key] = fileValues[key];
      origins[key] = 'file';
    } else origins[key] = 'default';
  }
  const parsed = ConfigSchema.safeParse(raw);
  if (!parsed.success) {
    const msg = parsed.error.issues
      .map((i) => {
        const key = String(i.path[0]);
        const where = origins[key as ConfigKey] === 'env' ? `LTOCACHE_${key.toUpperCase()}` : `${configFile}: ${key}`;
        // The value as given, unless the message quotes it already; a secret is never echoed.
        const v = raw[key];
        const got = key === 'remote_token' || typeof v !== 'string' || i.message.includes(`'${v}'`) ? '' : ` (got '${v}')`;
        return `${where}: ${i.message}${got}`;
      })
      .join('; ');
    throw new ConfigError(`invalid configuration: ${msg}`);
  }
  // Read by the daemon, whose cwd is `/` when a job starts it: a relative or unreadable CA file
  // would otherwise stop it at start-up, after the configuration was accepted.
  const ca = parsed.data.remote_ca;
  if (ca !== '') {
    const where = origins.remote_ca === 'env' ? 'LTOCACHE_REMOTE_CA' : `${configFile}: remote_ca`;
    if (!isAbsolute(ca)) throw new ConfigError(`invalid configuration: ${where}: must be an absolute path (got '${ca}')`);
    try {
      readFileSync(ca);
    } catch (e) {
      throw new ConfigError(`invalid configuration: ${where}: cannot read the CA file: ${(e as Error).message}`);
    }
  }
  return { config: { ...parsed.data, dir, configFile }, origins };
}
