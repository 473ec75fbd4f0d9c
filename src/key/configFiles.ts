import { isUtf8 } from 'node:buffer';
import { execFile } from 'node:child_process';
import { dirname } from 'node:path';
import { asOpened, namesProcessFile } from '../util/asOpened.js';
import { spawnableEnv } from '../util/opaqueEnv.js';
import { readRegularFile } from '../util/readRegularFile.js';
import type { Token } from './parseJob.js';
import { tokenizeGnu } from './responseFile.js';
import { Uncacheable } from './uncacheable.js';

/** How deep `@file`s inside config files may nest, as for response files on the command line. */
const INCLUDE_DEPTH = 16;
/** Distinct command shapes whose config files are remembered (a build has a handful). */
const MAX_REMEMBERED = 256;
/** How long asking clang which config files it loads may take before the job is uncacheable. */
const ASK_TIMEOUT_MS = 20_000;

/**
 * Splits a clang config file into arguments as llvm::cl::tokenizeConfigFile does: a line whose
 * first non-blank character is `#` is a comment, a backslash at the end of a line joins the next
 * one, and each line is split the GNU way (tokenizeGnu).
 */
export function tokenizeConfigFile(text: string): string[] {
  const out: string[] = [];
  let i = 0;
  while (i < text.length) {
    const c = text[i]!;
    if (c === ' ' || c === '\t' || c === '\r' || c === '\n' || c === '\v' || c === '\f') {
      i++;
      continue;
    }
    if (c === '#') {
      while (i < text.length && text[i] !== '\n') i++;
      continue;
    }
    let line = '';
    let start = i;
    for (; i < text.length; i++) {
      if (text[i] === '\\' && i + 1 < text.length) {
        i++;
        if (text[i] === '\n' || (text[i] === '\r' && text[i + 1] === '\n')) {
          line += text.slice(start, i - 1);
          if (text[i] === '\r') i++;
          start = i + 1;
        }
      } else if (text[i] === '\n') break;
    }
    line += text.slice(start, i);
    out.push(...tokenizeGnu(line));
  }
  return out;
}

/** What the config files clang loads for a command add to it, as clang reads them. */
export interface ConfigExpansion {
  /** The config files clang loads, in order (absolute paths). */
  loaded: string[];
  /** Arguments placed before the command's own, in order. */
  head: string[];
  /** Every file read for them: the config files and the `@file`s they include (absolute paths). */
  files: { path: string; content: Buffer }[];
}

/** A job whose config files are asked for: the command as given and as parsed, and the toolchain's config files. */
export interface ConfigQuery {
  compiler: string;
  argv: readonly string[];
  tokens: readonly Token[];
  cwd: string;
  env: Record<string, string>;
  configDigests: readonly { path: string; digest: string }[];
}

/** Runs `compiler -### args` in `cwd` and returns its exit code and stderr. */
export type AskClang = (compiler: string, args: string[], cwd: string, env: Record<string, string>) => Promise<{ code: number; stderr: string }>;

const askClang: AskClang = (compiler, args, cwd, env) =>
  new Promise((done) => {
    execFile(compiler, ['-###', ...args], { cwd, env: spawnableEnv(env), timeout: ASK_TIMEOUT_MS, maxBuffer: 16 << 20, encoding: 'utf8' }, (err, _stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      done({ code, stderr });
    });
  });

/**
 * The config files a job runs under, expanded into the arguments clang takes from them (docs/key.md
 * "Config files"). Which files clang loads depends on its target triple, driver mode and
 * directories, worked out by rules that changed between releases; so clang itself is asked
 * (`-###` prints "Configuration file: PATH" for each), once per command shape: the command with its
 * input, index and output names left out, the compiler as given, its directory, and the config
 * files' digests (a new or edited config file changes the toolchain's identity, so the answer is
 * asked again). What cannot be expanded as clang would is uncacheable (`config-file`).
 */
export class ConfigFiles {
  private readonly loaded = new Map<string, Promise<string[]>>();
  /** Times clang was asked, for tests. */
  asked = 0;

  constructor(private readonly ask: AskClang = askClang) {}

  async expand(q: ConfigQuery): Promise<ConfigExpansion> {
    const paths = await this.loadedBy(q);
    const out: ConfigExpansion = { loaded: paths, head: [], files: [] };
    for (const p of paths) await include(p, 0, out);
    return out;
  }

  private loadedBy({ compiler, argv, tokens, cwd, env, configDigests }: ConfigQuery): Promise<string[]> {
    // The names of the job's own files do not choose config files; every other argument may.
    const shape = tokens.map((t) => (t.t === 'output' ? `\0out\0${t.v}` : t.t === 'file' && (t.role === 'input' || t.role === 'index') ? `\0${t.role}\0${t.v}` : t.v));
    const id = JSON.stringify([compiler, cwd, env.CLANG_NO_DEFAULT_CONFIG ?? null, configDigests, shape]);
    let p = this.loaded.get(id);
    if (!p) {
      if (this.loaded.size >= MAX_REMEMBERED) this.loaded.clear();
      this.asked++;
      p = this.ask(compiler, [...argv], cwd, env).then(({ code, stderr }) => {
        if (code !== 0) throw new Uncacheable('config-file', `clang -### exited with ${code} when asked which config files it loads`);
        const found: string[] = [];
        for (const line of stderr.split('\n')) if (line.startsWith('Configuration file: ')) found.push(asOpened(cwd, line.slice('Configuration file: '.length)));
        return found;
      });
      this.loaded.set(id, p);
      // A failure is not remembered: the next job of the shape asks again.
      p.catch(() => this.loaded.delete(id));
    }
    return p;
  }
}

/** Reads a config file (or an `@file` inside one) into `out`, as clang's ExpansionContext does for config files. */
async function include(path: string, depth: number, out: ConfigExpansion): Promise<void> {
  if (depth >= INCLUDE_DEPTH) throw new Uncacheable('config-file', `@files in config files nested deeper than ${INCLUDE_DEPTH}`);
  if (namesProcessFile(path)) throw new Uncacheable('process-file', `config file ${path} names a file through the process that opens it`);
  let content: Buffer | null;
  try {
    content = await readRegularFile(path);
  } catch {
    throw new Uncacheable('config-file', `cannot read config file ${path}`);
  }
  if (!content) throw new Uncacheable('config-file', `config file ${path} is not a regular file`);
  // A lossy decode would name other files than clang opens (it reads the bytes as they are).
  if (!isUtf8(content)) throw new Uncacheable('config-file', `config file ${path} is not valid UTF-8`);
  out.files.push({ path, content });
  const dir = dirname(path);
  for (const raw of tokenizeConfigFile(content.toString('utf8'))) {
    // `<CFGDIR>` stands for the directory of the file it is written in.
    const a = raw.replaceAll('<CFGDIR>', dir);
    if (a.startsWith('@') && a.length > 1) {
      await include(asOpened(dir, a.slice(1)), depth + 1, out);
      continue;
    }
    // Placed after the command's arguments by clang 20 and later, an input file to clang 19.
    if (a.startsWith('$')) throw new Uncacheable('config-file', `${path}: '${a}' is read differently by clang releases`);
    if (a === '--config' || a.startsWith('--config=') || a.startsWith('--config-') || a === '--no-default-config')
      throw new Uncacheable('config-file', `${path}: ${a} inside a config file`);
    out.head.push(a);
  }
}
