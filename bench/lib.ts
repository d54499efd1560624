import { cpus, loadavg } from 'node:os';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Etcd3 } from 'etcd3';
import { type ClientOptions, closeClient, createClient } from '../src/index.js';
import { EtcdCluster, findEtcdBinary, requestCounts } from '../src/testing/index.js';

/*
 * Shared benchmark plumbing: a fresh etcd (data on disk unless --shm), the
 * raw-etcd baselines every benchmark compares against, latency statistics,
 * request counting from etcd's own /metrics, and table printing.
 */

export interface BenchContext {
  /** Client endpoints of the etcd under test. */
  endpoints: string[];
  /** HTTP URL of a member, for /metrics (undefined with ETCD_ENDPOINTS). */
  metricsUrl: string | undefined;
  /** A new client; every client is closed at the end. */
  client(): Etcd3;
  /** Seconds each timed phase runs (BENCH_SECONDS, default 3). */
  seconds: number;
  /** Extra command-line arguments after the benchmark name. */
  args: string[];
  /** With --profile: the folder where benchmarks that support it write CPU profiles. */
  profileDir: string | undefined;
}

/**
 * The per-call deadline of benchmark clients. createClient's default (2 s)
 * is for production; on a shared 2-core machine running several test suites
 * a call can take longer, and one deadline error would end the whole run.
 */
export const CALL_TIMEOUT_MS = 15_000;

/**
 * Options of every benchmark client: the deadline above, and the KV
 * transport (`BENCH_KV_TRANSPORT=grpc-js` measures etcd3's grpc-js path,
 * for an A/B against the default lean one).
 */
export function benchClientOptions(hosts: string[]): ClientOptions {
  const transport = process.env.BENCH_KV_TRANSPORT;
  if (transport !== undefined && transport !== 'lean' && transport !== 'grpc-js') {
    throw new Error(`BENCH_KV_TRANSPORT must be lean or grpc-js, got ${transport}`);
  }
  return { hosts, callTimeoutMs: CALL_TIMEOUT_MS, ...(transport ? { kvTransport: transport } : {}) };
}

export type Benchmark = (ctx: BenchContext) => Promise<void>;

/**
 * Every worker group runs its workload this long (BENCH_WARM_UP, default 6 s)
 * before it is measured, and every in-process contender a third of it. V8
 * compiles the hot paths (grpc-js, protobuf, the library) during the first
 * seconds: the plain STM workload in a worker went 2.1, 1.5, 1.2, then
 * 0.7-0.8 ms of client CPU per commit over consecutive 2 s runs, the raw floor
 * 2.6, 1.2, then 0.8 ms, so a cold 3 s row measured mostly the compiler. A
 * service that coordinates runs warm.
 */
export const WARM_UP_SECONDS = Number(process.env.BENCH_WARM_UP ?? 6);

export async function withBenchEtcd(args: string[], fn: (ctx: BenchContext) => Promise<void>): Promise<void> {
  const external = process.env.ETCD_ENDPOINTS;
  let cluster: EtcdCluster | undefined;
  const clients: Etcd3[] = [];
  try {
    let endpoints: string[];
    let metricsUrl: string | undefined;
    if (external) {
      endpoints = external.split(',');
      metricsUrl = endpoints[0]!.startsWith('http') ? endpoints[0] : `http://${endpoints[0]}`;
    } else {
      const onShm = args.includes('--shm');
      cluster = await EtcdCluster.start({ install: true, dataDir: onShm ? undefined : 'disk', timing: 'default' });
      endpoints = cluster.endpoints;
      metricsUrl = cluster.members[0]!.clientUrl;
      console.log(
        `etcd ${etcdVersion()} at ${endpoints.join(',')}, ` +
          `data ${onShm ? 'on /dev/shm' : `on disk (${cluster.dataDir})`}`,
      );
    }
    console.log(
      `machine: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, node ${process.version}, load ${loadavg()
        .map((l) => l.toFixed(2))
        .join(' ')}, ${new Date().toISOString()}`,
    );
    await fn({
      endpoints,
      metricsUrl,
      client: () => {
        const c = createClient(benchClientOptions(endpoints));
        clients.push(c);
        return c;
      },
      seconds: Number(process.env.BENCH_SECONDS ?? 3),
      args: args.filter((a) => !a.startsWith('--')),
      profileDir: args.includes('--profile') ? profileFolder() : undefined,
    });
  } finally {
    await Promise.all(clients.map((c) => closeClient(c)));
    await cluster?.stop();
  }
}

/** A fresh folder under bench/profiles/ (git-ignored) for this run's CPU profiles. */
function profileFolder(): string {
  return fileURLToPath(new URL(`./profiles/${new Date().toISOString().replace(/[:.]/g, '-')}/`, import.meta.url));
}

function etcdVersion(): string {
  try {
    return execFileSync(findEtcdBinary(), ['--version'], { encoding: 'utf8' })
      .split('\n')[0]!
      .replace('etcd Version: ', '');
  } catch {
    return '?';
  }
}

/** What {@link timed} and {@link interleaved} measure. */
export interface Timed {
  perSecond: number;
  count: number;
  latencies: number[];
  /** This process's CPU time (user + system) per operation, ms. */
  cpuPerOp: number;
}

/** Runs `op` back to back for `seconds` (after a short warm-up); returns ops/s, latencies in ms and CPU ms per op. */
export async function timed(seconds: number, op: () => Promise<unknown>, warmup = 20): Promise<Timed> {
  for (let i = 0; i < warmup; i++) await op();
  const latencies: number[] = [];
  const cpu = process.cpuUsage();
  const start = performance.now();
  const end = start + seconds * 1000;
  let now = start;
  while (now < end) {
    const t = performance.now();
    await op();
    now = performance.now();
    latencies.push(now - t);
  }
  return {
    perSecond: latencies.length / ((now - start) / 1000),
    count: latencies.length,
    latencies,
    cpuPerOp: cpuMs(cpu) / latencies.length,
  };
}

/** CPU ms (user + system) this process used since `since`. */
export function cpuMs(since: NodeJS.CpuUsage): number {
  const used = process.cpuUsage(since);
  return (used.user + used.system) / 1000;
}

/**
 * Times several operations in alternating short rounds, so that drift in the
 * machine (disk flushes, other load) hits all of them alike. Returns one
 * result per operation, as {@link timed} does.
 */
export async function interleaved(seconds: number, ops: (() => Promise<unknown>)[], rounds = 6): Promise<Timed[]> {
  for (const op of ops) {
    const end = performance.now() + (WARM_UP_SECONDS / 3) * 1000;
    while (performance.now() < end) await op();
  }
  const results = ops.map(() => ({ count: 0, latencies: [] as number[], elapsed: 0, cpu: 0 }));
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < ops.length; i++) {
      const res = await timed(seconds / rounds, ops[i]!, r === 0 ? 20 : 2);
      results[i]!.count += res.count;
      results[i]!.latencies.push(...res.latencies);
      results[i]!.elapsed += res.count / res.perSecond;
      results[i]!.cpu += res.cpuPerOp * res.count;
    }
  }
  return results.map((x) => ({
    count: x.count,
    latencies: x.latencies,
    perSecond: x.count / x.elapsed,
    cpuPerOp: x.cpu / x.count,
  }));
}

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = values.slice().sort((a, b) => a - b);
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

/**
 * etcd's own count of gRPC messages received, by method (Range, Txn, Put,
 * DeleteRange, Watch, LeaseKeepAlive...); empty without a metrics URL.
 */
export async function grpcMessages(metricsUrl: string | undefined): Promise<Map<string, number>> {
  return metricsUrl ? new Map((await requestCounts(metricsUrl)).byMethod) : new Map();
}

/**
 * The CPU seconds etcd's process has used (`process_cpu_seconds_total`, 10 ms
 * resolution); NaN without a metrics URL.
 */
export async function etcdCpuSeconds(metricsUrl: string | undefined): Promise<number> {
  if (!metricsUrl) return Number.NaN;
  const text = await (await fetch(`${metricsUrl.replace(/\/$/, '')}/metrics`)).text();
  const m = /^process_cpu_seconds_total\s+([0-9.e+]+)/m.exec(text);
  return m ? Number(m[1]) : Number.NaN;
}

/** The watch events etcd has sent, to every watcher; NaN without a metrics URL. */
export async function watchEventsSent(metricsUrl: string | undefined): Promise<number> {
  return metricsUrl ? (await requestCounts(metricsUrl)).watchEvents : Number.NaN;
}

/**
 * Leaves `n` deleted keys (tombstones, until etcd's next compaction) under
 * `dir`, named `dir + name(i)`: writes and then deletes them 128 per Txn.
 * (Not one prefix delete: etcd 3.4 would then copy a large read buffer into
 * every read for a while, etcd-io/etcd#12256, a cost of its own.)
 */
export async function leaveTombstones(
  client: Etcd3,
  dir: string,
  name: (i: number) => string,
  n: number,
): Promise<void> {
  for (const write of ['put', 'delete'] as const) {
    for (let i = 0; i < n; i += 128) {
      const ops = Array.from({ length: Math.min(128, n - i) }, (_, k) =>
        write === 'put' ? client.put(dir + name(i + k)).value('') : client.delete().key(dir + name(i + k)),
      );
      await client
        .if(`${dir}guard`, 'Create', '==', 0)
        .then(...ops)
        .commit();
    }
  }
}

/** Requests between two {@link grpcMessages} snapshots: KV calls plus watch create/cancel messages, no keepalives. */
export function requestsBetween(
  before: Map<string, number>,
  after: Map<string, number>,
): { kv: number; watch: number; total: number } {
  const d = (k: string) => (after.get(k) ?? 0) - (before.get(k) ?? 0);
  const kv = d('Range') + d('Txn') + d('Put') + d('DeleteRange');
  const watch = d('Watch');
  return { kv, watch, total: kv + watch };
}

export const fmt = {
  n: (x: number, digits = 0) => (Number.isFinite(x) ? x.toFixed(digits) : '-'),
  ms: (x: number) => (Number.isFinite(x) ? x.toFixed(2) : '-'),
  ratio: (x: number) => (Number.isFinite(x) ? `${x.toFixed(2)}×` : '-'),
  /** Client CPU ms per operation. */
  cpu: (x: number) => (Number.isFinite(x) ? x.toFixed(3) : '-'),
};

/** A table row of a {@link timed} result: `what`, ops/s, p50 and p99 ms, the `middle` cells, client CPU ms per op. */
export function timedRow(what: string, r: Timed, ...middle: (string | number)[]): (string | number)[] {
  const p = (q: number) => fmt.ms(percentile(r.latencies, q));
  return [what, fmt.n(r.perSecond), p(50), p(99), ...middle, fmt.cpu(r.cpuPerOp)];
}

/** Prints a markdown table (so the output can be pasted into docs/). */
export function table(title: string, header: string[], rows: (string | number)[][]): void {
  const cells = [header, ...rows.map((r) => r.map(String))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => `| ${r.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  console.log(`\n### ${title}\n`);
  console.log(line(header));
  console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
  for (const r of cells.slice(1)) console.log(line(r));
}

/** Wall-clock time in ms with sub-ms resolution, comparable across processes on one machine. */
export function epochMs(): number {
  return performance.timeOrigin + performance.now();
}

/**
 * Mutex handoffs from sections recorded as [calledAt, acquiredAt, unlockAt]
 * (any processes, epoch ms): sorted by acquisition, a section whose lock()
 * was called before the previous holder's unlock() is a handoff, timed from
 * that unlock() call to the acquisition.
 */
export function mutexHandoffs(records: number[][]): number[] {
  const sorted = records.slice().sort((a, b) => a[1]! - b[1]!);
  const out: number[] = [];
  for (let i = 1; i < sorted.length; i++) {
    const [calledAt, acquiredAt] = sorted[i]!;
    const prevUnlock = sorted[i - 1]![2]!;
    if (calledAt! < prevUnlock) out.push(acquiredAt! - prevUnlock);
  }
  return out;
}

/**
 * FIFO semaphore handoffs from cycles recorded as [calledAt, acquiredAt,
 * releaseAt]: replayed in time order, each acquisition consumes the oldest
 * release not yet consumed; if the acquire was called before that release
 * (it had to wait for it), the time from the release call to the
 * acquisition is a handoff.
 */
export function fifoHandoffs(records: number[][]): number[] {
  const events: [number, 'acquire' | 'release', number][] = [];
  for (const [calledAt, acquiredAt, releaseAt] of records) {
    events.push([acquiredAt!, 'acquire', calledAt!], [releaseAt!, 'release', 0]);
  }
  events.sort((a, b) => a[0] - b[0] || (a[1] === 'acquire' ? -1 : 1));
  const releases: number[] = [];
  const out: number[] = [];
  for (const [t, kind, calledAt] of events) {
    if (kind === 'release') {
      releases.push(t);
      continue;
    }
    const release = releases.shift();
    if (release !== undefined && calledAt < release) out.push(t - release);
  }
  return out;
}
