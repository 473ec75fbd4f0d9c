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
  /** Why the last job for an output path (absolute) hit or missed. */
  z.object({ op: z.literal('explain'), path: z.string().min(1) }),
  /** The last build's jobs and its summary (a build is a burst of jobs; see docs/kernel.md, "Reading explain"). */
  z.object({ op: z.literal('last-build') }),
  /** Summaries of recent builds, newest first, for reports. */
  z.object({ op: z.literal('builds'), limit: z.number().int().positive().max(1000) }),
]);
export type ControlRequest = z.infer<typeof ControlRequest>;

export const ControlResponse = z.union([z.object({ ok: z.literal(true), result: z.unknown() }), z.object({ ok: z.literal(false), error: z.string() })]);
export type ControlResponse = z.infer<typeof ControlResponse>;
