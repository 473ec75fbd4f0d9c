/**
 * An environment value that is not UTF-8 is carried as this prefix and its bytes in hex
 * (docs/protocol.md): set, and distinct per value, so a key that reads the variable keys its
 * bytes, a memo's ENV check (a C string never holds a NUL) never passes, and spawning with it
 * fails. A variable nothing reads costs nothing.
 */
export const OPAQUE_ENV_PREFIX = '\0not-utf-8:';

export function isOpaque(value: string | undefined): boolean {
  return value?.startsWith(OPAQUE_ENV_PREFIX) ?? false;
}

/**
 * `env` without its opaque values, for the helper runs of clang the key makes (`-###`, the loader
 * trace): the key refuses a job whose keyed variables are opaque, so those left out are ones the
 * answer does not depend on.
 */
export function spawnableEnv(env: Record<string, string>): Record<string, string> {
  if (!Object.values(env).some(isOpaque)) return env;
  return Object.fromEntries(Object.entries(env).filter(([, v]) => !isOpaque(v)));
}
