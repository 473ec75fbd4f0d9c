/**
 * Every constant the native client (client/) and the daemon must agree on, defined
 * once. client/limits.h is generated from this file (`node dist/src/protocol/limits.js --write
 * client/limits.h`, run by `npm run build`); test/unit/limits.test.ts fails when the committed
 * header differs from what this file generates.
 */

/** Version byte of the 'C' frame. 2: 'R' and 'D' carry the exit status and the signal apart. */
export const PROTOCOL_VERSION = 2;

export const FRAME_COMPILE = 0x43; // 'C'
export const FRAME_RESULT = 0x52; // 'R'
export const FRAME_PASSTHROUGH = 0x50; // 'P'
export const FRAME_JSON = 0x4a; // 'J'
export const FRAME_COMPILE_YOURSELF = 0x4d; // 'M'
export const FRAME_DONE = 0x44; // 'D'
export const FRAME_ACK = 0x41; // 'A'
/** Keepalive, daemon → client: the job is still being worked on. */
export const FRAME_WAIT = 0x57; // 'W'
/** A whole DTLTO distribution, client → daemon: the 'C' layout with the compiler `distribute`
 * and the distributor's arguments; answered with one 'R' (or 'P': the client runs the Node CLI). */
export const FRAME_DISTRIBUTE = 0x54; // 'T'
/** A miss the client stores itself, daemon → client: u8 'S' then a memo file (memo.v1) whose
 * output digests and sizes are zero; answered with 'E' (stored) or 'D' (docs/protocol.md). */
export const FRAME_STORE_YOURSELF = 0x53; // 'S'
/** client → daemon after 'S' or 'H': u8 'E', u8 memo written, u32 n, n × (32 hex digest, u64 size). */
export const FRAME_STORED = 0x45; // 'E'
/** A team-cache hit the client stores and serves itself, daemon → client: u8 'H', u32 memo
 * length, the memo (filled in), then per output u32 length + bytes; answered with 'E'. */
export const FRAME_HIT_STORE = 0x48; // 'H'

/** Flag bits of the compile request. */
export const FLAG_STDERR_TTY = 1;
/** The client can run the compiler on a miss itself and report back ('M', 'D', 'A'). */
export const FLAG_COMPILES_ON_MISS = 2;
/** With FLAG_COMPILES_ON_MISS: the client can also store a clean miss ('S', 'E') and a
 * team-cache hit ('H', 'E') itself. */
export const FLAG_STORES_ON_MISS = 4;
/** With FLAG_COMPILES_ON_MISS: the daemon's 'M' and 'S' carry a u8 of COMPILE_OPTION_* bits
 * right after the type, saying how the client is to run the compiler. */
export const FLAG_COMPILE_OPTIONS = 8;
/** With FLAG_COMPILE_OPTIONS: the client can run the compiler with one argument replaced so that
 * the object is written to a temp name, which it stores from and then renames onto the output
 * (COMPILE_OPTION_REDIRECT, docs/protocol.md "Output redirect"). */
export const FLAG_REDIRECTS_OUTPUT = 16;
/** Append `-fcolor-diagnostics` to the compiler's arguments: clang sees a pipe, the user a
 * terminal (the daemon strips the colour before it stores the diagnostics). */
export const COMPILE_OPTION_COLOUR = 1;
/** The options byte is followed by an output redirect: u32 argument index, str replacement, str
 * temp path, str output path (only to a client that set FLAG_REDIRECTS_OUTPUT). */
export const COMPILE_OPTION_REDIRECT = 2;

/** Largest 'C' payload: the client falls back rather than send more; the daemon rejects more. */
export const MAX_REQUEST_PAYLOAD = 16 * 1024 * 1024;
/** Largest compiler output per stream (stdout, stderr) that is captured, reported and stored.
 * Beyond it the client passes the output straight through and reports nothing. */
export const MAX_OUTPUT_STREAM = 16 * 1024 * 1024;
/** Size of a 'D' or 'R' payload: type, i32 exit, i32 signal, two length-prefixed streams. */
export const RESULT_OVERHEAD = 1 + 4 + 4 + 4 + 4;
/** Largest 'D' payload: both streams at their limit. */
export const MAX_DONE_PAYLOAD = RESULT_OVERHEAD + 2 * MAX_OUTPUT_STREAM;
/** Largest reply payload the client buffers; larger replies make it fall back. */
export const MAX_REPLY_PAYLOAD = 256 * 1024 * 1024;
/** Size of an 'E' payload reporting n outputs. */
export function storedPayloadSize(n: number): number {
  return 1 + 1 + 4 + n * (32 + 8);
}
/** Largest signal number carried in 'R'/'D'. */
export const MAX_SIGNAL = 64;

/** Client timing defaults (milliseconds), each overridable through the environment. */
export const DEFAULT_START_TIMEOUT_MS = 3000; // LTOCACHE_START_TIMEOUT_MS
export const DEFAULT_SILENCE_TIMEOUT_MS = 10_000; // LTOCACHE_SILENCE_TIMEOUT_MS
/** The daemon sends 'W' at this interval while a job is in progress (well under the silence
 * timeout). */
export const KEEPALIVE_INTERVAL_MS = 1000;
/** A failed daemon start is remembered this long: later jobs skip the spawn. */
export const START_FAILURE_MEMORY_S = 30;
/** The client's markers beside a daemon's socket (`<hash>.sock` → `<hash><suffix>`): the mtime of a
 * failed daemon start, and of a daemon found silent for the silence timeout. */
export const START_FAILURE_MARKER_SUFFIX = '.startfail';
export const SILENT_MARKER_SUFFIX = '.silent';

/** Memo files (docs/memo.md): checks, outputs, whole-file size, one name or value. */
export const MEMO_MAX_CHECKS = 65_536;
export const MEMO_MAX_OUTPUTS = 16;
export const MEMO_MAX_BYTES = 160 << 20;
export const MEMO_MAX_NAME = 65_536;
/**
 * Largest file a memo checks by content when it is not a rewritten one (an index): a larger file
 * that was not settled when hashed gets no memo (src/key/observed.ts memoable, docs/memo.md), as
 * the client would hash it again on every hit.
 */
export const MEMO_CONTENT_CHECK_MAX_BYTES = 1 << 20;
/** A team memo (src/memo/teamMemo.ts): sent base64 in one JSON message of the team protocol. */
export const TEAM_MEMO_MAX_BYTES = 512 << 10;
/** Team memos one `scope` reply carries at most (its bytes are also bounded by the bundle limit). */
export const SCOPE_MAX_MEMOS = 20_000;
/** Keys one team-cache `gets` request names at most. */
export const GETS_MAX_KEYS = 64;
/** A team pack (cache-schema/teampack.v1.md): memos and blobs it indexes at most. */
export const TEAM_PACK_MAX_MEMOS = SCOPE_MAX_MEMOS;
export const TEAM_PACK_MAX_BLOBS = SCOPE_MAX_MEMOS * MEMO_MAX_OUTPUTS;
/** Distribution memos (docs/dtlto.md, cache-schema/distmemo.v1.md): jobs and checks of one file
 * (as many jobs as a distribution file may hold; its size is MEMO_MAX_BYTES too). */
export const DIST_MEMO_MAX_JOBS = 100_000;
export const DIST_MEMO_MAX_CHECKS = 1_000_000;
/** A distribution file larger than this is not looked up in the memo (the daemon reads it). */
export const DIST_MEMO_MAX_FILE = 64 << 20;

/**
 * V8 young-generation semi-space of the daemon, in MiB (`--max-semi-space-size`), passed by every
 * launcher (client, CLI, systemd unit): the default 16 MiB lets per-job garbage grow the daemon's
 * RSS by ≈ 45 MB; 2 MiB keeps it ≈ 30 MB lower for a few more cheap scavenges (docs/benchmarks.md,
 * daemon memory).
 */
export const DAEMON_SEMI_SPACE_MB = 2;

/**
 * glibc `MALLOC_ARENA_MAX` in the daemon's environment, set by every launcher unless the user set
 * it: the thread pool's (LevelDB, file I/O) per-thread malloc arenas otherwise hold ≈ 20 MB after
 * a few thousand daemon-path hits (docs/benchmarks.md, daemon memory). The daemon never passes
 * its own environment to a compiler (jobs run with the client's).
 */
export const DAEMON_MALLOC_ARENA_MAX = 2;

/**
 * The generation of the key's rules, in the name of every memo (a job's, a distribution's) and of
 * every team memo scope. A memo lists the checks of the key that wrote it: a daemon whose key
 * reads more (a fixed omission) must never find one written under older rules, which would pass
 * without looking at what is new. Bumped by every change to what the key reads;
 * test/unit/keyRules.test.ts fails when src/key changes without it.
 */
export const KEY_RULES_EPOCH = 5;
/** The first bytes hashed for a job memo's name (docs/memo.md). */
export const MEMO_NAME_TAG = `ltocache-memo-v1-e${KEY_RULES_EPOCH}`;
/** The first bytes hashed for a distribution memo's name (cache-schema/distmemo.v1.md). */
export const DIST_MEMO_NAME_TAG = `ltocache-dist-v1-e${KEY_RULES_EPOCH}`;

/** Length of the base64 text of n bytes. */
export function base64Length(n: number): number {
  return 4 * Math.ceil(n / 3);
}

const ENTRIES: [string, number][] = [
  ['PROTOCOL_VERSION', PROTOCOL_VERSION],
  ['KEY_RULES_EPOCH', KEY_RULES_EPOCH],
  ['FRAME_COMPILE', FRAME_COMPILE],
  ['FRAME_RESULT', FRAME_RESULT],
  ['FRAME_PASSTHROUGH', FRAME_PASSTHROUGH],
  ['FRAME_JSON', FRAME_JSON],
  ['FRAME_COMPILE_YOURSELF', FRAME_COMPILE_YOURSELF],
  ['FRAME_DONE', FRAME_DONE],
  ['FRAME_ACK', FRAME_ACK],
  ['FRAME_WAIT', FRAME_WAIT],
  ['FRAME_DISTRIBUTE', FRAME_DISTRIBUTE],
  ['FRAME_STORE_YOURSELF', FRAME_STORE_YOURSELF],
  ['FRAME_STORED', FRAME_STORED],
  ['FRAME_HIT_STORE', FRAME_HIT_STORE],
  ['FLAG_STDERR_TTY', FLAG_STDERR_TTY],
  ['FLAG_COMPILES_ON_MISS', FLAG_COMPILES_ON_MISS],
  ['FLAG_STORES_ON_MISS', FLAG_STORES_ON_MISS],
  ['FLAG_COMPILE_OPTIONS', FLAG_COMPILE_OPTIONS],
  ['FLAG_REDIRECTS_OUTPUT', FLAG_REDIRECTS_OUTPUT],
  ['COMPILE_OPTION_COLOUR', COMPILE_OPTION_COLOUR],
  ['COMPILE_OPTION_REDIRECT', COMPILE_OPTION_REDIRECT],
  ['MAX_REQUEST_PAYLOAD', MAX_REQUEST_PAYLOAD],
  ['MAX_OUTPUT_STREAM', MAX_OUTPUT_STREAM],
  ['RESULT_OVERHEAD', RESULT_OVERHEAD],
  ['MAX_DONE_PAYLOAD', MAX_DONE_PAYLOAD],
  ['MAX_REPLY_PAYLOAD', MAX_REPLY_PAYLOAD],
  ['MAX_SIGNAL', MAX_SIGNAL],
  ['DEFAULT_START_TIMEOUT_MS', DEFAULT_START_TIMEOUT_MS],
  ['DEFAULT_SILENCE_TIMEOUT_MS', DEFAULT_SILENCE_TIMEOUT_MS],
  ['KEEPALIVE_INTERVAL_MS', KEEPALIVE_INTERVAL_MS],
  ['START_FAILURE_MEMORY_S', START_FAILURE_MEMORY_S],
  ['MEMO_MAX_CHECKS', MEMO_MAX_CHECKS],
  ['MEMO_MAX_OUTPUTS', MEMO_MAX_OUTPUTS],
  ['MEMO_MAX_BYTES', MEMO_MAX_BYTES],
  ['MEMO_MAX_NAME', MEMO_MAX_NAME],
  ['TEAM_PACK_MAX_MEMOS', TEAM_PACK_MAX_MEMOS],
  ['TEAM_PACK_MAX_BLOBS', TEAM_PACK_MAX_BLOBS],
  ['DIST_MEMO_MAX_JOBS', DIST_MEMO_MAX_JOBS],
  ['DIST_MEMO_MAX_CHECKS', DIST_MEMO_MAX_CHECKS],
  ['DIST_MEMO_MAX_FILE', DIST_MEMO_MAX_FILE],
  ['DAEMON_SEMI_SPACE_MB', DAEMON_SEMI_SPACE_MB],
  ['DAEMON_MALLOC_ARENA_MAX', DAEMON_MALLOC_ARENA_MAX],
];

const STRINGS: [string, string][] = [
  ['MEMO_NAME_TAG', MEMO_NAME_TAG],
  ['DIST_MEMO_NAME_TAG', DIST_MEMO_NAME_TAG],
  ['START_FAILURE_MARKER_SUFFIX', START_FAILURE_MARKER_SUFFIX],
  ['SILENT_MARKER_SUFFIX', SILENT_MARKER_SUFFIX],
];

/** The text of client/limits.h. */
export function limitsHeader(): string {
  const lines = [
    '/* Generated from src/protocol/limits.ts by `node dist/src/protocol/limits.js --write',
    ' * client/limits.h`. Do not edit: change limits.ts and regenerate. */',
    '#ifndef LTOCACHE_LIMITS_H',
    '#define LTOCACHE_LIMITS_H',
    ...ENTRIES.map(([k, v]) => `#define LTOC_${k} ${v}u`),
    ...STRINGS.map(([k, v]) => `#define LTOC_${k} ${JSON.stringify(v)}`),
    '#endif',
    '',
  ];
  return lines.join('\n');
}

const { argv } = process;
if (argv[1]?.endsWith('/protocol/limits.js') && argv[2] === '--write') {
  const { writeFileSync } = await import('node:fs');
  writeFileSync(argv[3] ?? 'client/limits.h', limitsHeader());
}
