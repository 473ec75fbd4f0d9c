import type { Job } from './parseJob.js';

/**
 * clang colours its diagnostics when stderr is a terminal, unless told otherwise. The client
 * captures them through a pipe, so a job whose command says nothing about colour is run with
 * `-fcolor-diagnostics` put first when the client's stderr is a terminal (docs/protocol.md, flag bit
 * 3), and what is stored has the colour taken out again: byte for byte what clang prints to a
 * pipe (clang 19 and 22 emit the same text either way, with SGR sequences around parts of it).
 */

/** Options by which a command chooses colour, or the diagnostics' format, itself. */
const CHOOSES = /^-f(no-)?(color-diagnostics|diagnostics-color)(=|$)|^-fdiagnostics-format(=|$)/;

/** True when the job leaves colour to clang's terminal check, so that adding it is ours to undo. */
export function colourIsOurs(job: Job): boolean {
  return !job.tokens.some((t) => t.t !== 'file' && CHOOSES.test(t.v));
}

const ESC = 0x1b;
const SGR = new RegExp(`${String.fromCharCode(ESC)}\\[[0-9;]*m`, 'g');

/** `text` without ANSI SGR sequences (ESC [ digits and semicolons m), the only escapes clang writes. */
export function withoutColour(text: Buffer): Buffer {
  if (!text.includes(ESC)) return text;
  return Buffer.from(text.toString('latin1').replace(SGR, ''), 'latin1');
}
