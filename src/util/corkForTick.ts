import type { Writable } from 'node:stream';

const corked = new WeakSet<Writable>();

/**
 * Holds the writes made to `socket` in the current tick and flushes them together on the next
 * (one `writev` instead of one `write` per message: a batch of 32 requests, or a reply's text and
 * binary frames, cost one system call). Calls within the tick after the first do nothing.
 */
export function corkForTick(socket: Writable | undefined): void {
  if (!socket || corked.has(socket) || socket.destroyed) return;
  corked.add(socket);
  socket.cork();
  process.nextTick(() => {
    corked.delete(socket);
    socket.uncork();
  });
}

/** The TCP or TLS socket under a `ws` WebSocket (its `_socket`, which `ws` does not type). */
export function socketOf(ws: object): Writable | undefined {
  return (ws as { _socket?: Writable })._socket;
}
