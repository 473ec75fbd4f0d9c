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

/** Packs an entry's files into a tar bundle: regular files only, named by the record. */
export async function packBundle(record: EntryRecord, files: Map<string, Buffer>): Promise<Buffer> {
  const pack = tar.pack();
  const done = packedBytes(pack);
  for (const o of record.outputs) {
    const data = files.get(o.name);
    if (!data) throw new Error(`bundle: no data for output ${o.name}`);
    await new Promise<void>((res, rej) => pack.entry({ name: o.name, size: data.length, mode: 0o644, mtime: new Date(0), type: 'file' }, data, (e) => (e ? rej(e) : res())));
  }
  pack.finalize();
  return done;
}

/**
 * Checks a bundle against the record that declares it, on arrival and in both directions: only
 * the declared names, each once, as plain regular files (no paths, links, devices or directories),
 * with the declared sizes and content digests, within the limits. Anything else is rejected whole.
 */
export async function unpackBundle(record: EntryRecord, bundle: Buffer, limits: BundleLimits): Promise<Unpacked> {
  if (bundle.length > limits.maxBundleBytes) return { kind: 'rejected', reason: `bundle of ${bundle.length} bytes exceeds ${limits.maxBundleBytes}` };
  const declared = new Map(record.outputs.map((o) => [o.name, o]));
  if (declared.size !== record.outputs.length) return { kind: 'rejected', reason: 'record declares a name twice' };
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
