import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { SavedDigests } from '../key/fileDigests.js';
import { Manifest } from '../key/manifest.js';
import { StatsRecord } from '../stats/counters.js';
import { EntryRecord } from '../store/record.js';
import { CompileRequest } from './clientFrames.js';
import { ControlRequest, ControlResponse } from './control.js';
import { DistFile } from './dtlto.js';
import { ClientMessage, ServerMessage } from './remote.js';

/**
 * The versioned schemas in cache-schema/, generated from the zod definitions the code parses
 * with, so the published contract cannot drift from the enforced one (test/unit/schemas.test.ts).
 */
export function allSchemas(): Record<string, unknown> {
  const gen = (title: string, schema: z.ZodType) => ({ title, ...z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) });
  return {
    'key-manifest.v1.json': gen('ltocache key manifest, version 1', Manifest),
    'store-record.v1.json': gen('ltocache stored entry record, version 1', EntryRecord),
    'stats-record.v1.json': gen('ltocache persisted counters, version 1', StatsRecord),
    'client-compile-request.v2.json': gen('ltocache client→daemon compile request (decoded binary frame), protocol version 2', CompileRequest),
    'file-digests.v1.json': gen('ltocache daemon digest memo saved between runs (digests.json), version 1', SavedDigests),
    'control-request.v1.json': gen('ltocache CLI→daemon control request, version 1', ControlRequest),
    'control-response.v1.json': gen('ltocache daemon→CLI control response, version 1', ControlResponse),
    'remote-client-message.v1.json': gen('ltocache team cache: client→server message, protocol 1', ClientMessage),
    'dtlto-dist-file.v1.json': gen('LLVM DTLTO distribution file (lld --thinlto-distributor), as ltocache distribute accepts it', DistFile),
    'remote-server-message.v1.json': gen('ltocache team cache: server→client message, protocol 1', ServerMessage),
  };
}

export function schemaText(v: unknown): string {
  return JSON.stringify(v, null, 2) + '\n';
}

/** Writes cache-schema/*.json (npm run schemas). */
export function writeSchemas(dir: string): void {
  for (const [name, schema] of Object.entries(allSchemas())) writeFileSync(join(dir, name), schemaText(schema));
}

if (process.argv[2] === '--write') writeSchemas(process.argv[3] ?? 'cache-schema');
