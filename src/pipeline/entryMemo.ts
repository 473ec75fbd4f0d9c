import type { Memo, MemoCheck, MemoOutput } from '../memo/memoFormat.js';
import type { StoredEntry } from '../store/backend.js';
import type { EntryRecord } from '../store/record.js';
import { asOpened } from '../util/asOpened.js';

/** A job's outputs: role → path as written (relative to cwd or absolute). */
export type Outputs = { role: string; path: string }[];

const EMPTY = Buffer.alloc(0);

/** A record's stdout or stderr; the usual empty one costs no decoding. Callers only read it. */
export function fromBase64(text: string): Buffer {
  return text === '' ? EMPTY : Buffer.from(text, 'base64');
}

/** A memo's outputs: each of the job's output paths with its blob in `record`; null if one has none. */
export function memoOutputsOf(record: EntryRecord, outputs: Outputs, cwd: string): MemoOutput[] | null {
  const byRole = new Map(record.outputs.map((o) => [o.name, o]));
  const out: MemoOutput[] = [];
  for (const o of outputs) {
    const rec = byRole.get(o.role);
    if (!rec) return null;
    out.push({ path: asOpened(cwd, o.path), digest: rec.digest, size: rec.size });
  }
  return out;
}

/** The memo of an entry served for these outputs under `key` and `checks`; null if an output has no blob in it. */
export function entryMemo(key: string, checks: MemoCheck[], record: EntryRecord, outputs: Outputs, cwd: string): Memo | null {
  const memoOutputs = memoOutputsOf(record, outputs, cwd);
  return memoOutputs && { key, checks, outputs: memoOutputs, stdout: fromBase64(record.stdout), stderr: fromBase64(record.stderr) };
}

export function entryBytes(e: Pick<StoredEntry, 'record'>): number {
  return e.record.outputs.reduce((n, o) => n + o.size, 0);
}
