import { readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseSize } from '../config/config.js';
import { CacheServer } from '../remote/server/cacheServer.js';
import { loadTokensFile } from '../remote/tokens.js';
import { Logger } from '../util/log.js';

const USAGE = `usage: ltocache serve (--dir DIR | --storage URL) --tokens FILE [options]
  --listen HOST:PORT     address to listen on (default 127.0.0.1:7717; port 0 picks one)
  --dir DIR              store directory, owned by this one process
  --storage URL          shared storage for any number of servers: redis://[USER:PASS@]HOST:PORT[/DB],
                         rediss://… (TLS), redis+cluster://HOST:PORT,HOST:PORT,… (Redis Cluster)
  --max-size SIZE        --dir size bound, e.g. 50G (default 10G; Redis: set maxmemory)
  --tokens FILE          tokens file: NAME SCOPE SECRET per line (required)
  --tls-cert FILE        PEM certificate chain; with --tls-key, serve wss://
  --tls-key FILE         PEM private key
  --access-log FILE      one JSON line per request (default DIR/access.log; none with --storage)
  --max-bundle SIZE      largest bundle accepted or served (default 64M)
  --max-streams N        requests in progress per connection (default 32)
  --idle-timeout SECONDS close connections idle this long (default 120)
GET /healthz, /readyz and /metrics (Prometheus) on the listen address.
SIGTERM/SIGINT stop gracefully; SIGHUP reloads the tokens file.`;

/** Every option of `serve` (each takes a value); the completions offer them all (test/unit/docs.test.ts). */
export const VALUE_FLAGS = ['listen', 'dir', 'storage', 'max-size', 'tokens', 'tls-cert', 'tls-key', 'access-log', 'max-bundle', 'max-streams', 'idle-timeout'] as const;
type Flag = (typeof VALUE_FLAGS)[number];

class UsageError extends Error {}

function parseArgs(argv: string[]): Partial<Record<Flag, string>> {
  const out: Partial<Record<Flag, string>> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--help' || a === '-h') throw new UsageError('');
    const m = /^--([a-z-]+)(?:=(.*))?$/s.exec(a);
    if (!m || !(VALUE_FLAGS as readonly string[]).includes(m[1]!)) throw new UsageError(`unknown argument '${a}'`);
    const flag = m[1] as Flag;
    let value = m[2];
    if (value === undefined) {
      value = argv[++i];
      if (value === undefined) throw new UsageError(`--${flag} needs a value`);
    }
    if (out[flag] !== undefined) throw new UsageError(`--${flag} given twice`);
    out[flag] = value;
  }
  return out;
}

/** `HOST:PORT`, `[V6]:PORT`. */
export function parseListen(text: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(text) ?? /^([^:[\]]+):(\d+)$/.exec(text);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) throw new UsageError(`--listen must be HOST:PORT (port 0-65535), got '${text}'`);
  return { host: m[1]!, port };
}

function positiveInt(flag: string, text: string): number {
  if (!/^\d+$/.test(text) || Number(text) < 1) throw new UsageError(`--${flag} must be a positive integer, got '${text}'`);
  return Number(text);
}

function size(flag: string, text: string): number {
  try {
    const n = parseSize(text);
    if (n < 1) throw new Error(`--${flag} must be positive`);
    return n;
  } catch (e) {
    throw new UsageError(`--${flag}: ${(e as Error).message}`);
  }
}

function readPem(flag: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (e) {
    throw new Error(`--${flag}: cannot read ${file}: ${(e as Error).message}`);
  }
}

/** Builds the server's options from the command line; throws UsageError or Error. */
function optionsFrom(argv: string[], log: Logger) {
  const a = parseArgs(argv);
  if (a.dir === undefined && a.storage === undefined) throw new UsageError('one of --dir and --storage is required');
  if (a.dir !== undefined && a.storage !== undefined) throw new UsageError('--dir and --storage exclude each other: give one');
  if (a.storage !== undefined && a['max-size'] !== undefined) throw new UsageError('--max-size applies to --dir; bound Redis with its maxmemory setting');
  if (!a.tokens) throw new UsageError('--tokens is required');
  if ((a['tls-cert'] === undefined) !== (a['tls-key'] === undefined)) throw new UsageError('--tls-cert and --tls-key go together');
  const dir = a.dir === undefined ? undefined : resolve(a.dir);
  const tokensFile = resolve(a.tokens);
  const { host, port } = parseListen(a.listen ?? '127.0.0.1:7717');
  const limits: Record<string, number> = {};
  if (a['max-bundle'] !== undefined) limits.maxBundleBytes = size('max-bundle', a['max-bundle']);
  if (a['max-streams'] !== undefined) limits.maxStreams = positiveInt('max-streams', a['max-streams']);
  if (a['idle-timeout'] !== undefined) limits.idleTimeoutMs = positiveInt('idle-timeout', a['idle-timeout']) * 1000;
  const tokens = loadTokensFile(tokensFile);
  try {
    if ((statSync(tokensFile).mode & 0o077) !== 0) log.warn('the tokens file is readable by group or others; chmod 600 it', { file: tokensFile });
  } catch {
    // Already read successfully above; a failing stat only loses the warning.
  }
  return {
    tokensFile,
    options: {
      ...(dir !== undefined ? { dir } : { storage: a.storage! }),
      host,
      port,
      ...(a['max-size'] !== undefined ? { maxBytes: size('max-size', a['max-size']) } : {}),
      tokens,
      ...(a['tls-cert'] !== undefined ? { tls: { cert: readPem('tls-cert', a['tls-cert']), key: readPem('tls-key', a['tls-key']!) } } : {}),
      accessLog: a['access-log'] !== undefined ? resolve(a['access-log']) : dir !== undefined ? join(dir, 'access.log') : null,
      limits,
      log,
    },
  };
}

/**
 * `ltocache serve`: runs the team-cache server until SIGTERM or SIGINT, then stops gracefully and
 * returns. Prints `listening on ws[s]://HOST:PORT` on stdout once it accepts connections.
 * Bad arguments exit 2; a start-up failure (tokens file, TLS files, store in use, port taken) exits 1.
 */
export async function runServe(argv: string[]): Promise<void> {
  const log = new Logger(null, 'info');
  let server: CacheServer;
  let tokensFile: string;
  try {
    const built = optionsFrom(argv, log);
    tokensFile = built.tokensFile;
    server = new CacheServer(built.options);
    await server.start();
  } catch (e) {
    if (e instanceof UsageError) {
      if (!e.message) {
        process.stdout.write(`${USAGE}\n`);
        process.exit(0);
      }
      process.stderr.write(`ltocache serve: ${e.message}\n${USAGE}\n`);
      process.exit(2);
    }
    process.stderr.write(`ltocache serve: ${(e as Error).message}\n`);
    process.exit(1);
  }
  process.stdout.write(`listening on ${server.url}\n`);

  let signals = 0;
  const onStop = (sig: NodeJS.Signals) => {
    signals++;
    if (signals > 1) {
      log.warn(`second ${sig}: exiting without waiting for requests in progress`);
      process.exit(1);
    }
    log.info(`${sig} received: finishing requests in progress`);
    void server.stop();
  };
  const onHup = () => {
    try {
      server.setTokens(loadTokensFile(tokensFile));
      log.info('tokens file reloaded', { file: tokensFile });
    } catch (e) {
      log.error('tokens file not reloaded; keeping the previous tokens', { error: (e as Error).message });
    }
  };
  process.on('SIGTERM', onStop);
  process.on('SIGINT', onStop);
  process.on('SIGHUP', onHup);
  await server.stopped;
  process.off('SIGTERM', onStop);
  process.off('SIGINT', onStop);
  process.off('SIGHUP', onHup);
}
