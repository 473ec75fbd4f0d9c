import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tempDir } from './env.js';
import { killAtExit, killChild } from './server.js';

export const REDIS_SERVER = '/usr/bin/redis-server';
export const REDIS_CLI = '/usr/bin/redis-cli';

function portFree(port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = createServer();
    s.once('error', () => res(false));
    s.listen(port, '127.0.0.1', () => s.close(() => res(true)));
  });
}

/** A loopback port that is free, with port + 10000 (the cluster bus) free too. */
export async function freeRedisPort(): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const p = 20000 + Math.floor(Math.random() * 10000);
    if ((await portFree(p)) && (await portFree(p + 10000))) return p;
  }
  throw new Error('no free port pair for redis');
}

export function cli(port: number, ...args: string[]): string {
  const r = spawnSync(REDIS_CLI, ['-h', '127.0.0.1', '-p', String(port), ...args], { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`redis-cli ${args.join(' ')}: ${r.stderr}${r.stdout}`);
  return r.stdout.trim();
}

async function until(what: string, fn: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** One `redis-server` on a loopback port in a temp directory, no persistence; stop() kills it and removes the directory. */
export class RedisNode {
  child: ChildProcess | null = null;
  port = 0;
  log = '';
  readonly dir = tempDir('redis');

  constructor(private readonly extra: string[] = []) {}

  async start(port?: number): Promise<this> {
    this.port = port ?? (await freeRedisPort());
    const args = ['--port', String(this.port), '--bind', '127.0.0.1', '--dir', this.dir, '--save', '', '--appendonly', 'no', '--protected-mode', 'no', ...this.extra];
    const child = spawn(REDIS_SERVER, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    killAtExit(child);
    child.stdout!.on('data', (d: Buffer) => (this.log = (this.log + d.toString()).slice(-20_000)));
    child.stderr!.on('data', (d: Buffer) => (this.log = (this.log + d.toString()).slice(-20_000)));
    await until(`redis-server on ${this.port}`, () => /Ready to accept connections/.test(this.log) || child.exitCode !== null, 10_000);
    if (child.exitCode !== null) throw new Error(`redis-server exited: ${this.log}`);
    return this;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  cli(...args: string[]): string {
    return cli(this.port, ...args);
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    return killChild(this.child, signal);
  }

  async stop(): Promise<void> {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A Redis Cluster of `masters` masters with one replica each, all on loopback. */
export class RedisCluster {
  readonly nodes: RedisNode[] = [];

  constructor(
    private readonly masters = 3,
    private readonly extra: string[] = [],
  ) {}

  async start(): Promise<this> {
    for (let i = 0; i < this.masters * 2; i++) {
      const n = new RedisNode([
        '--cluster-enabled',
        'yes',
        '--cluster-config-file',
        'nodes.conf',
        '--cluster-node-timeout',
        '1000',
        '--cluster-replica-validity-factor',
        '0',
        ...this.extra,
      ]);
      this.nodes.push(n);
      await n.start();
    }
    const addrs = this.nodes.map((n) => `127.0.0.1:${n.port}`);
    const r = spawnSync(REDIS_CLI, ['--cluster', 'create', ...addrs, '--cluster-replicas', '1', '--cluster-yes'], { encoding: 'utf8', timeout: 60_000 });
    if (r.status !== 0) throw new Error(`cluster create failed: ${r.stderr}${r.stdout}`);
    await until('cluster ok on every node', () => this.nodes.every((n) => /cluster_state:ok/.test(n.cli('cluster', 'info'))), 30_000);
    // Replicas attached (each master sees its replica), so a failover can happen.
    await until('replicas in sync', () => this.mastersNow().every((n) => /connected_slaves:1/.test(n.cli('info', 'replication'))), 30_000);
    return this;
  }

  /** `redis+cluster://` naming every node. */
  get url(): string {
    return `redis+cluster://${this.nodes.map((n) => `127.0.0.1:${n.port}`).join(',')}`;
  }

  /** Nodes that are masters now (alive ones only). */
  mastersNow(): RedisNode[] {
    return this.nodes.filter((n) => n.child?.exitCode === null && n.child.signalCode === null && /role:master/.test(n.cli('info', 'replication')));
  }

  /** Waits until the cluster is ok again as seen by every live node. */
  async waitOk(ms = 30_000): Promise<void> {
    const live = () => this.nodes.filter((n) => n.child?.exitCode === null && n.child.signalCode === null);
    await until('cluster ok', () => live().every((n) => /cluster_state:ok/.test(n.cli('cluster', 'info'))), ms);
  }

  async stop(): Promise<void> {
    for (const n of this.nodes) await n.stop();
  }
}
