import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import { COUNTERS, type CounterName } from './serverCounters.js';
import { STORAGE_ERROR_KINDS, type StorageErrorKind, type StorageSummary } from './serverStorage.js';

/** Ops of the access log that are requests (connect and invalid frames are counted elsewhere). */
const REQUEST_OPS = new Set(['get', 'gets', 'put', 'bad', 'memo', 'scope', 'stats', 'ping', 'hello', 'admin:clear', 'admin:reset-stats']);

/**
 * The server's Prometheus metrics (`GET /metrics`), one registry per server. Counters count from
 * this process's start: with several servers on one storage, sum them across instances.
 * No label carries a key, a token or a peer address.
 */
export class ServerMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'type' | 'result'>;
  private readonly duration: Histogram<'type'>;
  private readonly events: Record<CounterName, Counter>;
  private readonly storageErrors: Counter<'kind'>;

  constructor(storageKind: () => string, connections: () => number, summary: () => StorageSummary | null) {
    const registers = [this.registry];
    this.requests = new Counter({ name: 'ltocache_server_requests_total', help: 'Requests answered, by type and result.', labelNames: ['type', 'result'], registers });
    this.duration = new Histogram({
      name: 'ltocache_server_request_duration_seconds',
      help: 'Time from a request to its answer (puts: from the put message to stored).',
      labelNames: ['type'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
    const help: Record<CounterName, string> = {
      hits: 'Gets answered with an entry.',
      misses: 'Gets answered with a miss (absent, corrupt, or storage unavailable).',
      puts: 'Entries stored.',
      puts_refused: 'Puts refused for the token scope.',
      rejected_bundles: 'Put bundles rejected (size, declared outputs, digests).',
      bad_messages: 'Malformed or out-of-protocol messages.',
      auth_failures: 'Connections refused for a missing or unknown token.',
      evictions: 'Entries (dir) or keys (Redis) the storage evicted.',
      bytes_served: 'Bundle bytes sent to clients (bytes out).',
      bytes_received: 'Bundle bytes received from clients (bytes in).',
      memos_stored: 'Team memos stored.',
      memos_served: 'Team memos sent in scope replies.',
      rejected_memos: 'Team memos rejected as invalid.',
    };
    this.events = Object.fromEntries(COUNTERS.map((c) => [c, new Counter({ name: `ltocache_server_${c}_total`, help: help[c], registers })])) as Record<CounterName, Counter>;
    this.storageErrors = new Counter({ name: 'ltocache_server_storage_errors_total', help: 'Storage failures, by kind.', labelNames: ['kind'], registers });
    for (const k of STORAGE_ERROR_KINDS) this.storageErrors.inc({ kind: k }, 0);
    new Gauge({
      name: 'ltocache_server_open_connections',
      help: 'Authenticated websocket connections open now.',
      registers,
      collect() {
        this.set(connections());
      },
    });
    new Gauge({
      name: 'ltocache_server_storage_info',
      help: 'The storage this server uses (always 1; the kind is the label).',
      labelNames: ['storage'],
      registers,
      collect() {
        this.reset();
        this.set({ storage: storageKind() }, 1);
      },
    });
    const fig = (name: string, help: string, pick: (s: StorageSummary) => number) =>
      new Gauge({
        name,
        help,
        registers,
        collect() {
          const s = summary();
          if (s) this.set(pick(s));
        },
      });
    fig('ltocache_server_storage_entries', 'Entries in the storage (Redis: keys, entries plus blob chunks).', (s) => s.entries);
    fig('ltocache_server_storage_bytes', 'Bytes the storage holds (Redis: used_memory).', (s) => s.bytes);
    fig('ltocache_server_storage_max_bytes', 'The storage size bound (Redis: maxmemory; 0 = none).', (s) => s.maxBytes);
    collectDefaultMetrics({ register: this.registry });
  }

  /** One answered request, from the access-log entry of it. */
  request(op: string, result: string, ms: number): void {
    if (!REQUEST_OPS.has(op)) return;
    this.requests.inc({ type: op, result });
    this.duration.observe({ type: op }, ms / 1000);
  }

  event(name: CounterName, n: number): void {
    this.events[name].inc(n);
  }

  storageError(kind: StorageErrorKind): void {
    this.storageErrors.inc({ kind });
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
