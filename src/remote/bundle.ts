import { Readable } from 'node:stream';
import * as tar from 'tar-stream';
import { hashBytes } from '../key/hash.js';
import type { EntryRecord } from '../store/record.js';

export interface BundleLimits {
  maxBundleBytes: number;
  maxEntries: number;
}

export type Unpacked = { kind: 'ok'; files: Map<string, Buffer> } | { kind: 'rejected'; reason: string };

/** The bytes a tar-stream pack produces, once it is finalized. */
export function packedBytes(pack: tar.Pack): Promise<Buffer> {
  const chunks: Buffer[] = [];
  return new Promise<Buffer>((res, rej) => {
    pack.on('data', (c: unknown) => chunks.push(c as Buffer));
    pack.on('end', () => res(Buffer.concat(chunks)));
    pack.on('error', rej);
  });
}

const BLOCK = 512;
const pad = (n: number) => (BLOCK - (n % BLOCK)) % BLOCK;

/** tar-stream's octal field: zero-padded digits and a space. */
function writeOct(buf: Buffer, off: number, value: number, digits: number): void {
  buf.write(`${value.toString(8).padStart(digits, '0')} `, off, 'latin1');
}

function checksum(h: Buffer): number {
  let sum = 8 * 32;
  for (let i = 0; i < 148; i++) sum += h[i]!;
  for (let i = 156; i < BLOCK; i++) sum += h[i]!;
  return sum;
}

/**
 * Packs an entry's files into a tar bundle: regular files only, named by the record, in one
 * buffer. The bytes are those tar-stream's packer writes for the same entries (ustar headers,
 * mode 0644, mtime 0, two zero blocks at the end).
 */
export async function packBundle(record: EntryRecord, files: Map<string, Buffer>): Promise<Buffer> {
  let total = 2 * BLOCK;
  for (const o of record.outputs) {
    const data = files.get(o.name);
    if (!data) throw new Error(`bundle: no data for output ${o.name}`);
    if (Buffer.byteLength(o.name) !== o.name.length || o.name.length > 100) throw new Error(`bundle: output name ${o.name} does not fit a ustar header`);
    if (data.length > 0o77777777777) throw new Error(`bundle: output ${o.name} is too large for a ustar header`);
    total += BLOCK + data.length + pad(data.length);
  }
  const out = Buffer.alloc(total);
  let off = 0;
  for (const o of record.outputs) {
    const data = files.get(o.name)!;
    const h = out.subarray(off, off + BLOCK);
    h.write(o.name, 0, 'latin1');
    writeOct(h, 100, 0o644, 6);
    writeOct(h, 108, 0, 6);
    writeOct(h, 116, 0, 6);
    writeOct(h, 124, data.length, 11);
    writeOct(h, 136, 0, 11);
    h[156] = 0x30;
    h.write('ustar\u000000', 257, 'latin1');
    writeOct(h, 329, 0, 6);
    writeOct(h, 337, 0, 6);
    writeOct(h, 148, checksum(h), 6);
    data.copy(out, off + BLOCK);
    off += BLOCK + data.length + pad(data.length);
  }
  return out;
}

/** A header field: its bytes up to the first NUL. */
function field(h: Buffer, start: number, len: number): string {
  const end = h.indexOf(0, start);
  return h.toString('latin1', start, end === -1 || end > start + len ? start + len : end);
}

/** An octal number field as tar-stream's packer writes it (digits, then space or NUL); null for anything else. */
function octal(h: Buffer, start: number, len: number): number | null {
  const m = /^([0-7]{1,11})[ \0]*$/.exec(h.toString('latin1', start, start + len));
  return m ? Number.parseInt(m[1]!, 8) : null;
}

/**
 * The bundles this code packs, checked without streams or copies: every header a plain ustar
 * regular file (no pax, no prefix, checksum right), each a declared name once with its declared
 * size and digest, then only zero bytes. Returns null for anything else, and the full checker
 * decides; so this path accepts a subset of what it accepts, never more.
 */
function unpackSimple(declared: Map<string, { size: number; digest: string }>, bundle: Buffer, maxEntries: number): Map<string, Buffer> | null {
  const files = new Map<string, Buffer>();
  let off = 0;
  while (files.size < declared.size) {
    if (off + BLOCK > bundle.length || files.size >= maxEntries) return null;
    const h = bundle.subarray(off, off + BLOCK);
    if (h[156] !== 0x30 || h.toString('latin1', 257, 265) !== 'ustar\u000000' || h[345] !== 0) return null;
    const sum = octal(h, 148, 8);
    if (sum === null || sum !== checksum(h)) return null;
    const name = field(h, 0, 100);
    const o = declared.get(name);
    const size = octal(h, 124, 12);
    if (!o || files.has(name) || size !== o.size) return null;
    const start = off + BLOCK;
    if (start + size > bundle.length) return null;
    const data = bundle.subarray(start, start + size);
    if (hashBytes(data) !== o.digest) return null;
    files.set(name, data);
    off = start + size + pad(size);
  }
  for (let i = off; i < bundle.length; i++) if (bundle[i] !== 0) return null;
  return files;
}

/**
 * Checks a bundle against the record that declares it, on arrival and in both directions: only
 * the declared names, each once, as plain regular files (no paths, links, devices or directories),
 * with the declared sizes and content digests, within the limits. Anything else is rejected whole.
 * The files of an `ok` are views into `bundle` when it came in the shape packBundle writes.
 */
export async function unpackBundle(record: EntryRecord, bundle: Buffer, limits: BundleLimits): Promise<Unpacked> {
  if (bundle.length > limits.maxBundleBytes) return { kind: 'rejected', reason: `bundle of ${bundle.length} bytes exceeds ${limits.maxBundleBytes}` };
  const declared = new Map(record.outputs.map((o) => [o.name, o]));
  if (declared.size !== record.outputs.length) return { kind: 'rejected', reason: 'record declares a name twice' };
  const simple = unpackSimple(declared, bundle, limits.maxEntries);
  if (simple) return { kind: 'ok', files: simple };
  const files = new Map<string, Buffer>();
  const extract = tar.extract();
  let reason: string | null = null;
  let count = 0;
  const finished = new Promise<void>((res) => {
    extract.on('entry', (header, stream, next) => {
      const chunks: Buffer[] = [];
      let size = 0;
      // tar-stream destroys the entry stream with the archive's error (e.g. a tar truncated
      // mid-entry); unheard, that error would be an uncaught exception.
      stream.on('error', (e: Error) => {
        reason ??= `malformed tar: ${e.message}`;
      });
      const reject = (why: string) => {
        reason ??= why;
        // The bundle is rejected whole: stop reading it. (Waiting for this entry's 'end' hung
        // forever on a directory entry with a non-zero size: tar-stream never ends that stream.)
        extract.destroy();
      };
      count++;
      if (count > limits.maxEntries) return reject(`more than ${limits.maxEntries} entries`);
      if (header.type !== 'file') return reject(`entry ${JSON.stringify(header.name)} is a ${header.type}, not a regular file`);
      const o = declared.get(header.name);
      if (!o) return reject(`entry ${JSON.stringify(header.name)} is not declared by the record`);
      if (files.has(header.name)) return reject(`entry ${JSON.stringify(header.name)} appears twice`);
      if (header.size !== o.size) return reject(`entry ${header.name}: header size ${header.size}, declared ${o.size}`);
      stream.on('data', (chunk: unknown) => {
        const c = chunk as Buffer;
        size += c.length;
        if (size <= o.size) chunks.push(c);
      });
      stream.on('end', () => {
        const data = Buffer.concat(chunks);
        if (size !== o.size) reason ??= `entry ${header.name}: ${size} bytes, declared ${o.size}`;
        else if (hashBytes(data) !== o.digest) reason ??= `entry ${header.name}: content does not match its declared digest`;
        else files.set(header.name, data);
        next();
      });
    });
    extract.on('finish', () => res());
    extract.on('close', () => res());
    extract.on('error', (e: Error) => {
      reason ??= `malformed tar: ${e.message}`;
      res();
    });
  });
  Readable.from([bundle]).pipe(extract);
  await finished;
  if (reason) return { kind: 'rejected', reason };
  for (const name of declared.keys()) if (!files.has(name)) return { kind: 'rejected', reason: `declared output ${name} is missing from the bundle` };
  return { kind: 'ok', files };
}
