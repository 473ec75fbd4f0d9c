import { execFile } from 'node:child_process';
import type { BigIntStats } from 'node:fs';
import { open } from 'node:fs/promises';
import { dirname } from 'node:path';
import { promisify } from 'node:util';
import { asOpened } from '../util/asOpened.js';
import { isOpaque } from '../util/opaqueEnv.js';
import { nowNs, settledAt, statIdentity, statOrUndefined } from './fileDigests.js';
import { Uncacheable } from './uncacheable.js';

const run = promisify(execFile);

/** Environment variables that change which libraries the loader maps. */
export const LOADER_ENV = ['LD_LIBRARY_PATH', 'LD_PRELOAD'] as const;

/**
 * A path the loader's answer rests on besides the libraries it maps, with its stat identity when
 * traced ('-': absent). `dir`: a directory searched without success (an entry added to it changes
 * its identity), or the outermost absent directory above one. `file`: a file the loader tried and
 * rejected (another ELF class, unreadable): it may be accepted once it changes.
 */
export interface Watched {
  path: string;
  kind: 'dir' | 'file';
  state: string;
}

export interface LoaderTrace {
  /** Whether the traced program exited 0. */
  ok: boolean;
  /** Every library the loader maps (absolute paths as it names them), sorted. */
  libs: string[];
  /** Needed libraries it found nowhere. */
  missing: string[];
  /** What else decided where each library was found (see Watched). */
  watched: Watched[];
  /** The loader printed no search (not glibc's): `watched` is the fallback's, from LD_LIBRARY_PATH and RUNPATHs. */
  fallback: boolean;
}

/** Stat identity of a path ('-' when absent): what `Watched.state` records. */
export function watchState(st: BigIntStats | undefined): string {
  return st ? statIdentity(st) : '-';
}

/**
 * The path to watch for a directory the loader found absent: its outermost absent ancestor reached
 * by dropping plain components (nothing can appear below it unless it appears first). Components
 * `..` and `.` are never dropped: what they resolve to depends on the path before them.
 */
function outermostAbsent(dir: string): string {
  let p = dir;
  for (;;) {
    const i = p.lastIndexOf('/');
    const last = p.slice(i + 1);
    if (i <= 0 || last === '' || last === '.' || last === '..') return p;
    const up = p.slice(0, i);
    if (statOrUndefined(up)) return p;
    p = up;
  }
}

/**
 * Runs `exe args` the way ldd does (LD_TRACE_LOADED_OBJECTS=1: glibc's loader lists what it maps
 * and exits) with LD_DEBUG=libs, under which it prints each library search to stderr: `search
 * path=…`, then a `trying file=F` line per candidate until one loads. Every candidate that did not
 * load is watched through its directory, so a library that appears earlier on the search (in an
 * LD_LIBRARY_PATH or RUNPATH directory, or their `glibc-hwcaps/…`, `tls/…` subdirectories) changes
 * what is watched. Directories are stated after the run: one changed since shortly before it (the
 * racy window) may have changed during it, and then the trace stands for nothing (`racy-input`).
 * `cwd` is where relative names resolve (the job's, for a plugin named by a relative path); a
 * relative directory on the search makes it uncacheable (`environment`): it would resolve against
 * clang's working directory, which the trace does not key.
 */
export async function traceLoader(exe: string, args: string[], env: Record<string, string>, cwd?: string): Promise<LoaderTrace> {
  const loaderEnv: Record<string, string> = { LD_TRACE_LOADED_OBJECTS: '1', LD_DEBUG: 'libs', PATH: env.PATH ?? '/usr/bin:/bin' };
  for (const k of LOADER_ENV) if (env[k] !== undefined) loaderEnv[k] = env[k]!;
  for (const [k, v] of Object.entries(loaderEnv)) if (isOpaque(v)) throw new Uncacheable('environment', `${k} is not valid UTF-8`);
  const relativePreload = (env.LD_PRELOAD ?? '').split(/[ :]/).find((p) => p.includes('/') && !p.startsWith('/'));
  if (relativePreload !== undefined) throw new Uncacheable('environment', `LD_PRELOAD names ${relativePreload}: it resolves against clang's working directory`);
  const at = nowNs();
  let stdout = '';
  let stderr = '';
  let ok = true;
  try {
    ({ stdout, stderr } = await run(exe, args, { env: loaderEnv, timeout: 10_000, maxBuffer: 4 << 20, ...(cwd ? { cwd } : {}) }));
  } catch (e) {
    // A static executable runs for real and fails without inputs: it maps no libraries. Anything
    // else (it could not be started, it timed out) says nothing about what the loader maps.
    if (typeof (e as { code?: unknown }).code !== 'number') throw e;
    ok = false;
    stdout = String((e as { stdout?: string }).stdout ?? '');
    stderr = String((e as { stderr?: string }).stderr ?? '');
  }
  const libs = new Set<string>();
  const missing: string[] = [];
  let searchedFor = 0;
  for (const line of stdout.split('\n')) {
    const nf = /^\s*(\S+) => not found\s*$/.exec(line);
    if (nf) missing.push(nf[1]!);
    const m = /=> (\/.*?) \(0x[0-9a-f]+\)\s*$/.exec(line) ?? /^\s*(\/.*?) \(0x[0-9a-f]+\)\s*$/.exec(line);
    if (m) libs.add(m[1]!);
    // A needed name with a '/' that is not absolute: opened relative to the working directory.
    const rel = /^\s*([^/\s]\S*\/\S*) \(0x[0-9a-f]+\)\s*$/.exec(line);
    if (rel) throw new Uncacheable('environment', `the loader maps ${rel[1]}: it resolves against clang's working directory`);
    if (/^\s*[^/\s]+ => \//.test(line)) searchedFor++;
  }
  const tried: string[] = [];
  let debug = false;
  for (const line of stderr.split('\n')) {
    const m = /^\s*\d+:\s+trying file=(.*)$/.exec(line);
    if (m) tried.push(m[1]!);
    else if (/^\s*\d+:\s+find library=/.test(line)) debug = true;
  }
  const fallback = !debug && searchedFor > 0;
  const watched = fallback ? await fallbackWatched([...libs], exe, env) : triedWatched(tried, libs, cwd);
  for (const w of watched) {
    const st = statOrUndefined(w.path);
    if (st && !settledAt(st, at)) throw new Uncacheable('racy-input', `${w.path}, on the loader's search for ${exe}'s libraries, changed just now`);
  }
  return { ok, libs: [...libs].sort(), missing, watched, fallback };
}

/**
 * Watched paths for the candidates the loader tried (`tried`) that are not among `found`. A
 * relative candidate (an empty or relative LD_LIBRARY_PATH element) is the traced run's `cwd`'s;
 * one right in that directory is watched by itself, not through the directory, which a build
 * writes into all the time.
 */
function triedWatched(tried: string[], found: Set<string>, cwd?: string): Watched[] {
  const dirs = new Map<string, BigIntStats | undefined>();
  const files = new Map<string, BigIntStats | undefined>();
  const absent = new Set<string>();
  const seen = new Set<string>();
  for (const name of tried) {
    if (found.has(name)) continue;
    let f = name;
    if (!f.startsWith('/')) {
      if (!cwd) throw new Uncacheable('environment', `the loader searches a relative directory (${f}): it resolves against clang's working directory`);
      f = asOpened(cwd, name);
      if (dirname(f) === cwd) {
        files.set(f, statOrUndefined(f));
        continue;
      }
    }
    const st = statOrUndefined(f);
    if (st) files.set(f, st);
    const dir = dirname(f);
    if (seen.has(dir)) continue;
    seen.add(dir);
    const dst = statOrUndefined(dir);
    if (dst) dirs.set(dir, dst);
    else absent.add(outermostAbsent(dir));
  }
  const out: Watched[] = [];
  for (const [path, st] of dirs) out.push({ path, kind: 'dir', state: watchState(st) });
  // An absent directory right below a watched one needs no check of its own: creating it changes that one.
  for (const path of absent) if (!dirs.has(dirname(path))) out.push({ path, kind: 'dir', state: '-' });
  for (const [path, st] of files) out.push({ path, kind: 'file', state: watchState(st) });
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/**
 * Without the loader's account of its search (a libc other than glibc): every LD_LIBRARY_PATH
 * entry, every RUNPATH and RPATH directory of the executable and of each library (`$ORIGIN`
 * expanded), and each library's own directory, as directories. A RUNPATH token other than
 * `$ORIGIN` cannot be expanded without the loader: the toolchain cannot be identified.
 */
async function fallbackWatched(libs: string[], exe: string, env: Record<string, string>): Promise<Watched[]> {
  const dirs = new Set<string>();
  for (const d of (env.LD_LIBRARY_PATH ?? '').split(/[:;]/)) {
    if (d === '' && !env.LD_LIBRARY_PATH) continue;
    if (!d.startsWith('/')) throw new Uncacheable('environment', `LD_LIBRARY_PATH entry '${d}' is relative: it resolves against clang's working directory`);
    dirs.add(d);
  }
  for (const obj of [exe, ...libs]) {
    dirs.add(dirname(obj));
    const elf = await readElf(obj).catch(() => null);
    for (const entry of elf?.searchPaths ?? []) {
      const d = entry.replace(/\$ORIGIN(?![A-Za-z0-9_])|\$\{ORIGIN\}/g, dirname(obj));
      if (d.includes('$')) throw new Error(`cannot expand the RUNPATH entry ${entry} of ${obj} without the loader's account of its search`);
      if (!d.startsWith('/')) throw new Uncacheable('environment', `RUNPATH entry '${entry}' of ${obj} is relative: it resolves against clang's working directory`);
      dirs.add(d);
    }
  }
  return [...dirs].sort().map((path) => ({ path, kind: 'dir', state: watchState(statOrUndefined(path)) }));
}

/** What an ELF file tells the loader: its interpreter (PT_INTERP) and its DT_RUNPATH/DT_RPATH entries. */
export interface ElfLoading {
  interp?: string;
  searchPaths: string[];
}

const PT_LOAD = 1;
const PT_DYNAMIC = 2;
const PT_INTERP = 3;
const DT_STRTAB = 5n;
const DT_RPATH = 15n;
const DT_RUNPATH = 29n;

/** Reads the loading information of an ELF file (either class, either byte order); null when it is not ELF. */
export async function readElf(path: string): Promise<ElfLoading | null> {
  const fh = await open(path, 'r');
  try {
    const read = async (pos: number, len: number): Promise<Buffer> => {
      const b = Buffer.alloc(Math.min(len, 1 << 20));
      const { bytesRead } = await fh.read(b, 0, b.length, pos);
      return b.subarray(0, bytesRead);
    };
    const h = await read(0, 64);
    if (h.length < 52 || h.readUInt32BE(0) !== 0x7f454c46) return null;
    const is64 = h[4] === 2;
    const le = h[5] === 1;
    const u16 = (b: Buffer, o: number) => (le ? b.readUInt16LE(o) : b.readUInt16BE(o));
    const u32 = (b: Buffer, o: number) => (le ? b.readUInt32LE(o) : b.readUInt32BE(o));
    const word = (b: Buffer, o: number): bigint => (is64 ? (le ? b.readBigUInt64LE(o) : b.readBigUInt64BE(o)) : BigInt(u32(b, o)));
    const phoff = Number(word(h, is64 ? 0x20 : 0x1c));
    const phentsize = u16(h, is64 ? 0x36 : 0x2a);
    const phnum = u16(h, is64 ? 0x38 : 0x2c);
    const ph = await read(phoff, phentsize * phnum);
    const segs: { type: number; offset: number; vaddr: bigint; filesz: number }[] = [];
    for (let i = 0; i < phnum && (i + 1) * phentsize <= ph.length; i++) {
      const o = i * phentsize;
      segs.push({
        type: u32(ph, o),
        offset: Number(word(ph, o + (is64 ? 8 : 4))),
        vaddr: word(ph, o + (is64 ? 16 : 8)),
        filesz: Number(word(ph, o + (is64 ? 32 : 16))),
      });
    }
    const out: ElfLoading = { searchPaths: [] };
    const cString = (b: Buffer): string => {
      const end = b.indexOf(0);
      return b.subarray(0, end < 0 ? b.length : end).toString('utf8');
    };
    const interp = segs.find((s) => s.type === PT_INTERP);
    if (interp) out.interp = cString(await read(interp.offset, interp.filesz));
    const dyn = segs.find((s) => s.type === PT_DYNAMIC);
    if (!dyn) return out;
    const d = await read(dyn.offset, dyn.filesz);
    const entry = is64 ? 16 : 8;
    let strtab: bigint | undefined;
    const strings: bigint[] = [];
    for (let o = 0; o + entry <= d.length; o += entry) {
      const tag = word(d, o);
      if (tag === 0n) break;
      if (tag === DT_STRTAB) strtab = word(d, o + entry / 2);
      else if (tag === DT_RPATH || tag === DT_RUNPATH) strings.push(word(d, o + entry / 2));
    }
    if (strtab === undefined || !strings.length) return out;
    const seg = segs.find((s) => s.type === PT_LOAD && s.vaddr <= strtab && strtab < s.vaddr + BigInt(s.filesz));
    if (!seg) throw new Error(`${path}: DT_STRTAB outside every PT_LOAD`);
    const base = seg.offset + Number(strtab - seg.vaddr);
    for (const s of strings) out.searchPaths.push(...cString(await read(base + Number(s), 4096)).split(':'));
    return out;
  } finally {
    await fh.close();
  }
}
