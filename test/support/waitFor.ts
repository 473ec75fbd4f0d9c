/** Polls `fn` every `step` ms until it holds; throws naming `what` after `ms`. */
export async function waitFor(what: string, fn: () => boolean, ms = 20_000, step = 50): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, step));
  }
}
