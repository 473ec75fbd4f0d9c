/**
 * Splits a response file the way clang does on Linux (llvm::cl::TokenizeGNUCommandLine):
 * space, tab, CR and LF separate arguments; single and double quotes group; backslash escapes
 * the next character, inside either kind of quote too; an empty argument ('' or "") is dropped.
 */
export function tokenizeGnu(text: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quote: '"' | "'" | null = null;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (quote) {
      if (c === quote) quote = null;
      else if (c === '\\' && i + 1 < text.length) cur += text[++i];
      else cur += c;
      continue;
    }
    if (c === '"' || c === "'") {
      quote = c;
    } else if (c === '\\' && i + 1 < text.length) {
      cur += text[++i];
    } else if (c === ' ' || c === '\t' || c === '\r' || c === '\n') {
      if (cur) out.push(cur);
      cur = '';
    } else {
      cur += c;
    }
  }
  if (cur) out.push(cur);
  return out;
}
