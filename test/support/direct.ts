import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { ThinBuild } from '../../src/demo/thinBuild.js';

/** Direct clang (no cache) per (module, flags), computed once each: the reference objects. */
export class Direct {
  private readonly objs = new Map<string, Buffer>();
  private n = 0;
  constructor(private readonly b: ThinBuild) {}
  get(m: string, extra: string[] = []): Buffer {
    const k = `${m}\0${extra.join('\0')}`;
    let o = this.objs.get(k);
    if (!o) {
      const out = `${m}.direct${this.n++}.o`;
      const r = this.b.backend(m, { extra, out });
      assert.equal(r.status, 0, r.stderr);
      o = readFileSync(join(this.b.dir, out));
      rmSync(join(this.b.dir, out));
      this.objs.set(k, o);
    }
    return o;
  }
  /** Every reference object computed so far. */
  all(): Buffer[] {
    return [...this.objs.values()];
  }
}
