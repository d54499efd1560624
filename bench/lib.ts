import { cpus, loadavg } from 'node:os';
import { execFileSync } from 'node:child_process';
import { Etcd3 } from 'etcd3';
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
}

export type Benchmark = (ctx: BenchContext) => Promise<void>;

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
      console.log(`etcd ${etcdVersion()} at ${endpoints.join(',')}, data ${onShm ? 'on /dev/shm' : `on disk (${cluster.dataDir})`}`);
    }
    console.log(`machine: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, node ${process.version}, load ${loadavg().map((l) => l.toFixed(2)).join(' ')}, ${new Date().toISOString()}`);
    await fn({
      endpoints,
      metricsUrl,
      client: () => {
        const c = new Etcd3({ hosts: endpoints });
        clients.push(c);
        return c;
      },
      seconds: Number(process.env.BENCH_SECONDS ?? 3),
      args: args.filter((a) => !a.startsWith('--')),
    });
  } finally {
    for (const c of clients) c.close();
    await cluster?.stop();
  }
}

function etcdVersion(): string {
  try {
    return execFileSync(findEtcdBinary(), ['--version'], { encoding: 'utf8' }).split('\n')[0]!.replace('etcd Version: ', '');
  } catch {
    return '?';
  }
}

/** Runs `op` back to back for `seconds` (after a short warm-up); returns ops/s and latencies in ms. */
export async function timed(seconds: number, op: () => Promise<unknown>, warmup = 20): Promise<{ perSecond: number; count: number; latencies: number[] }> {
  for (let i = 0; i < warmup; i++) await op();
  const latencies: number[] = [];
  const start = performance.now();
  const end = start + seconds * 1000;
  let now = start;
  while (now < end) {
    const t = performance.now();
    await op();
    now = performance.now();
    latencies.push(now - t);
  }
  return { perSecond: latencies.length / ((now - start) / 1000), count: latencies.length, latencies };
}

/**
 * Times several operations in alternating short rounds, so that drift in the
 * machine (disk flushes, other load) hits all of them alike. Returns one
 * result per operation, as {@link timed} does.
 */
export async function interleaved(seconds: number, ops: (() => Promise<unknown>)[], rounds = 6): Promise<{ perSecond: number; count: number; latencies: number[] }[]> {
  const results = ops.map(() => ({ count: 0, latencies: [] as number[], elapsed: 0 }));
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < ops.length; i++) {
      const res = await timed(seconds / rounds, ops[i]!, r === 0 ? 20 : 2);
      results[i]!.count += res.count;
      results[i]!.latencies.push(...res.latencies);
      results[i]!.elapsed += res.count / res.perSecond;
    }
  }
  return results.map((x) => ({ count: x.count, latencies: x.latencies, perSecond: x.count / x.elapsed }));
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

/** Requests between two {@link grpcMessages} snapshots: KV calls plus watch create/cancel messages, no keepalives. */
export function requestsBetween(before: Map<string, number>, after: Map<string, number>): { kv: number; watch: number; total: number } {
  const d = (k: string) => (after.get(k) ?? 0) - (before.get(k) ?? 0);
  const kv = d('Range') + d('Txn') + d('Put') + d('DeleteRange');
  const watch = d('Watch');
  return { kv, watch, total: kv + watch };
}

export const fmt = {
  n: (x: number, digits = 0) => (Number.isFinite(x) ? x.toFixed(digits) : '-'),
  ms: (x: number) => (Number.isFinite(x) ? x.toFixed(2) : '-'),
  ratio: (x: number) => (Number.isFinite(x) ? `${x.toFixed(2)}×` : '-'),
};

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
