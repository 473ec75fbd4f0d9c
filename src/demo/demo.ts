import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { currentStats } from '../cli/currentStats.js';
import type { Config } from '../config/config.js';
import { formatStats } from '../stats/formatStats.js';
import { ThinBuild } from './thinBuild.js';

const TOP = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

/**
 * The README's main job: builds the test program in distributed ThinLTO mode twice through
 * bin/ltocache (a cold build, then the thin link redone as every kernel build does), checks each
 * served object against a direct clang run, and prints the statistics.
 */
export async function runDemo(config: Config): Promise<void> {
  // bin/ltocache in a checkout; prebuilt/ltocache (the package's `ltocache`) when installed.
  const client = [join(TOP, 'bin', 'ltocache'), join(TOP, 'prebuilt', 'ltocache')].find((p) => existsSync(p)) ?? join(TOP, 'bin', 'ltocache');
  const work = mkdtempSync(join(tmpdir(), 'ltocache-demo-'));
  const say = (s: string) => process.stdout.write(s + '\n');
  let same = 0;
  let modules = 0;
  // The work tree goes whether the demo succeeds or a step throws.
  try {
    const b = ThinBuild.fromFixture(join(TOP, 'test', 'fixtures', 'prog'), work);
    modules = b.modules.length;
    say(`ltocache demo: ${b.modules.length} modules in ${work}, cache ${config.dir}`);
    b.frontEnd();
    for (const round of ['first build', 'rebuild after the thin link rewrote every index']) {
      b.thinLink();
      const t0 = performance.now();
      for (const m of b.modules) {
        const r = b.backend(m, { wrapper: [client] });
        if (r.status !== 0) throw new Error(`backend ${m} failed: ${r.stderr}`);
      }
      say(`${round}: ${b.modules.length} backend jobs in ${(performance.now() - t0).toFixed(0)} ms`);
    }
    for (const m of b.modules) {
      const direct = b.backend(m, { out: `${m}.direct.o` });
      if (direct.status !== 0) throw new Error(direct.stderr);
      if (readFileSync(join(work, `${m}.direct.o`)).equals(readFileSync(join(work, `${m}.thinlto-native.o`)))) same++;
    }
    say(`objects identical to a direct clang run: ${same}/${b.modules.length}`);
    b.link();
    say(`program output: ${b.runProgram().trim()}`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  say('');
  say(formatStats(await currentStats(config)));
  if (same !== modules) process.exitCode = 1;
}
