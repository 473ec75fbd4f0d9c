import { connect } from 'node:net';
import { socketDirName } from '../config/cacheDir.js';
import { decodeJson, encodeJson, FrameDecoder, socketPathFor } from '../protocol/clientFrames.js';
import { type ControlRequest, ControlResponse } from '../protocol/control.js';

export type ControlReply = { kind: 'ok'; result: unknown } | { kind: 'failed'; error: string } | { kind: 'unreachable'; error: string };

/** Sends one control request to the daemon of `cacheDir`; an absent daemon is data, not an exception. */
export function askDaemon(cacheDir: string, req: ControlRequest, timeoutMs = 30_000): Promise<ControlReply> {
  return new Promise((resolve) => {
    const sock = connect(socketPathFor(socketDirName(cacheDir), process.getuid!()));
    const decoder = new FrameDecoder(64 << 20);
    let settled = false;
    const done = (r: ControlReply) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => done({ kind: 'unreachable', error: 'daemon did not answer in time' }), timeoutMs);
    sock.on('connect', () => sock.write(encodeJson(req)));
    sock.on('error', (e) => done({ kind: 'unreachable', error: e.message }));
    sock.on('close', () => done({ kind: 'unreachable', error: 'daemon closed the connection' }));
    sock.on('data', (chunk) => {
      try {
        const frame = decoder.push(chunk)[0];
        if (!frame) return;
        const parsed = ControlResponse.safeParse(decodeJson(frame));
        if (!parsed.success) return done({ kind: 'failed', error: 'malformed reply from daemon' });
        done(parsed.data.ok ? { kind: 'ok', result: parsed.data.result } : { kind: 'failed', error: parsed.data.error });
      } catch (e) {
        done({ kind: 'failed', error: (e as Error).message });
      }
    });
  });
}
