/**
 * Byte streams that once made the daemon misbehave (docs/reliability.md "## Fuzzing"),
 * replayed by test/e2e/daemonFuzz.test.ts against a real daemon on every run.
 */
export interface DaemonRegression {
  name: string;
  /** Everything the client writes, in one write. */
  streamHex: string;
  /** Exactly one JSON control reply with ok=true / ok=false, or one 'P' or 'R' reply. */
  reply: 'J-ok' | 'J-error' | 'C';
  /** Change of errors_by_kind.protocol this stream must cause. */
  protocolErrors: number;
}

export const DAEMON_REGRESSIONS: DaemonRegression[] = [
  {
    // Found by 'daemon connections' (seed 14344465): a 'J' frame whose payload is not UTF-8.
    // decodeJson's ProtocolError escaped into dispatch's catch-all: counted as an *internal*
    // error and answered with a 'P' frame the CLI cannot parse. Fixed in dispatch (src/daemon/session.ts).
    name: "'J' frame that is not UTF-8",
    streamHex: '030000004afffe',
    reply: 'J-error',
    protocolErrors: 1,
  },
  {
    name: "'J' frame that is not JSON",
    streamHex: '030000004a7b7b',
    reply: 'J-error',
    protocolErrors: 1,
  },
  {
    // A complete request followed, in the same write, by a header the decoder rejects
    // (length 0xffffffff). Before the FrameDecoder fix the request was dropped and counted as
    // a protocol error, or served, depending on how the socket cut the stream.
    name: 'control request then a bad header in one write',
    streamHex: '120000004a' + Buffer.from('{"op":"status"}').toString('hex').padEnd(34, '20') + 'ffffffff',
    reply: 'J-ok',
    protocolErrors: 0,
  },
];
