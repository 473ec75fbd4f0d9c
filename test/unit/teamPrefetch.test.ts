import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { FileDigests } from '../../src/key/fileDigests.js';
import { hashBytes, initHash } from '../../src/key/hash.js';
import { decodeMemo, lookupDigest } from '../../src/memo/memoFormat.js';
import { encodeTeamMemo, scopeDigest } from '../../src/memo/teamMemo.js';
import { decodeTeamPack } from '../../src/memo/teamPack.js';
import { type PackedEntry, TeamPrefetch } from '../../src/pipeline/teamPrefetch.js';
import { Counters } from '../../src/stats/counters.js';
import type { TieredLookup } from '../../src/store/policies.js';
import { tempDir } from '../support/env.js';

await initHash();

const dirs: string[] = [];
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

const silent = { info() {}, warn() {} };
/** Any executable that exists: the scope names its resolved path. */
const COMPILER = process.execPath;

/**
 * TeamPrefetch against a stub team tier (the LLVM-free tier): one scope request per scope, each
 * memo claimed once, a memo that does not hold here counted, an invalid one rejected, entries
 * fetched ahead only once a claimed memo's entry came from the team cache, while the memos are
 * checked, and packed only for memos that hold here.
 */
function setup(isLocal?: (key: string) => Promise<boolean>, packWrite?: () => Promise<void>, adoptHook?: () => Promise<void>, fetchSlack?: number, getDelayMs = 0) {
  const tree = () => {
    const d = tempDir('prefetch');
    dirs.push(d);
    for (const m of ['a', 'b', 'c']) fs.writeFileSync(join(d, `${m}.o`), `bitcode of ${m}`);
    return d;
  };
  const cwd = tree();
  const args = (m: string) => ['-c', '-o', `${m}.native.o`, `${m}.o`];
  /** Keys differ between trees (another tree, another job). */
  const key = (m: string, at = cwd) => hashBytes(Buffer.from(`key of ${m}${at === cwd ? '' : ` in ${at}`}`));
  const memo = (m: string, digestOf = m, at = cwd) =>
    encodeTeamMemo({
      lookup: lookupDigest(COMPILER, at, args(m)),
      key: key(m, at),
      checks: [{ kind: 'content', path: join(at, `${m}.o`), size: `bitcode of ${digestOf}`.length, digest: hashBytes(Buffer.from(`bitcode of ${digestOf}`)) }],
      outputs: [{ role: 'obj', path: join(at, `${m}.native.o`), digest: hashBytes(Buffer.from('obj')), size: 3 }],
      stdout: Buffer.alloc(0),
      stderr: Buffer.alloc(0),
    });
  const scopes: string[] = [];
  const gets: string[] = [];
  let list: Buffer[] = [];
  /** Whether the team cache says its lists are complete. */
  let complete = true;
  /** Lists by scope, where one is set; else `list`. */
  const lists = new Map<string, Buffer[]>();
  const counters = new Counters();
  const packs: { pieces: Buffer[]; keys: readonly string[] }[] = [];
  const adopted: PackedEntry[] = [];
  let removed = 0;
  const p = new TeamPrefetch({
    pack: {
      write: async (pieces, keys) => {
        await packWrite?.();
        packs.push({ pieces, keys });
      },
      remove: async () => void removed++,
      adopt: async (e) => {
        await adoptHook?.();
        adopted.push(e);
      },
    },
    adoptAfterMs: 150,
    ...(isLocal ? { isLocal } : {}),
    ...(fetchSlack !== undefined ? { fetchSlack } : {}),
    scopeMemos: async (scope) => {
      scopes.push(scope);
      return { memos: lists.get(scope) ?? list, complete };
    },
    getEntry: async (k): Promise<TieredLookup> => {
      gets.push(k);
      if (getDelayMs) await new Promise((r) => setTimeout(r, getDelayMs));
      return {
        kind: 'hit',
        tier: 'remote',
        entry: {
          record: {
            v: 1,
            outputs: [{ name: 'obj', digest: hashBytes(Buffer.from('obj')), size: 3 }],
            stdout: '',
            stderr: Buffer.from('warning\n').toString('base64'),
            exitCode: 0,
            compileMs: 1,
            createdAt: 0,
          },
          files: new Map([['obj', Buffer.from('obj')]]),
        },
      };
    },
    files: new FileDigests(),
    counters,
    log: silent,
  });
  const req = (m: string, at = cwd) => ({ compiler: COMPILER, cwd: at, args: args(m) });
  return {
    cwd,
    tree,
    p,
    req,
    key,
    memo,
    scopes,
    gets,
    counters,
    packs,
    adopted,
    removed: () => removed,
    setList: (l: Buffer[], isComplete = true) => {
      list = l;
      complete = isComplete;
    },
    setScopeList: (at: string, l: Buffer[]) => lists.set(scopeDigest(COMPILER, fs.realpathSync(COMPILER), at), l),
  };
}

test('one scope request per scope; each memo claimed once; unusable and invalid memos counted', async () => {
  const t = setup();
  const stale = t.memo('b', 'an older b');
  const invalid = Buffer.concat([t.memo('c').subarray(0, 60), Buffer.from('junk')]);
  t.setList([t.memo('a'), stale, invalid, Buffer.from('short')]);
  let fetching = 0;
  const onFetch = () => void fetching++;
  const a = await t.p.claim(t.req('a'), onFetch);
  assert.equal(a?.memo.key, t.key('a'));
  assert.equal(a?.roles[0], 'obj');
  assert.equal(await t.p.claim(t.req('a'), onFetch), null, 'a memo is claimed once');
  assert.equal(await t.p.claim(t.req('b'), onFetch), null, 'a memo whose input differs here');
  assert.equal(await t.p.claim(t.req('c'), onFetch), null, 'an invalid memo');
  assert.deepEqual(t.scopes, [scopeDigest(COMPILER, fs.realpathSync(COMPILER), t.cwd)], 'the scope was asked for once');
  assert.equal(fetching, 1, 'told once, by the claim that asked for the scope');
  assert.equal(t.counters.get('team_memos_unusable'), 1);
  assert.equal(t.counters.get('team_memos_rejected'), 2, 'the invalid memo, and the one too short to name a lookup');
  t.p.forget();
  t.setList([]);
  assert.equal(await t.p.claim(t.req('a'), onFetch), null);
  assert.equal(t.scopes.length, 2, 'forgotten: asked for again');
  assert.equal(fetching, 2);
});

test('a command lacks its team memo only when missing from a complete list: a cut list (or one not said complete) may hold it', async () => {
  const complete = setup();
  complete.setList([complete.memo('a')]);
  assert.equal(complete.p.lacks(complete.req('b')), false, 'not asked yet');
  await complete.p.claim(complete.req('c'));
  assert.equal(complete.p.lacks(complete.req('b')), true, 'missing from the complete list');
  assert.equal(complete.p.lacks(complete.req('a')), false, 'in the list');
  assert.ok(await complete.p.claim(complete.req('a')));
  assert.equal(complete.p.lacks(complete.req('a')), false, 'claimed');
  complete.p.forget();

  const cut = setup();
  cut.setList([cut.memo('a')], false);
  await cut.p.claim(cut.req('c'));
  assert.equal(cut.scopes.length, 1, 'the scope was answered');
  assert.equal(cut.p.lacks(cut.req('b')), false, 'missing from a list that may have been cut');
  assert.ok(await cut.p.claim(cut.req('a')), 'its memos are still used');
  cut.p.forget();
});

test('entries are fetched ahead only after a team-cache hit, while their memos are checked', async () => {
  const t = setup();
  t.setList([t.memo('a'), t.memo('b', 'an older b'), t.memo('c')]);
  const a = await t.p.claim(t.req('a'));
  assert.ok(a);
  assert.deepEqual(t.gets, [], 'nothing fetched before the first team-cache hit');
  t.p.fromTeam(t.req('a'));
  for (let i = 0; i < 50 && t.gets.length < 2; i++) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(t.gets, [t.key('b'), t.key('c')], "a was claimed already; b's entry is fetched before its memo fails here");
  assert.deepEqual(t.packs[0]?.keys, [t.key('c')], 'only the memo that holds is packed');
  const c = await t.p.claim(t.req('c'));
  assert.ok(c?.entry, "c's entry comes with its claim");
  assert.equal((await c.entry).kind, 'hit');
  t.p.forget();
});

test('entries fetched ahead go into one team pack; a job arriving meanwhile takes its entry being fetched; the pack is adopted once quiet', async () => {
  const t = setup();
  fs.writeFileSync(join(t.cwd, 'd.o'), 'bitcode of d');
  fs.writeFileSync(join(t.cwd, 'e.o'), 'bitcode of e');
  t.setList([t.memo('a'), t.memo('b', 'an older b'), t.memo('c'), t.memo('d'), t.memo('e')]);
  assert.ok(await t.p.claim(t.req('a')));
  t.p.fromTeam(t.req('a'));
  // c's job reaches the daemon while its entry is being fetched ahead: it takes that fetch, none of its own.
  const c = await t.p.claim(t.req('c'));
  assert.equal(c?.memo.key, t.key('c'));
  assert.ok(c?.entry);
  for (let i = 0; i < 50 && !t.packs.length; i++) await sleep(10);
  assert.deepEqual([...t.gets].sort(), ['b', 'c', 'd', 'e'].map((m) => t.key(m)).sort(), 'each entry fetched once; a was claimed');
  assert.equal(t.packs.length, 1);
  assert.deepEqual([...t.packs[0]!.keys].sort(), [t.key('d'), t.key('e')].sort(), 'b does not hold here; c was claimed');
  const pack = decodeTeamPack(Buffer.concat(t.packs[0]!.pieces));
  assert.equal(pack.blobs.size, 1, 'one blob, stored once');
  for (const m of ['d', 'e']) {
    const memo = decodeMemo(pack.memos.get(lookupDigest(COMPILER, t.cwd, t.req(m).args))!);
    assert.equal(memo.key, t.key(m));
    assert.deepEqual(memo.outputs, [{ path: join(t.cwd, `${m}.native.o`), digest: hashBytes(Buffer.from('obj')), size: 3 }]);
    assert.equal(memo.stderr.toString(), 'warning\n', "the entry's stderr");
    assert.ok(
      memo.checks.some((k) => 'path' in k && k.path === join(t.cwd, `${m}.o`)),
      'the localised checks',
    );
  }
  assert.equal(t.counters.get('team_pack_entries'), 2);
  assert.equal(t.counters.get('remote_hits'), 3, "c's claimed entry and the two packed; b's, fetched for nothing, is not a hit");
  assert.equal(t.p.packedMemo(lookupDigest(COMPILER, t.cwd, t.req('d').args))?.key, t.key('d'));
  // Fast-path hits keep coming: not adopted yet.
  for (let i = 0; i < 4; i++) {
    await sleep(60);
    t.p.touch();
  }
  assert.equal(t.adopted.length, 0, 'adopted only once quiet');
  await sleep(250);
  await t.p.adopted();
  assert.deepEqual(t.adopted.map((e) => e.memo.key).sort(), [t.key('d'), t.key('e')].sort());
  assert.equal(t.removed(), 1, 'the pack removed once adopted');
  assert.equal(t.counters.get('team_pack_adopted'), 2);
  assert.equal(t.p.packedMemo(lookupDigest(COMPILER, t.cwd, t.req('d').args)), undefined);
  t.p.forget();
});

test('the first claim whose entry is not here starts fetching ahead at once, its own entry among the rest', async () => {
  const asked: string[] = [];
  const t = setup(async (k) => {
    asked.push(k);
    return false;
  });
  t.setList([t.memo('a'), t.memo('c')]);
  const a = await t.p.claim(t.req('a'));
  assert.deepEqual(asked, [t.key('a')], "one look at the local store, for the first claim's key");
  assert.ok(a?.entry, 'the first job is handed its entry fetched ahead');
  assert.deepEqual([...t.gets].sort(), [t.key('a'), t.key('c')].sort());
  assert.equal(t.packs.length, 1, 'packed without any fromTeam');
  await t.p.claim(t.req('c'));
  assert.equal(asked.length, 1, 'asked once per fetch of the scope');
  t.p.forget();

  const local = setup(async () => true);
  local.setList([local.memo('a'), local.memo('c')]);
  assert.ok(await local.p.claim(local.req('a')));
  assert.deepEqual(local.gets, [], 'an entry already here: nothing fetched ahead');
  local.p.forget();
});

test('a pack that cannot be written (a full disk): the jobs are still handed the entries fetched ahead', async () => {
  const t = setup(undefined, async () => {
    throw new Error('ENOSPC: no space left on device');
  });
  t.setList([t.memo('a'), t.memo('c')]);
  assert.ok(await t.p.claim(t.req('a')));
  t.p.fromTeam(t.req('a'));
  const c = await t.p.claim(t.req('c'));
  assert.equal((await c?.entry)?.kind, 'hit', "c's entry, fetched ahead");
  assert.deepEqual(t.gets, [t.key('c')], 'fetched once');
  assert.equal(t.packs.length, 0);
  assert.equal(t.counters.get('team_pack_entries'), 0);
  await new Promise((r) => setTimeout(r, 250));
  assert.equal(t.adopted.length, 0, 'nothing to adopt');
  t.p.forget();
});

test('jobs wait for fetching ahead only for a while: past it they fetch their own entry', async () => {
  const t = setup();
  const names = Array.from({ length: 40 }, (_, i) => `m${i}`);
  for (const m of names) fs.writeFileSync(join(t.cwd, `${m}.o`), `bitcode of ${m}`);
  const slowGets: string[] = [];
  const p = new TeamPrefetch({
    scopeMemos: async () => ({ memos: names.map((m) => t.memo(m)), complete: true }),
    // Slow enough that the last memos' entries are not begun within the jobs' patience.
    getEntry: async (k): Promise<TieredLookup> => {
      slowGets.push(k);
      await new Promise((r) => setTimeout(r, 400));
      return { kind: 'miss' };
    },
    isLocal: async () => false,
    aheadWaitMs: 150,
    files: new FileDigests(),
    counters: new Counters(),
    log: silent,
  });
  const t0 = performance.now();
  const first = await p.claim(t.req('m0'));
  assert.ok(first?.entry, 'the first job is handed the entry fetched ahead with the rest');
  const last = await p.claim(t.req('m39'));
  const ms = performance.now() - t0;
  assert.ok(last && !last.entry, 'not reached by the batch in time: the job fetches its own');
  assert.ok(ms < 700, `the jobs waited ${ms.toFixed(0)} ms in all, not for the whole batch (two rounds of 400 ms)`);
  await new Promise((r) => setTimeout(r, 900));
  assert.ok(slowGets.includes(t.key('m38')), 'the batch went on past the first 32');
  assert.ok(!slowGets.includes(t.key('m39')), 'the batch does not fetch an entry claimed meanwhile');
  p.forget();
});

test('a stopping daemon adopts the pack at once; past its bound the rest is dropped with the file', async () => {
  const t = setup();
  t.setList([t.memo('a'), t.memo('c')]);
  assert.ok(await t.p.claim(t.req('a')));
  t.p.fromTeam(t.req('a'));
  for (let i = 0; i < 100 && !t.packs.length; i++) await sleep(10);
  assert.equal(t.packs.length, 1);
  await t.p.adoptNow(5000);
  assert.deepEqual(
    t.adopted.map((e) => e.memo.key),
    [t.key('c')],
    'adopted without waiting for the quiet time',
  );
  assert.equal(t.removed(), 1, 'the pack removed once adopted');
  await t.p.adoptNow(5000);
  assert.equal(t.adopted.length, 1, 'nothing more to adopt');
  t.p.forget();

  // Each adoption takes 300 ms: past a 100 ms bound the pack is dropped, the store gets no more.
  const slow = setup(undefined, undefined, async () => {
    await sleep(300);
  });
  fs.writeFileSync(join(slow.cwd, 'd.o'), 'bitcode of d');
  slow.setList([slow.memo('a'), slow.memo('c'), slow.memo('d')]);
  assert.ok(await slow.p.claim(slow.req('a')));
  slow.p.fromTeam(slow.req('a'));
  for (let i = 0; i < 100 && !slow.packs.length; i++) await sleep(10);
  assert.deepEqual([...slow.packs[0]!.keys].sort(), [slow.key('c'), slow.key('d')].sort());
  const t0 = performance.now();
  await slow.p.adoptNow(100);
  const ms = performance.now() - t0;
  assert.ok(ms < 500, `stopped after the entry being adopted (${ms.toFixed(0)} ms)`);
  assert.equal(slow.adopted.length, 1, 'the entry under way finished; the other was not begun');
  assert.equal(slow.removed(), 1, 'the pack file dropped');
  assert.equal(slow.p.packedMemo(lookupDigest(COMPILER, slow.cwd, slow.req('d').args)), undefined);
  await sleep(400);
  assert.equal(slow.adopted.length, 1, 'no adoption afterwards');
  slow.p.forget();
});

test('a cleared store drops the pack unadopted', async () => {
  const t = setup();
  t.setList([t.memo('a'), t.memo('c')]);
  assert.ok(await t.p.claim(t.req('a')));
  t.p.fromTeam(t.req('a'));
  for (let i = 0; i < 100 && !t.packs.length; i++) await sleep(10);
  assert.equal(t.packs.length, 1);
  t.p.forget();
  assert.equal(t.removed(), 1);
  await sleep(250);
  assert.equal(t.adopted.length, 0);
});

test('a store cleared while the pack is being written: the file is removed once it lands, and nothing of it serves or is adopted', async () => {
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  let writing!: () => void;
  const started = new Promise<void>((r) => (writing = r));
  const t = setup(undefined, () => {
    writing();
    return held;
  });
  t.setList([t.memo('a'), t.memo('c')]);
  assert.ok(await t.p.claim(t.req('a')));
  t.p.fromTeam(t.req('a'));
  await started;
  t.p.forget();
  release();
  for (let i = 0; i < 100 && !t.removed(); i++) await sleep(10);
  assert.equal(t.packs.length, 1, 'written');
  assert.equal(t.removed(), 1, 'and removed');
  assert.equal(t.p.packedMemo(lookupDigest(COMPILER, t.cwd, t.req('c').args)), undefined);
  await sleep(250);
  assert.equal(t.adopted.length, 0);
});

test('two scopes fetched ahead at once: the first pack is adopted before the second replaces it', async () => {
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  let writes = 0;
  const t = setup(undefined, async () => {
    if (writes++ === 0) await held;
  });
  const other = t.tree();
  t.setScopeList(t.cwd, [t.memo('a'), t.memo('c')]);
  t.setScopeList(other, [t.memo('a', 'a', other), t.memo('c', 'c', other)]);
  for (const at of [t.cwd, other]) {
    assert.ok(await t.p.claim(t.req('a', at)));
    t.p.fromTeam(t.req('a', at));
  }
  for (let i = 0; i < 100 && writes < 1; i++) await sleep(10);
  await sleep(50);
  assert.equal(writes, 1, 'the second pack waits for the first');
  release();
  for (let i = 0; i < 100 && t.packs.length < 2; i++) await sleep(10);
  assert.equal(t.packs.length, 2);
  assert.deepEqual(
    t.adopted.map((e) => e.memo.key),
    [t.key('c')],
    "the first pack's entry, adopted before the second was written",
  );
  assert.equal(t.p.packedMemo(lookupDigest(COMPILER, other, t.req('c', other).args))?.key, t.key('c', other));
  await sleep(250);
  await t.p.adopted();
  assert.deepEqual(t.adopted.map((e) => e.memo.key).sort(), [t.key('c'), t.key('c', other)].sort());
  t.p.forget();
});

test('the scope names the resolved compiler: a compiler path that now resolves elsewhere sees none of its memos', async () => {
  const t = setup();
  const link = join(t.cwd, 'cc');
  fs.symlinkSync('/bin/true', link);
  const asked: string[] = [];
  const p = new TeamPrefetch({
    scopeMemos: async (scope) => {
      asked.push(scope);
      return { memos: [], complete: true };
    },
    getEntry: async () => ({ kind: 'miss' }),
    files: new FileDigests(),
    counters: new Counters(),
    log: silent,
  });
  await p.claim({ compiler: link, cwd: t.cwd, args: [] });
  fs.rmSync(link);
  fs.symlinkSync('/bin/false', link);
  p.forget();
  await p.claim({ compiler: link, cwd: t.cwd, args: [] });
  assert.deepEqual(asked, [scopeDigest(link, fs.realpathSync('/bin/true'), t.cwd), scopeDigest(link, fs.realpathSync('/bin/false'), t.cwd)]);
  assert.notEqual(asked[0], asked[1]);
  // A compiler that does not resolve has no scope: nothing is asked.
  fs.rmSync(link);
  p.forget();
  assert.equal(await p.claim({ compiler: link, cwd: t.cwd, args: [] }), null);
  assert.equal(asked.length, 2);
});

test('fetching ahead stops once far more memos fail their checks here than hold', async () => {
  const t = setup(undefined, undefined, undefined, 2, 5);
  // A teammate's tree that differs from this one: every memo but the first fails here.
  const stale = Array.from({ length: 200 }, (_, i) => t.memo(`m${i}`, `another m${i}`));
  t.setList([t.memo('a'), ...stale]);
  assert.ok(await t.p.claim(t.req('a')));
  t.p.fromTeam(t.req('a'));
  await sleep(300);
  // The fetches in flight when the checks began to fail, and no more.
  assert.ok(t.gets.length <= 64, `fetched ${t.gets.length} of ${stale.length} entries whose memos fail`);
  assert.equal(t.packs.length, 0, 'nothing to pack');
  t.p.forget();
});
