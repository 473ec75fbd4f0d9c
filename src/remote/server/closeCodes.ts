/** WebSocket close codes the server uses; 1009 and 1002/1007 come from `ws` itself. */
export const CLOSE_CODES = {
  /** Server shutting down (after in-flight requests of the connection were answered). */
  goingAway: 1001,
  /** A message exceeded maxPayload (max bundle + 4 bytes); sent by `ws`. */
  tooBig: 1009,
  /** No message and nothing in progress for idleTimeoutMs. */
  idle: 4000,
  /** `hello` named a protocol version this server does not speak (after an `error {code:'version'}`). */
  version: 4001,
  /** maxBadMessages bad messages on this connection. */
  badMessages: 4002,
} as const;
