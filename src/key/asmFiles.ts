import { BitstreamError, BitstreamReader } from './bitstream.js';
import { MODULE_BLOCK_ID } from './moduleTable.js';

/**
 * Files the integrated assembler reads while it assembles asm carried in bitcode: `.incbin "F"`
 * and `.include "F"` in module-level asm (MODULE_CODE_ASM) or inline asm (CST_CODE_INLINEASM*).
 * No flag names them and the bitcode does not change when F does, so the key must find them.
 *
 * Contract: never throws. `ok` lists every directive found; `unsure` means the bitcode holds a
 * directive whose operand is not a plain string literal (a macro argument, an escape), text that
 * macro expansion could turn into a directive the literal scan does not see (see
 * `expansionHazard`), or the bitcode could not be walked: the caller must then treat the job as
 * uncacheable, never guess.
 */

export type AsmDirective = { directive: 'incbin' | 'include'; name: string };
export type AsmScan = { kind: 'ok'; refs: AsmDirective[] } | { kind: 'unsure'; detail: string };

const FUNCTION_BLOCK_ID = 12;
const CONSTANTS_BLOCK_ID = 11;
const MODULE_CODE_ASM = 4;
const FUNC_CODE_DECLAREBLOCKS = 1;
/** CST_CODE_INLINEASM_OLD (18), _OLD2 (23), _OLD3 (28): [flags, asmstrsize, asmstr…, conststrsize,
 *  conststr…]; CST_CODE_INLINEASM (30) puts the function type first. Index of asmstrsize. */
const INLINEASM_SIZE_AT = new Map([
  [18, 1],
  [23, 1],
  [28, 1],
  [30, 2],
]);

/** Directive names are case-insensitive in LLVM's AsmParser. */
const DIRECTIVE = /\.(incbin|include)(?![A-Za-z0-9_$.])/gi;
/** A plain operand: no `\` (an escape or a macro argument), no `$` (an inline asm operand the
 *  printer replaces), no line break. */
const LITERAL = /^[ \t]*"([^"\\$\n\r]*)"/;

/** Finds `.incbin`/`.include` directives in assembler text (a module asm string, an inline asm
 *  string, an included file). */
export function directivesInText(text: string): AsmScan {
  const hazard = expansionHazard(text);
  if (hazard !== undefined) return { kind: 'unsure', detail: hazard };
  const refs: AsmDirective[] = [];
  const at: number[] = [];
  for (const m of text.matchAll(DIRECTIVE)) {
    const rest = text.slice(m.index + m[0].length, m.index + m[0].length + 4200);
    const lit = LITERAL.exec(rest);
    const directive = m[1]!.toLowerCase() as AsmDirective['directive'];
    if (!lit || lit[1]!.length === 0) return { kind: 'unsure', detail: `.${directive} without a plain string literal operand` };
    refs.push({ directive, name: lit[1]! });
    at.push(m.index);
  }
  const quoting = at.length > 0 ? quotingHazard(text, at) : undefined;
  if (quoting !== undefined) return { kind: 'unsure', detail: quoting };
  return { kind: 'ok', refs };
}

/**
 * The assembler expands `.macro`, `.irp`, `.irpc`, `.rept` bodies as text before it parses them:
 * `\name` becomes an argument, `\()` joins, a string argument is pasted without its quotes (so its
 * `;` ends a statement), and on Darwin `$0`… are arguments. So `.\d "f"` with `d` = `incbin`, or
 * `.inc\()bin "f"`, reads f although no `.incbin` text exists. A directive is named by the first
 * token of a statement (after labels), so the text is unsure when such a head contains `\` or `$`
 * (built by substitution, or an inline asm operand) or `"` (it could continue past the end of a
 * string argument). Heads are looked for after every `;`, line break, `%%` (Darwin AArch64), `{`
 * (Hexagon packets) and `*\/`, inside strings and comments too: a string argument's `;` separates
 * once pasted, and reading a comment as code only adds heads. A statement whose head is plain text
 * names the same directive after expansion. Every text is checked, with or without `.macro` in it:
 * a macro outlives the asm string that defines it (inline asm can use one from module asm).
 * `.altmacro` (`%expr`, `<str>` arguments) is unsure outright. Returns why, or undefined.
 */
function expansionHazard(text: string): string | undefined {
  if (ALTMACRO.test(text)) return '.altmacro: macro arguments may build any directive';
  const n = text.length;
  // End of the last head checked: a later start inside it sees a suffix of a head already
  // checked, with the same label decision after it, so each character is read once.
  let checkedTo = -1;
  const headsFrom = (start: number): string | undefined => {
    let i = start;
    for (;;) {
      while (i < n && (text[i] === ' ' || text[i] === '\t')) i++;
      if (i < checkedTo) return undefined;
      const head = i;
      let built = false;
      for (; i < n && !HEAD_END.has(text.charCodeAt(i)); i++) built ||= SUBSTITUTED.has(text.charCodeAt(i));
      if (built) return `statement head ${JSON.stringify(text.slice(head, Math.min(i, head + 60)))} may be built by macro substitution`;
      checkedTo = i;
      while (i < n && (text[i] === ' ' || text[i] === '\t')) i++;
      if (text[i] !== ':') return undefined;
      i++; // a label: the next token is a head too
    }
  };
  const first = headsFrom(0);
  if (first !== undefined) return first;
  for (const m of text.matchAll(STATEMENT_START)) {
    const found = headsFrom(m.index + m[0].length);
    if (found !== undefined) return found;
  }
  return undefined;
}

const ALTMACRO = /\.altmacro(?![A-Za-z0-9_$.])/i;
/** Where a statement may begin. More starts than the assembler sees only costs hits. */
const STATEMENT_START = /;|\n|\r|%%|\{|\*\//g;
/** Characters that end a statement's first token: blanks, separators, operand commas, a label colon. */
const HEAD_END = new Set([...' \t;\n\r,:'].map((c) => c.charCodeAt(0)));
const SUBSTITUTED = new Set([...'\\"$'].map((c) => c.charCodeAt(0)));

/**
 * A directive found inside a string may be the tail of a string macro argument such as
 * `"1; .incbin "`, pasted unquoted into a body that supplies another operand: its literal is then
 * not what the assembler reads. Strings are paired naively (`\` escapes, comments ignored); that
 * pairing matches the assembler's unless a comment or a character literal holds a quote, which
 * shows up as a string crossing a line break or holding `*\/`, or as `'"`. Returns why, or undefined.
 */
function quotingHazard(text: string, at: number[]): string | undefined {
  if (/'\\?"/.test(text)) return 'a quote in a character literal: strings cannot be told apart';
  let k = 0;
  let open = -1;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (open < 0) {
      if (c === '"') open = i;
      continue;
    }
    if (c === '\\') i++;
    else if (c === '\n' || c === '\r') return 'a string crosses a line break: strings cannot be told apart';
    else if (c === '*' && text[i + 1] === '/') return 'a string holds */: strings cannot be told apart';
    else if (c === '"') {
      while (k < at.length && at[k]! < open) k++;
      if (k < at.length && at[k]! < i) return `a .incbin/.include inside a string: its operand may come from a macro body`;
      open = -1;
    }
  }
  return open >= 0 ? 'an unterminated string' : undefined;
}

/** Walks every module in a bitcode file (a split LTO unit holds two) for module and inline asm. */
export function scanBitcodeAsm(bytes: Uint8Array): AsmScan {
  const refs: AsmDirective[] = [];
  try {
    const r = BitstreamReader.open(bytes);
    // Only these blocks can hold asm; every other block is skipped by its length word.
    const wanted = (id: number, parent: number) =>
      (parent === -1 && id === MODULE_BLOCK_ID) ||
      (parent === MODULE_BLOCK_ID && (id === FUNCTION_BLOCK_ID || id === CONSTANTS_BLOCK_ID)) ||
      (parent === FUNCTION_BLOCK_ID && id === CONSTANTS_BLOCK_ID);
    for (;;) {
      const e = r.next();
      if (e.kind === 'eof') break;
      if (e.kind === 'end') continue;
      if (e.kind === 'block') {
        // LLVM's writer emits a function's constants (inline asm among them) right after its
        // DECLAREBLOCKS record, before any other block or instruction: the rest is skipped.
        if (r.blockId === FUNCTION_BLOCK_ID && e.id !== CONSTANTS_BLOCK_ID) r.leaveBlock();
        else if (wanted(e.id, r.blockId)) r.enterBlock(e);
        else r.skipBlock(e);
        continue;
      }
      const block = r.blockId;
      if (block === FUNCTION_BLOCK_ID) {
        if (r.readRecord(e.abbrevId).code !== FUNC_CODE_DECLAREBLOCKS) r.leaveBlock();
        continue;
      }
      if (block !== MODULE_BLOCK_ID && block !== CONSTANTS_BLOCK_ID) {
        r.skipRecord(e.abbrevId);
        continue;
      }
      const code = r.peekCode(e.abbrevId);
      const sizeAt = block === CONSTANTS_BLOCK_ID ? INLINEASM_SIZE_AT.get(code) : undefined;
      if (block === MODULE_BLOCK_ID ? code !== MODULE_CODE_ASM : sizeAt === undefined) {
        r.skipRecord(e.abbrevId);
        continue;
      }
      const text = sizeAt === undefined ? r.readRecordText(e.abbrevId).text : inlineAsmString(r.readRecord(e.abbrevId).ops, sizeAt);
      if (text === undefined) return { kind: 'unsure', detail: `inline asm record (code ${code}) with an asm string size past its end` };
      const found = directivesInText(text);
      if (found.kind === 'unsure') return found;
      refs.push(...found.refs);
    }
  } catch (e) {
    if (e instanceof BitstreamError) return { kind: 'unsure', detail: `bitcode asm scan: ${e.message}` };
    return { kind: 'unsure', detail: `bitcode asm scan: ${(e as Error).message}` };
  }
  return { kind: 'ok', refs: dedupe(refs) };
}

/** The asm string of an inline asm record, without the record's other operands (whose values,
 *  read as characters, could look like a statement); undefined if the size does not fit, which
 *  LLVM's reader rejects too. */
function inlineAsmString(ops: number[], sizeAt: number): string | undefined {
  const size = ops[sizeAt];
  if (size === undefined || sizeAt + 1 + size >= ops.length) return undefined;
  return Buffer.from(ops.slice(sizeAt + 1, sizeAt + 1 + size).map((v) => (v >= 0 && v < 256 ? v : 0))).toString('latin1');
}

function dedupe(refs: AsmDirective[]): AsmDirective[] {
  const seen = new Set<string>();
  return refs.filter((r) => {
    const k = `${r.directive}\0${r.name}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}
