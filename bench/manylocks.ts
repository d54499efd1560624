import { cpus } from 'node:os';
import { fmt, grpcMessages, requestsBetween, table, type BenchContext } from './lib.js';
import { merged, WorkerGroup } from './workers/pool.js';

/*
 * npm run bench -- manylocks
 *
 * Many independent locks: N lock names with 10 workers each, spread over 4
 * worker processes (worker k of a name in process k % 4; the workers of a
 * process share one session and connection per k ÷ 4). Each section is
 * lock → get + put the name's counter → unlock. As N grows, sections/s
 * should grow until etcd's disk (one fsync per write batch) is the limit;
 * etcd's own WAL fsync counters show when it is, and the client processes'
 * CPU (in cores busy) when they are the limit instead. Each point runs
 * BENCH_SECONDS (at most 3 s), and every name's counter is checked.
 * MANYLOCKS_NAMES=1,10,100 picks the points.
 */

const PER_NAME = 10;
const PROCS = 4;

/** etcd's WAL fsync count and total seconds, and its own CPU seconds, from /metrics. */
async function fsyncs(metricsUrl: string | undefined): Promise<{ count: number; seconds: number; cpu: number }> {
  if (!metricsUrl) return { count: NaN, seconds: NaN, cpu: NaN };
  const text = await (await fetch(`${metricsUrl.replace(/\/$/, '')}/metrics`)).text();
  const get = (name: string) => Number(new RegExp(`^${name} ([0-9.e+-]+)$`, 'm').exec(text)?.[1] ?? NaN);
  return {
    count: get('etcd_disk_wal_fsync_duration_seconds_count'),
    seconds: get('etcd_disk_wal_fsync_duration_seconds_sum'),
    cpu: get('process_cpu_seconds_total'),
  };
}

export default async function run(ctx: BenchContext): Promise<void> {
  const seconds = Math.min(ctx.seconds, 3);
  const admin = ctx.client();
  const rows: (string | number)[][] = [];
  let single = NaN;
  let broken = false;
  const points = (process.env.MANYLOCKS_NAMES ?? '1,10,50,100').split(',').map(Number);
  for (const names of points) {
    const prefix = `bench/many/${names}`;
    // etcd allows 128 operations per Txn: the counters go in chunks.
    for (let from = 0; from < names; from += 100) {
      await admin.kv.txn({
        compare: [],
        failure: [],
        success: Array.from({ length: Math.min(100, names - from) }, (_, i) => ({
          request_put: { key: Buffer.from(`${prefix}/counter-${from + i}`), value: Buffer.from('0') },
        })),
      } as never);
    }
    const group = await WorkerGroup.start(
      ctx.endpoints,
      'manyLocks',
      { names, perName: PER_NAME, prefix },
      { procs: PROCS },
    );
    let run: ReturnType<typeof merged>;
    let req: ReturnType<typeof requestsBetween>;
    let disk: { count: number; seconds: number; cpu: number };
    let wall: number;
    try {
      const before = await grpcMessages(ctx.metricsUrl);
      const fs0 = await fsyncs(ctx.metricsUrl);
      const t0 = performance.now();
      const r = await group.run(seconds);
      run = merged(r);
      // The counters cover the sections that end after the deadline too: divide them by the wall time.
      wall = (performance.now() - t0) / 1000;
      const fs1 = await fsyncs(ctx.metricsUrl);
      disk = { count: fs1.count - fs0.count, seconds: fs1.seconds - fs0.seconds, cpu: fs1.cpu - fs0.cpu };
      req = requestsBetween(before, await grpcMessages(ctx.metricsUrl));
    } finally {
      await group.close();
    }
    const counters = await admin.getAll().prefix(`${prefix}/counter-`).strings();
    const warm = group.warmUp ? merged(group.warmUp) : { counts: {} as Record<string, number> };
    const ok = Array.from(
      { length: names },
      (_, n) => Number(counters[`${prefix}/counter-${n}`]) === (run.counts[`n${n}`] ?? 0) + (warm.counts[`n${n}`] ?? 0),
    ).every(Boolean);
    broken ||= !ok;
    if (names === 1) single = run.ops / wall;
    rows.push([
      names,
      names * PER_NAME,
      fmt.n(run.ops / wall),
      fmt.ratio(run.ops / wall / single),
      fmt.n(run.ops / wall / names, 1),
      fmt.n(req.kv / run.ops, 2),
      fmt.cpu(run.cpuPerOp),
      fmt.n(run.cpuMs / 1000 / wall, 2),
      fmt.n(disk.count / wall),
      fmt.ms((1000 * disk.seconds) / disk.count),
      `${fmt.n((100 * disk.seconds) / wall)} %`,
      fmt.n(disk.cpu / wall, 2),
      ok ? 'yes' : 'NO',
    ]);
  }
  table(
    `Many locks: N names × ${PER_NAME} workers in ${PROCS} processes, ` +
      `lock → get + put the name's counter → unlock, ${seconds} s per point`,
    [
      'names',
      'workers',
      'sections/s',
      '÷ 1 name',
      'per name/s',
      'KV req/section',
      'client CPU ms/section',
      `client cores busy (of ${cpus().length})`,
      'etcd fsyncs/s',
      'fsync ms',
      'etcd time in fsync',
      'etcd cores busy',
      'counters ok',
    ],
    rows,
  );
  console.log("\nKV req/section includes the workload's get + put. etcd fsyncs/s and fsync ms are etcd's own WAL");
  console.log('fsync counters: when the time etcd spends in fsync nears 100 %, the disk is the limit. client cores');
  console.log("busy: CPU seconds the 4 worker processes used per second; etcd cores busy: etcd's own");
  console.log('(process_cpu_seconds_total). When clients and etcd together fill the cores, CPU is the limit.');
  if (broken) throw new Error('many locks: a counter does not match its sections (mutual exclusion violated)');
}
