import { randomBytes } from 'node:crypto';

/** Unique in this process by the counter, and against other processes by the random tag. */
const TAG = randomBytes(6).toString('hex');
let count = 0;

/** A suffix for a temp file name that no other writer uses (one random draw per process, not per file). */
export function tempSuffix(): string {
  return `${TAG}-${(count++).toString(36)}`;
}
