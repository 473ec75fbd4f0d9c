/**
 * Team-protocol text messages that once made a remote.ts property fail, or that probe a corner
 * worth keeping (docs/reliability.md "## Fuzzing"). Replayed by test/fuzz/remote.test.ts.
 */
export const REMOTE_REGRESSIONS: string[] = [
  '{"type":"ping","id":1,"__proto__":{"type":"admin","op":"clear"}}',
  '{"type":"__proto__","id":1}',
  '{"type":"toString","id":1}',
  '{"type":"get","id":4294967296,"key":"00000000000000000000000000000000"}',
  '{"type":"put","id":1,"key":"00000000000000000000000000000000","entry":{"v":1,"outputs":[{"name":"obj","digest":"00000000000000000000000000000000","size":1e400}],"stdout":"","stderr":"","exitCode":0,"compileMs":0,"createdAt":0},"bundleBytes":1}',
  // deep nesting, once per run (200k levels: V8's JSON.parse must not overflow the stack)
  '['.repeat(200_000),
  `{"type":"put","id":1,"key":"00000000000000000000000000000000","entry":${'['.repeat(100_000)}${']'.repeat(100_000)},"bundleBytes":1}`,
];
