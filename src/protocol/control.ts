import { z } from 'zod';

/**
 * CLI ↔ daemon control messages, carried as JSON frames ('J') on the daemon socket.
 * The native client never sends these.
 */
export const ControlRequest = z.discriminatedUnion('op', [
  /** Liveness and identity: pid, version, cache dir, uptime, jobs in flight. */
  z.object({ op: z.literal('status') }),
  /** Counters plus store summary. */
  z.object({ op: z.literal('stats') }),
  /** Reset counters to zero. */
  z.object({ op: z.literal('zero') }),
  /** Remove every entry and blob from the local store. */
  z.object({ op: z.literal('clear') }),
  /** Graceful shutdown: finish running jobs, flush counters, exit. */
  z.object({ op: z.literal('stop') }),
  /** The last recorded job for an output path (absolute), with its manifest and the previous one. */
  z.object({ op: z.literal('explain'), path: z.string().min(1) }),
  /** The jobs of the last build (a burst of jobs; see docs/explain.md). */
  z.object({ op: z.literal('last-build') }),
]);
export type ControlRequest = z.infer<typeof ControlRequest>;

export const ControlResponse = z.union([
  z.object({ ok: z.literal(true), result: z.unknown() }),
  z.object({ ok: z.literal(false), error: z.string() }),
]);
export type ControlResponse = z.infer<typeof ControlResponse>;
