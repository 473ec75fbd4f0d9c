import { z } from 'zod';
import { DIGEST_RE } from '../key/hash.js';
import { base64Length, MAX_OUTPUT_STREAM } from '../protocol/limits.js';

/** A file name inside an entry: a plain name, never a path. */
export const OutputName = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'output names are plain names: no paths, no dot-files');

export const OutputRecord = z.object({
  /** Role of the output: "obj" for -o, "dwo" for -gsplit-dwarf, others by flag. */
  name: OutputName,
  digest: z.string().regex(DIGEST_RE),
  size: z.number().int().nonnegative(),
});

/** Stored record schema, version 1 (cache-schema/store-record.v1.json). */
export const EntryRecord = z.object({
  v: z.literal(1),
  outputs: z.array(OutputRecord).min(1).max(16),
  /** base64 of what clang wrote on stdout / stderr, replayed byte for byte; each at most
   * MAX_OUTPUT_STREAM bytes, as the client captures and reports. */
  stdout: z.string().max(base64Length(MAX_OUTPUT_STREAM)),
  stderr: z.string().max(base64Length(MAX_OUTPUT_STREAM)),
  exitCode: z.literal(0),
  compileMs: z.number().nonnegative(),
  createdAt: z.number().int().nonnegative(),
});
export type EntryRecord = z.infer<typeof EntryRecord>;
export type OutputRecord = z.infer<typeof OutputRecord>;
