/**
 * Why the team tier did not answer a request. `skipped`: the circuit breaker is open, the server
 * was not asked. `unavailable`: no connection (refused, handshake failed, connection lost).
 * `timeout`: no answer in time. `server`: the server answered with an error. `protocol`: an
 * answer this client did not expect. `bad-bundle`: a hit whose bundle failed verification.
 * `local`: the request could not be built here (the bundle could not be packed).
 */
export const REMOTE_FAILURES = ['skipped', 'unavailable', 'timeout', 'server', 'protocol', 'bad-bundle', 'local'] as const;
export type RemoteFailure = (typeof REMOTE_FAILURES)[number];
