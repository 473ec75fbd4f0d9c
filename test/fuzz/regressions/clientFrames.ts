/**
 * Inputs that once made a clientFrames property fail (see docs/reliability.md "## Fuzzing").
 * Each is replayed by test/fuzz/clientFrames.test.ts on every run.
 */

/** Byte streams for FrameDecoder: hex, cut points (fractions of the length), frame limit. */
export const FRAME_REGRESSIONS: { name: string; streamHex: string; chunksAt: number[]; maxFrame: number }[] = [];

/** Compile-request payloads (without the length prefix), hex. */
export const REQUEST_REGRESSIONS: string[] = [];
