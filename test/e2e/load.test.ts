import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { runDaemonLoad, runTeamLoad } from '../../bench/loadDriver.js';

/**
 * Load (issue 5): many concurrent clients through one daemon, and many daemons against one team
 * server, on loopback with the real daemon, server, native client and clang 19. Correctness under
 * load only: every job must succeed with direct clang's exact object, exit status and stderr, and
 * memory must stay bounded. No timing is asserted (the machine is shared); bench/load.ts measures.
 *
 * Counts: LTOCACHE_LOAD_CLIENTS (default 16) × LTOCACHE_LOAD_JOBS (default 2000) jobs through one
 * daemon, one in LTOCACHE_LOAD_NATIVE_EVERY (default 50) through bin/ltocache; LTOCACHE_LOAD_DAEMONS
 * (default 8) daemons against one server.
 */

const num = (name: string, dflt: number) => {
  const v = process.env[name];
  return v ? Number(v) : dflt;
};
const CLIENTS = num('LTOCACHE_LOAD_CLIENTS', 16);
const JOBS = num('LTOCACHE_LOAD_JOBS', 2000);
const NATIVE_EVERY = num('LTOCACHE_LOAD_NATIVE_EVERY', 50);
const DAEMONS = num('LTOCACHE_LOAD_DAEMONS', 8);
/** Bounded memory, generously: the daemon peaked at ~140 MB over 32,000 jobs and ~260 MB over 96,000 here. */
const RSS_LIMIT_MB = 600;

describe('load', () => {
  test(`${CLIENTS} concurrent clients × ${JOBS} jobs through one daemon: no failure, no wrong object, bounded memory`, async () => {
    const r = await runDaemonLoad({ clients: CLIENTS, jobs: JOBS, nativeEvery: NATIVE_EVERY });
    const note = `${r.jobsSent} jobs in ${(r.wallMs / 1000).toFixed(1)} s (${(r.jobsSent / (r.wallMs / 1000)).toFixed(0)} jobs/s), peak RSS ${(r.peakRssKb / 1024).toFixed(0)} MB, ${r.stats.hits} hits, ${r.stats.misses} misses`;
    process.stderr.write(`# daemon load: ${note}\n`);
    assert.equal(r.jobsSent, CLIENTS * JOBS);
    if (NATIVE_EVERY > 0) assert.ok(r.nativeJobs >= Math.floor((CLIENTS * JOBS) / NATIVE_EVERY) - CLIENTS, `native jobs: ${r.nativeJobs}`);
    assert.deepEqual(r.failures, [], `${r.failureCount} failed jobs (first ones shown)`);
    assert.equal(r.failureCount, 0);
    assert.equal(r.wrongObjects, 0);
    // Every request reached the daemon and was answered from the cache or by a compile.
    assert.equal(r.stats.hits + r.stats.misses, r.jobsSent, JSON.stringify(r.stats));
    assert.equal(r.stats.errors, 0, JSON.stringify(r.stats.errors_by_kind));
    assert.equal(r.stats.uncacheable, 0);
    // Each distinct key compiles at least once; all of them are stored.
    assert.ok(r.stats.misses >= r.distinctKeys, `misses ${r.stats.misses} < distinct keys ${r.distinctKeys}`);
    assert.ok(r.stats.hits > 0);
    assert.equal(r.stats.entries, r.distinctKeys);
    // Bounded memory and no descriptor leak.
    assert.ok(r.rssSamples >= 3, `RSS sampled ${r.rssSamples} times`);
    assert.ok(r.peakRssKb > 0 && r.peakRssKb < RSS_LIMIT_MB * 1024, `daemon peak RSS ${r.peakRssKb} kB`);
    assert.ok(r.hwmKb < RSS_LIMIT_MB * 1024, `daemon VmHWM ${r.hwmKb} kB`);
    assert.ok(r.fdsAfter <= r.fdsBefore + 32, `daemon fds ${r.fdsBefore} → ${r.fdsAfter}`);
    assert.equal(r.leftovers, 0, 'temp files left in output directories');
  });

  test(`${DAEMONS} daemons against one server: racing uploads, then all hits; every object equals direct clang`, async () => {
    const r = await runTeamLoad({ daemons: DAEMONS, parallel: 2, nativeEvery: 3, remoteTimeoutMs: 5000 });
    const jobsPerDaemon = r.modules * r.variants;
    for (const round of r.rounds) {
      process.stderr.write(
        `# team load ${round.name}: ${round.jobs} jobs in ${(round.wallMs / 1000).toFixed(1)} s; ${JSON.stringify(round.deltas.map((d) => `${d.hits}h/${d.misses}m/${d.remote_hits}r`))}\n`,
      );
      assert.equal(round.jobs, DAEMONS * jobsPerDaemon, round.name);
      assert.deepEqual(round.failures, [], `${round.name}: ${round.failureCount} failed jobs`);
      assert.equal(round.wrongObjects, 0, round.name);
      for (const d of round.deltas) {
        assert.equal(d.hits + d.misses, jobsPerDaemon, `${round.name}: ${JSON.stringify(d)}`);
        assert.equal(d.errors, 0, `${round.name}: ${JSON.stringify(d)}`);
      }
    }
    const [r1, r2, r3] = r.rounds;
    // Round 1: every key compiled somewhere; a daemon's hits there can only be remote hits.
    const misses1 = r1!.deltas.reduce((n, d) => n + d.misses, 0);
    assert.ok(misses1 >= jobsPerDaemon, `round 1 misses ${misses1}`);
    for (const d of r1!.deltas) assert.equal(d.hits, d.remote_hits, JSON.stringify(d));
    assert.ok(r.serverAfterRound1.entries! >= jobsPerDaemon, `server entries after round 1: ${JSON.stringify(r.serverAfterRound1)}`);
    assert.equal(r.uploadsAfterRound1 >= jobsPerDaemon, true, `uploads ${r.uploadsAfterRound1}`);
    // Round 2: all local hits.
    for (const d of r2!.deltas) assert.deepEqual([d.hits, d.misses, d.remote_hits], [jobsPerDaemon, 0, 0], JSON.stringify(d));
    // Round 3: local stores cleared, every job is a remote hit.
    for (const d of r3!.deltas) assert.deepEqual([d.hits, d.misses, d.remote_hits], [jobsPerDaemon, 0, jobsPerDaemon], JSON.stringify(d));
    const remoteHits = r.rounds.reduce((n, round) => n + round.deltas.reduce((m, d) => m + d.remote_hits, 0), 0);
    assert.ok(r.server.entries! >= jobsPerDaemon, JSON.stringify(r.server));
    assert.ok(r.server.hits! >= remoteHits, `server hits ${r.server.hits} < daemons' remote hits ${remoteHits}`);
    assert.ok(r.peakDaemonRssKb < RSS_LIMIT_MB * 1024 && r.peakServerRssKb < RSS_LIMIT_MB * 1024, `peak RSS daemon ${r.peakDaemonRssKb} kB, server ${r.peakServerRssKb} kB`);
  });
});
