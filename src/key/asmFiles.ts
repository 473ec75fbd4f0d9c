import { BitstreamError, BitstreamReader } from './bitstream.js';
import { MODULE_BLOCK_ID } from './moduleTable.js';

/**
 * Files the integrated assembler reads while it assembles asm carried in bitcode: `.incbin "F"`
 * and `.include "F"` in module-level asm (MODULE_CODE_ASM) or inline asm (CST_CODE_INLINEASM*).
 * No flag names them and the bitcode does not change when F does, so the key must find them.
 *
 * Contract: never throws. `ok` lists every directive found; `unsure` means the bitcode holds a
 * directive whose operand is not a plain string literal (a macro argument, an escape), or the
 * bitcode could not be walked: the caller must then treat the job as uncacheable, never guess.
 */

export type AsmDirective = { directive: 'incbin' | 'include'; name: string };
export type AsmScan = { kind: 'ok'; refs: AsmDirective[] } | { kind: 'unsure'; detail: string };

const FUNCTION_BLOCK_ID = 12;
const CONSTANTS_BLOCK_ID = 11;
const MODULE_CODE_ASM = 4;
const FUNC_CODE_DECLAREBLOCKS = 1;
/** CST_CODE_INLINEASM_OLD (18), _OLD2 (23), _OLD3 (28), INLINEASM (30): every layout keeps the asm
 *  string as one run of character operands, so scanning all operands as text finds it. */
const INLINEASM_CODES = new Set([18, 23, 28, 30]);

/** Directive names are case-insensitive in LLVM's AsmParser. */
const DIRECTIVE = /\.(incbin|include)(?![A-Za-z0-9_$.])/gi;
const LITERAL = /^[ \t]*"([^"\\\n\r]*)"/;

/** Finds `.incbin`/`.include` directives in assembler text (a module asm string, an included file). */
export function directivesInText(text: string): AsmScan {
  const refs: AsmDirective[] = [];
  for (const m of text.matchAll(DIRECTIVE)) {
    const rest = text.slice(m.index + m[0].length, m.index + m[0].length + 4200);
    const lit = LITERAL.exec(rest);
    const directive = m[1]!.toLowerCase() as AsmDirective['directive'];
    if (!lit || lit[1]!.length === 0) return { kind: 'unsure', detail: `.${directive} without a plain string literal operand` };
    refs.push({ directive, name: lit[1]! });
  }
  return { kind: 'ok', refs };
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
      const isAsm = block === MODULE_BLOCK_ID ? code === MODULE_CODE_ASM : INLINEASM_CODES.has(code);
      if (!isAsm) {
        r.skipRecord(e.abbrevId);
        continue;
      }
      const found = directivesInText(r.readRecordText(e.abbrevId).text);
      if (found.kind === 'unsure') return found;
      refs.push(...found.refs);
    }
  } catch (e) {
    if (e instanceof BitstreamError) return { kind: 'unsure', detail: `bitcode asm scan: ${e.message}` };
    return { kind: 'unsure', detail: `bitcode asm scan: ${(e as Error).message}` };
  }
  return { kind: 'ok', refs: dedupe(refs) };
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
