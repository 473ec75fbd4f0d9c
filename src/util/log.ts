import { appendFileSync } from 'node:fs';

export type Level = 'error' | 'warn' | 'info' | 'debug';
const RANK: Record<Level, number> = { error: 0, warn: 1, info: 2, debug: 3 };

/** Appends one JSON line per event to a file; logging never throws into the caller. */
export class Logger {
  constructor(
    private readonly file: string | null,
    private readonly level: Level = 'info',
  ) {}

  log(level: Level, msg: string, fields: Record<string, unknown> = {}): void {
    if (RANK[level] > RANK[this.level]) return;
    const line = JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields }) + '\n';
    try {
      if (this.file) appendFileSync(this.file, line);
      else process.stderr.write(line);
    } catch {
      // A full disk must not take the daemon down with it.
    }
  }
  error(msg: string, f?: Record<string, unknown>): void {
    this.log('error', msg, f);
  }
  warn(msg: string, f?: Record<string, unknown>): void {
    this.log('warn', msg, f);
  }
  info(msg: string, f?: Record<string, unknown>): void {
    this.log('info', msg, f);
  }
  debug(msg: string, f?: Record<string, unknown>): void {
    this.log('debug', msg, f);
  }
}
