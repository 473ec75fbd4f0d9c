import * as tar from 'tar-stream';
import { packedBytes } from '../../src/remote/bundle.js';

export type RawEntry = { name: string; type?: 'file' | 'symlink' | 'link' | 'directory'; data?: Buffer; linkname?: string };

/** A tar built entry by entry, with none of packBundle's guarantees: for hostile-bundle tests. */
export async function rawTar(entries: RawEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const done = packedBytes(pack);
  for (const e of entries) {
    await new Promise<void>((res, rej) => {
      const cb = (err?: Error | null) => (err ? rej(err) : res());
      if (e.type === 'symlink' || e.type === 'link') pack.entry({ name: e.name, type: e.type, linkname: e.linkname ?? '/etc/passwd' }, cb);
      else if (e.type === 'directory') pack.entry({ name: e.name, type: 'directory' }, cb);
      else pack.entry({ name: e.name, size: e.data!.length, type: 'file', mode: 0o644 }, e.data!, cb);
    });
  }
  pack.finalize();
  return done;
}
