import type { Manifest } from '../key/manifest.js';

/** One reason a job's key differs from the previous job's for the same output. */
export type Cause =
  | { kind: 'first-build'; detail: string }
  | { kind: 'toolchain'; detail: string }
  | { kind: 'input'; detail: string }
  | { kind: 'index-own-hash'; detail: string }
  | { kind: 'import-added'; module: string; detail: string }
  | { kind: 'import-removed'; module: string; detail: string }
  | { kind: 'import-changed'; module: string; detail: string }
  | { kind: 'index-summary'; detail: string }
  | { kind: 'flag-added'; flag: string; detail: string }
  | { kind: 'flag-removed'; flag: string; detail: string }
  | { kind: 'flag-changed'; flag: string; detail: string }
  | { kind: 'flag-file'; file: string; detail: string }
  | { kind: 'response-file'; file: string; detail: string }
  | { kind: 'environment'; variable: string; detail: string }
  | { kind: 'output-path'; detail: string }
  | { kind: 'not-stored'; detail: string };

export type CauseKind = Cause['kind'];

/** The spelling of an argument as keyed (file tokens by path and content). */
function argText(a: Manifest['args'][number]): string {
  return a.a + (a.files ? a.files.map((f) => f.path).join(',') : '') + (a.output !== undefined ? ` ${a.output}` : '');
}

/** The flag an argument belongs to: `-O2` → `-O`, `-march=x` → `-march`, `-fthinlto-index=` stays. */
function flagName(s: string): string {
  const eq = s.indexOf('=');
  if (eq > 0) return s.slice(0, eq + 1);
  const m = /^(-O|-g|-W|-f|-m)/.exec(s);
  return m && s.startsWith('-O') ? '-O' : s;
}

/** Longest common subsequence of two arrays of strings (flag lists are short). */
function lcs(a: string[], b: string[]): [number, number][] {
  const dp: number[][] = Array.from({ length: a.length + 1 }, () => new Array<number>(b.length + 1).fill(0));
  for (let i = a.length - 1; i >= 0; i--) for (let j = b.length - 1; j >= 0; j--) dp[i]![j] = a[i] === b[j] ? dp[i + 1]![j + 1]! + 1 : Math.max(dp[i + 1]![j]!, dp[i]![j + 1]!);
  const pairs: [number, number][] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    if (a[i] === b[j]) {
      pairs.push([i, j]);
      i++;
      j++;
    } else if (dp[i + 1]![j]! >= dp[i]![j + 1]!) i++;
    else j++;
  }
  return pairs;
}

function flagCauses(prev: Manifest, cur: Manifest): Cause[] {
  const a = prev.args.filter((x) => !x.files?.length || x.a.startsWith('-')).map(argText);
  const b = cur.args.filter((x) => !x.files?.length || x.a.startsWith('-')).map(argText);
  const keep = lcs(a, b);
  const ka = new Set(keep.map(([i]) => i));
  const kb = new Set(keep.map(([, j]) => j));
  const removed = a.filter((_, i) => !ka.has(i));
  const added = b.filter((_, j) => !kb.has(j));
  const causes: Cause[] = [];
  for (const r of [...removed]) {
    const twin = added.find((x) => flagName(x) === flagName(r));
    if (twin) {
      added.splice(added.indexOf(twin), 1);
      removed.splice(removed.indexOf(r), 1);
      causes.push({ kind: 'flag-changed', flag: flagName(r), detail: `flag changed: ${r} → ${twin}` });
    }
  }
  for (const r of removed) causes.push({ kind: 'flag-removed', flag: r, detail: `flag removed: ${r}` });
  for (const x of added) causes.push({ kind: 'flag-added', flag: x, detail: `flag added: ${x}` });
  if (!causes.length && a.length === b.length && a.some((x, i) => x !== b[i])) causes.push({ kind: 'flag-changed', flag: '(order)', detail: 'flags reordered' });
  return causes;
}

/**
 * Why `cur` got a different key than `prev` (the previous job for the same output path), most
 * specific causes first. An empty list with equal keys means the entry was not in the store.
 */
export function explainMiss(prev: Manifest | null | undefined, cur: Manifest): Cause[] {
  if (!prev) return [{ kind: 'first-build', detail: 'no earlier job for this output: first build (cold)' }];
  const causes: Cause[] = [];
  const pt = prev.toolchain;
  const ct = cur.toolchain;
  if (pt.realpath !== ct.realpath || pt.digest !== ct.digest || pt.driver !== ct.driver) {
    causes.push({
      kind: 'toolchain',
      detail:
        pt.realpath !== ct.realpath || pt.driver !== ct.driver
          ? `compiler changed: ${pt.driver} (${pt.realpath}) → ${ct.driver} (${ct.realpath})`
          : `compiler executable ${ct.realpath} changed content`,
    });
  } else {
    const libs = new Map(pt.libs.map((l) => [l.path, l.digest]));
    const changed = ct.libs.filter((l) => libs.get(l.path) !== l.digest).map((l) => l.path);
    const gone = pt.libs.filter((l) => !ct.libs.some((c) => c.path === l.path)).map((l) => l.path);
    if (changed.length || gone.length) causes.push({ kind: 'toolchain', detail: `compiler libraries changed: ${[...changed, ...gone].join(', ')}` });
    const cfg = new Map(pt.configs.map((c) => [c.path, c.digest]));
    if (ct.configs.length !== pt.configs.length || ct.configs.some((c) => cfg.get(c.path) !== c.digest))
      causes.push({ kind: 'toolchain', detail: 'clang configuration files changed' });
  }
  if (prev.input.path !== cur.input.path) causes.push({ kind: 'output-path', detail: `input path changed: ${prev.input.path} → ${cur.input.path}` });
  else if (prev.input.digest !== cur.input.digest) causes.push({ kind: 'input', detail: `input bitcode ${cur.input.path} changed` });
  if (prev.index.digest !== cur.index.digest) {
    const pm = new Map(prev.index.modules.map((m) => [m.path, m]));
    const cm = new Map(cur.index.modules.map((m) => [m.path, m]));
    const before = causes.length;
    for (const [path, m] of cm) {
      const old = pm.get(path);
      if (path === cur.input.path) {
        if (old && old.moduleHash !== m.moduleHash && prev.input.digest === cur.input.digest)
          causes.push({ kind: 'index-own-hash', detail: `the index records a new module hash for ${path}` });
        continue;
      }
      if (!old) causes.push({ kind: 'import-added', module: path, detail: `now imports from ${path}` });
      else if (old.moduleHash !== m.moduleHash || old.digest !== m.digest) causes.push({ kind: 'import-changed', module: path, detail: `imported module ${path} changed` });
    }
    for (const path of pm.keys()) if (!cm.has(path) && path !== cur.input.path) causes.push({ kind: 'import-removed', module: path, detail: `no longer imports from ${path}` });
    const inputExplains = causes.some((c) => c.kind === 'input');
    if (causes.length === before && !inputExplains)
      causes.push({
        kind: 'index-summary',
        detail: `index ${cur.names?.index ?? cur.index.path} changed in its summary (import decisions, internalisation, dead-stripping, devirtualisation)`,
      });
  } else {
    // Same index bytes: an imported file can still differ on disk (a module built without a hash).
    const pm = new Map(prev.index.modules.map((m) => [m.path, m.digest]));
    for (const m of cur.index.modules)
      if (m.path !== cur.input.path && pm.get(m.path) !== undefined && pm.get(m.path) !== m.digest)
        causes.push({ kind: 'import-changed', module: m.path, detail: `imported module ${m.path} changed on disk (index unchanged)` });
  }
  causes.push(...flagCauses(prev, cur));
  const pf = new Map(prev.args.flatMap((a) => (a.files ?? []).map((f) => [`${a.a}\0${f.path}`, f.digest] as const)));
  for (const a of cur.args) {
    if (a.a === '' || a.a === '-fthinlto-index=') continue;
    for (const f of a.files ?? []) {
      const d = pf.get(`${a.a}\0${f.path}`);
      if (d !== undefined && d !== f.digest) causes.push({ kind: 'flag-file', file: f.path, detail: `content of ${f.path} (named by ${a.a || 'an argument'}) changed` });
    }
  }
  // Only where both jobs keyed them: turning a sanitizer on or off is already a flag cause.
  if (prev.resources && cur.resources && JSON.stringify(prev.resources) !== JSON.stringify(cur.resources))
    causes.push({ kind: 'toolchain', detail: "the resource directory's share/ files keyed under -fsanitize= changed" });
  // With the same input bytes (else the input's change explains it).
  if (prev.input.digest === cur.input.digest && JSON.stringify(prev.asm ?? []) !== JSON.stringify(cur.asm ?? []))
    causes.push({ kind: 'input', detail: 'a file read by .incbin/.include in the bitcode changed, appeared or went away' });
  const pr = new Map(prev.responseFiles.map((r) => [r.path, r.digest]));
  for (const r of cur.responseFiles)
    if (pr.has(r.path) && pr.get(r.path) !== r.digest) causes.push({ kind: 'response-file', file: r.path, detail: `response file ${r.path} changed` });
  for (const k of new Set([...Object.keys(prev.env), ...Object.keys(cur.env)])) {
    if (prev.env[k] !== cur.env[k])
      causes.push({ kind: 'environment', variable: k, detail: `environment ${k}: ${JSON.stringify(prev.env[k] ?? null)} → ${JSON.stringify(cur.env[k] ?? null)}` });
  }
  if (JSON.stringify(prev.outputs) !== JSON.stringify(cur.outputs) && !causes.some((c) => c.kind.startsWith('flag')))
    causes.push({ kind: 'output-path', detail: 'outputs changed' });
  return causes;
}
