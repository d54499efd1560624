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
 * etcd's own WAL fsync counters show when it is. Each point runs
 * BENCH_SECONDS (at most 3 s), and every name's counter is checked.
 */

const PER_NAME = 10;
const PROCS = 4;

/** etcd's WAL fsync count and total seconds, from /metrics. */
async function fsyncs(metricsUrl: string | undefined): Promise<{ count: number; seconds: number }> {
  if (!metricsUrl) return { count: NaN, seconds: NaN };
  const text = await (await fetch(`${metricsUrl.replace(/\/$/, '')}/metrics`)).text();
  const get = (name: string) => Number(new RegExp(`^${name} ([0-9.e+-]+)$`, 'm').exec(text)?.[1] ?? NaN);
  return {
    count: get('etcd_disk_wal_fsync_duration_seconds_count'),
    seconds: get('etcd_disk_wal_fsync_duration_seconds_sum'),
  };
}

export default async function run(ctx: BenchContext): Promise<void> {
  const seconds = Math.min(ctx.seconds, 3);
  const admin = ctx.client();
  const rows: (string | number)[][] = [];
  let single = NaN;
  let broken = false;
  for (const names of [1, 10, 50, 100]) {
    const prefix = `bench/many/${names}`;
    await admin.kv.txn({
      compare: [],
      failure: [],
      success: Array.from({ length: names }, (_, n) => ({
        request_put: { key: Buffer.from(`${prefix}/counter-${n}`), value: Buffer.from('0') },
      })),
    } as never);
    const group = await WorkerGroup.start(
      ctx.endpoints,
      'manyLocks',
      { names, perName: PER_NAME, prefix },
      { procs: PROCS },
    );
    let run: ReturnType<typeof merged>;
    let req: ReturnType<typeof requestsBetween>;
    let disk: { count: number; seconds: number };
    let elapsed: number;
    try {
      const before = await grpcMessages(ctx.metricsUrl);
      const fs0 = await fsyncs(ctx.metricsUrl);
      const r = await group.run(seconds);
      elapsed = r.elapsed;
      run = merged(r);
      const fs1 = await fsyncs(ctx.metricsUrl);
      disk = { count: fs1.count - fs0.count, seconds: fs1.seconds - fs0.seconds };
      req = requestsBetween(before, await grpcMessages(ctx.metricsUrl));
    } finally {
      await group.close();
    }
    const counters = await admin.getAll().prefix(`${prefix}/counter-`).strings();
    const ok = Array.from(
      { length: names },
      (_, n) => Number(counters[`${prefix}/counter-${n}`]) === (run.counts[`n${n}`] ?? 0),
    ).every(Boolean);
    broken ||= !ok;
    if (names === 1) single = run.perSecond;
    rows.push([
      names,
      names * PER_NAME,
      fmt.n(run.perSecond),
      fmt.ratio(run.perSecond / single),
      fmt.n(run.perSecond / names, 1),
      fmt.n(req.kv / run.ops, 2),
      fmt.cpu(run.cpuPerOp),
      fmt.n(disk.count / elapsed),
      fmt.ms((1000 * disk.seconds) / disk.count),
      `${fmt.n((100 * disk.seconds) / elapsed)} %`,
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
      'etcd fsyncs/s',
      'fsync ms',
      'etcd time in fsync',
      'counters ok',
    ],
    rows,
  );
  console.log("\nKV req/section includes the workload's get + put. etcd fsyncs/s and fsync ms are etcd's own WAL");
  console.log('fsync counters: when the time etcd spends in fsync nears 100 %, the disk is the limit.');
  if (broken) throw new Error('many locks: a counter does not match its sections (mutual exclusion violated)');
}
