import { performance } from 'node:perf_hooks';
import { decodeTeamMemo } from '../../memo/teamMemo.js';
import { SCOPE_MAX_MEMOS, TEAM_MEMO_MAX_BYTES } from '../../protocol/limits.js';
import { type ErrorCode, encodeBinary, encodeMemoList } from '../../protocol/remote.js';
import type { EntryRecord } from '../../store/record.js';
import { errorMessage } from '../../util/errorMessage.js';
import { packBundle, unpackBundle } from '../bundle.js';
import type { AccessResult } from './accessLog.js';
import { CLOSE_CODES } from './closeCodes.js';
import type { Connection, PendingPut } from './connection.js';
import type { CounterName } from './serverCounters.js';
import type { ServerState } from './serverState.js';

function begin(c: Connection, id: number): void {
  c.active.add(id);
  c.working++;
}

/** Ends a request; while stopping, a connection with nothing left in progress is closed. */
function end(s: ServerState, c: Connection, id: number): void {
  c.active.delete(id);
  c.working--;
  c.lastActivity = Date.now();
  if (s.phase === 'stopping' && c.active.size === 0) c.close(CLOSE_CODES.goingAway, 'server shutting down');
  s.notify();
}

/** The largest bundle sent on a request: the server's limit, or the client's (`clientMax`, absent from older clients) if smaller. */
function bundleLimit(s: ServerState, clientMax: number | undefined): number {
  return Math.min(s.options.limits.maxBundleBytes, clientMax ?? Number.POSITIVE_INFINITY);
}

type ReadAnswer = { kind: 'hit'; entry: EntryRecord; bundle: Buffer } | { kind: 'miss'; result: AccessResult } | { kind: 'failed' };

/**
 * One key as `get` and `gets` read it: a hit with its bundle; a miss for an absent or corrupt
 * entry (dropped by the store) or one whose bundle is over `limit`; `failed` when the storage
 * itself could not be read. A shared storage that is briefly unreachable (a failover) answers
 * misses instead: the client compiles rather than count this server as failed, which another
 * server would not fix.
 */
async function readEntry(s: ServerState, key: string, limit: number): Promise<ReadAnswer> {
  const r = await s.store!.get(key);
  if (r.kind === 'hit') {
    const bundle = await packBundle(r.entry.record, r.entry.files);
    return bundle.length <= limit ? { kind: 'hit', entry: r.entry.record, bundle } : { kind: 'miss', result: 'miss-too-large' };
  }
  if (r.kind === 'error') {
    if (!r.corrupt && s.store!.kind !== 'redis') {
      s.options.log.warn('store read failed', { key, error: r.error });
      return { kind: 'failed' };
    }
    s.options.log.warn(r.corrupt ? 'corrupt entry dropped' : 'storage read failed; answered a miss', { key, error: r.error });
  }
  return { kind: 'miss', result: 'miss' };
}

/** `get`: a hit is sent as `hit` plus the bundle; readEntry's misses as `miss`; a storage failure as `error`. */
export function handleGet(s: ServerState, c: Connection, id: number, key: string, clientMax?: number): void {
  begin(c, id);
  const t0 = performance.now();
  const run = async () => {
    let result: AccessResult = 'miss';
    let bytes = 0;
    try {
      const a = await readEntry(s, key, bundleLimit(s, clientMax));
      if (a.kind === 'hit') {
        s.counters.bump('hits');
        s.counters.bump('bytes_served', a.bundle.length);
        result = 'hit';
        bytes = a.bundle.length;
        s.hold(c, a.bundle.length);
        await s.send(c, { type: 'hit', id, key, entry: a.entry, bundleBytes: a.bundle.length }, encodeBinary(id, a.bundle));
        s.hold(c, -a.bundle.length);
      } else if (a.kind === 'failed') {
        result = 'error';
        await s.send(c, { type: 'error', id, code: 'internal', message: 'the server could not read its store' });
      } else {
        result = a.result;
        s.counters.bump('misses');
        await s.send(c, { type: 'miss', id, key });
      }
    } catch (e) {
      result = 'error';
      s.options.log.error('get failed', { key, error: errorMessage(e) });
      await s.send(c, { type: 'error', id, code: 'internal', message: 'internal server error' });
    } finally {
      s.access({ op: 'get', token: c.token.name, key, result, bytes, ms: performance.now() - t0, remote: c.remote });
      end(s, c, id);
    }
  };
  void s.track(run());
}

/** Entries a `gets` reads at once: bounds what one request holds in memory beyond its reply. */
const GETS_PARALLEL = 8;

/**
 * `gets`: each key is read as by `get` (and logged and counted as one); the hits go out as one
 * `entries` reply and one binary message of at most bundleLimit bytes, text included. Keys past
 * that budget, and those the storage failed to read, are `later` (a `get` of its own tells the
 * client the error).
 */
export function handleGets(s: ServerState, c: Connection, id: number, keys: readonly string[], clientMax?: number): void {
  begin(c, id);
  const t0 = performance.now();
  const run = async () => {
    const limit = bundleLimit(s, clientMax);
    const hits: { key: string; entry: EntryRecord; bundleBytes: number }[] = [];
    const bundles: Buffer[] = [];
    const misses: string[] = [];
    const later: string[] = [];
    const results: [string, AccessResult, number][] = [];
    let used = 0;
    try {
      for (let i = 0; i < keys.length; i += GETS_PARALLEL) {
        const part = keys.slice(i, i + GETS_PARALLEL);
        if (used >= limit) {
          later.push(...part);
          continue;
        }
        const answers = await Promise.all(part.map((k) => readEntry(s, k, limit)));
        for (const [j, a] of answers.entries()) {
          const key = part[j]!;
          if (a.kind === 'failed') later.push(key);
          else if (a.kind === 'miss') {
            misses.push(key);
            results.push([key, a.result, 0]);
          } else {
            const size = a.bundle.length + JSON.stringify(a.entry).length + 64;
            if (used + size > limit) {
              later.push(key);
              continue;
            }
            used += size;
            hits.push({ key, entry: a.entry, bundleBytes: a.bundle.length });
            bundles.push(a.bundle);
            results.push([key, 'hit', a.bundle.length]);
          }
        }
      }
      const payload = Buffer.concat(bundles);
      s.counters.bump('hits', hits.length);
      s.counters.bump('misses', misses.length);
      s.counters.bump('bytes_served', payload.length);
      s.hold(c, payload.length);
      await s.send(c, { type: 'entries', id, hits, misses, later }, encodeBinary(id, payload));
      s.hold(c, -payload.length);
    } catch (e) {
      results.length = 0;
      for (const key of keys) results.push([key, 'error', 0]);
      s.options.log.error('gets failed', { keys: keys.length, error: errorMessage(e) });
      await s.send(c, { type: 'error', id, code: 'internal', message: 'internal server error' });
    } finally {
      const ms = performance.now() - t0;
      for (const [key, result, bytes] of results) s.access({ op: 'get', token: c.token.name, key, result, bytes, ms, remote: c.remote });
      end(s, c, id);
    }
  };
  void s.track(run());
}

/** The bundle of an accepted put: verified against the put's entry, then stored. */
export function handleBundle(s: ServerState, c: Connection, id: number, p: PendingPut, bundle: Buffer): void {
  c.working++;
  s.counters.bump('bytes_received', bundle.length);
  s.hold(c, bundle.length);
  const run = async () => {
    let result: AccessResult = 'stored';
    try {
      const reject = async (code: ErrorCode, text: string, counter: CounterName = 'rejected_bundles') => {
        result = code;
        s.counters.bump(counter);
        await s.send(c, { type: 'error', id, code, message: text });
      };
      if (bundle.length !== p.bundleBytes) return await reject('bad-bundle', `bundle is ${bundle.length} bytes; the put declared ${p.bundleBytes}`);
      const u = await unpackBundle(p.entry, bundle, s.options.limits);
      if (u.kind === 'rejected') return await reject('bad-bundle', u.reason);
      const r = await s.store!.put(p.key, { record: p.entry, files: u.files });
      if (r.kind === 'refused') return await reject('bad-bundle', r.reason);
      if (r.kind === 'error') {
        result = 'error';
        s.options.log.warn('store write failed', { key: p.key, error: r.error });
        return await s.send(c, { type: 'error', id, code: 'internal', message: 'the server could not write its store' });
      }
      s.counters.bump('puts');
      await s.send(c, { type: 'stored', id, key: p.key });
    } catch (e) {
      result = 'error';
      s.options.log.error('put failed', { key: p.key, error: errorMessage(e) });
      await s.send(c, { type: 'error', id, code: 'internal', message: 'internal server error' });
    } finally {
      s.hold(c, -bundle.length);
      s.access({ op: 'put', token: c.token.name, key: p.key, result, bytes: bundle.length, ms: performance.now() - p.t0, remote: c.remote });
      end(s, c, id);
    }
  };
  void s.track(run());
}

/** `admin reset-stats` and `admin clear` (the caller has checked the admin scope). */
export function handleAdmin(s: ServerState, c: Connection, id: number, what: 'reset-stats' | 'clear', op: string): void {
  begin(c, id);
  const t0 = performance.now();
  const run = async () => {
    let result: AccessResult = 'ok';
    try {
      if (what === 'reset-stats') await s.counters.reset();
      else await s.store!.clear();
      s.options.log.info(`admin ${what}`, { token: c.token.name, remote: c.remote });
      await s.send(c, { type: 'ok', id });
    } catch (e) {
      result = 'error';
      s.options.log.error(`admin ${what} failed`, { error: errorMessage(e) });
      await s.send(c, { type: 'error', id, code: 'internal', message: `admin ${what} failed` });
    } finally {
      s.access({ op, token: c.token.name, key: null, result, bytes: 0, ms: performance.now() - t0, remote: c.remote });
      end(s, c, id);
    }
  };
  void s.track(run());
}

/** `bad`: a client's verify found the entry wrong (the caller has checked the write scope): delete it, so no client is served it again. */
export function handleBad(s: ServerState, c: Connection, id: number, key: string, op: string): void {
  begin(c, id);
  const t0 = performance.now();
  const run = async () => {
    let result: AccessResult = 'ok';
    try {
      const r = await s.store!.delete(key);
      if (r.kind === 'error' || r.kind === 'refused') throw new Error(r.kind === 'error' ? r.error : r.reason);
      s.options.log.warn('entry reported bad by a client', { key, result: r.kind, token: c.token.name, remote: c.remote });
      await s.send(c, { type: 'ok', id });
    } catch (e) {
      result = 'error';
      s.options.log.error('bad report failed', { key, error: errorMessage(e) });
      await s.send(c, { type: 'error', id, code: 'internal', message: 'deleting the entry failed' });
    } finally {
      s.access({ op, token: c.token.name, key, result, bytes: 0, ms: performance.now() - t0, remote: c.remote });
      end(s, c, id);
    }
  };
  void s.track(run());
}

/**
 * `memo` (the caller has checked the write scope): a valid team memo is stored as the newest of
 * its (scope, lookup); an invalid one is answered `bad-message`, the connection stays usable.
 */
export function handleMemo(s: ServerState, c: Connection, id: number, scope: string, text: string, op: string): void {
  begin(c, id);
  const t0 = performance.now();
  const run = async () => {
    let result: AccessResult = 'stored';
    const memo = Buffer.from(text, 'base64');
    try {
      let lookup: string;
      try {
        // Buffer.from skips what is not base64; only text that is exactly the memo's encoding is taken.
        if (memo.toString('base64') !== text) throw new Error('memo is not base64');
        lookup = decodeTeamMemo(memo).lookup;
      } catch (e) {
        result = 'bad-message';
        s.counters.bump('rejected_memos');
        await s.send(c, { type: 'error', id, code: 'bad-message', message: `invalid team memo: ${errorMessage(e)}` });
        return;
      }
      const r = await s.store!.putMemo(scope, lookup, memo);
      if (r.kind === 'error') {
        result = 'error';
        s.options.log.warn('team memo write failed', { scope, error: r.error });
        await s.send(c, { type: 'error', id, code: 'internal', message: 'the server could not write its store' });
        return;
      }
      s.counters.bump('memos_stored');
      await s.send(c, { type: 'ok', id });
    } catch (e) {
      result = 'error';
      s.options.log.error('memo failed', { scope, error: errorMessage(e) });
      await s.send(c, { type: 'error', id, code: 'internal', message: 'internal server error' });
    } finally {
      s.access({ op, token: c.token.name, key: scope, result, bytes: memo.length, ms: performance.now() - t0, remote: c.remote });
      end(s, c, id);
    }
  };
  void s.track(run());
}

/**
 * `scope`: the scope's team memos as `memos` plus one binary message, at most SCOPE_MAX_MEMOS of
 * them and at most bundleLimit bytes of payload (memos past the first that does not fit are left
 * out). `complete` says none was left out: the storage is asked for one memo past the count limit
 * to know whether more exist.
 */
export function handleScope(s: ServerState, c: Connection, id: number, scope: string, op: string, clientMax?: number): void {
  begin(c, id);
  const t0 = performance.now();
  const run = async () => {
    let result: AccessResult = 'ok';
    let bytes = 0;
    try {
      const r = await s.store!.scopeMemos(scope, SCOPE_MAX_MEMOS + 1);
      if (r.kind === 'error') {
        result = 'error';
        s.options.log.warn('team memo read failed', { scope, error: r.error });
        await s.send(c, { type: 'error', id, code: 'internal', message: 'the server could not read its store' });
        return;
      }
      const max = bundleLimit(s, clientMax);
      const memos: Buffer[] = [];
      // More than the count limit came back: the storage may hold still more, so the list is not
      // known to be complete (even when values not sent leave the rest within the limit).
      let complete = r.memos.length <= SCOPE_MAX_MEMOS;
      for (const m of r.memos) {
        // A value no client would accept (planted in a shared storage) is not sent.
        if (m.length === 0 || m.length > TEAM_MEMO_MAX_BYTES) continue;
        if (memos.length >= SCOPE_MAX_MEMOS || bytes + 4 + m.length > max) {
          complete = false;
          break;
        }
        memos.push(m);
        bytes += 4 + m.length;
      }
      const payload = encodeMemoList(memos);
      s.counters.bump('memos_served', memos.length);
      s.hold(c, payload.length);
      await s.send(c, { type: 'memos', id, scope, count: memos.length, bundleBytes: payload.length, complete }, encodeBinary(id, payload));
      s.hold(c, -payload.length);
    } catch (e) {
      result = 'error';
      s.options.log.error('scope failed', { scope, error: errorMessage(e) });
      await s.send(c, { type: 'error', id, code: 'internal', message: 'internal server error' });
    } finally {
      s.access({ op, token: c.token.name, key: scope, result, bytes, ms: performance.now() - t0, remote: c.remote });
      end(s, c, id);
    }
  };
  void s.track(run());
}
