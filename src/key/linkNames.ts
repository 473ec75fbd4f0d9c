/**
 * lld's DTLTO (LLVM ≥ 21) writes each archive member and FatLTO object it hands out to a file of
 * its own, `<output dir>/<name>.<seq>.<lld's PID in upper-case hex>.o`, and every index names the
 * module by that path (llvm/lib/DTLTO/DTLTO.cpp, `addInput`). The PID changes with every link,
 * so keyed as written, every job of such a link, and every job importing from one, would miss on
 * every relink.
 *
 * The backend's object (not IR) does not depend on a module's path: promoted names come from the module
 * hash the index records, and the file's bytes are keyed by content (LLVM's own ThinLTO and DTLTO
 * caches key modules by hash, not path; measured here: objects byte-identical across links under
 * other PIDs). So the PID part of such a name is replaced by PID_PLACEHOLDER in the key, for the
 * jobs of a distribution whose token (lld's PID, decimal) is known, and only where output names
 * are not keyed either (docs/key.md "Names that do not change the bytes") and the output is not IR
 * (textual IR names its module by path: manifest.ts moduleNamesKeyed). Everything else in the
 * name (archive, member, offset, sequence number) stays keyed. A result whose stdout or stderr
 * names a file of the link is not stored (mentionsLink).
 */

export const PID_PLACEHOLDER = '<lld-pid>';

/** Maps a path to its name in the key: the link's serialised inputs with their PID replaced,
 *  anything else unchanged. */
export type Renamer = (path: string) => string;

/** lld's PID as its DTLTO puts it in a serialised input's name (LLVM's `utohexstr`: upper case). */
export function pidHex(token: string): string {
  return BigInt(token).toString(16).toUpperCase();
}

export function linkRenamer(token: string): Renamer | null {
  if (!/^[0-9]{1,19}$/.test(token)) return null;
  const suffix = `.${pidHex(token)}.o`;
  return (path) => {
    if (!path.endsWith(suffix)) return path;
    const stem = path.slice(0, -suffix.length);
    return /\.[0-9]+$/.test(stem) ? `${stem}.${PID_PLACEHOLDER}.o` : path;
  };
}

/** True when `text` names a file of the link: lld's PID as it puts it in names, in decimal
 *  (`prog.1.4711.native.o`) or hex (`lib.a(m.o at 8).2.1267.o`). */
export function mentionsLink(text: Buffer, token: string): boolean {
  if (!text.length) return false;
  const s = text.toString('latin1');
  return s.includes(`.${token}.`) || s.includes(`.${pidHex(token)}.`);
}
