import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { ThinBuild } from '../../src/demo/thinBuild.js';
import { FIXTURE, tempDir } from './env.js';

/**
 * For a test file: one fixture tree, front end and thin link done once (`before`), and a cleanup
 * list run in reverse at the end (`after`), best effort, so one failed cleanup skips none of the rest.
 */
export function sharedTree(prefix: string): { tree: () => ThinBuild; cleanup: (() => void | Promise<void>)[] } {
  let base: ThinBuild | undefined;
  const cleanup: (() => void | Promise<void>)[] = [];
  before(() => {
    const top = tempDir(prefix);
    cleanup.push(() => rmSync(top, { recursive: true, force: true }));
    base = ThinBuild.fromFixture(FIXTURE, join(top, 'src'));
    base.frontEnd();
    base.thinLink();
  });
  after(async () => {
    for (const f of cleanup.reverse()) {
      try {
        await f();
      } catch {
        // best effort
      }
    }
  });
  return { tree: () => base!, cleanup };
}
