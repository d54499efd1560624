import { type Job, Mutex, Queue, Semaphore, Session, WorkQueue } from '../src/index.js';
import {
  cpuMs,
  etcdCpuSeconds,
  fmt,
  grpcMessages,
  leaveTombstones,
  requestsBetween,
  table,
  type BenchContext,
} from './lib.js';

/*
 * npm run bench -- history
 *
 * What the keys deleted since etcd's last compaction cost the recipes that
 * wait in line (docs/compaction.md). etcd keeps a deleted key in its index
 * until a compaction, and a range visits every such key in its span. Each
 * workload runs for BENCH_SECONDS on a fresh name, alternately with no history
 * and with 20,000 deleted keys in each directory its reads range over
 * (named like the recipe's own keys), twice each:
 *   - Mutex: 8 workers, lock → unlock;
 *   - Semaphore(2): 8 workers, acquire → release;
 *   - Queue: 1 producer (one enqueue at a time), 4 consumers;
 *   - WorkQueue: 1 producer (one add at a time), 4 consumers with claim({ ack }).
 * Every worker has its own client (and session); all run in the bench process.
 */

const DELETED = 20_000;

interface Workload {
  name: string;
  /** The directories under `prefix` that the recipe's reads range over, and a key name there for each index. */
  dirs(prefix: string): [string, (i: number) => string][];
  /** Runs until `endAt` (epoch ms); resolves with the operations done. */
  run(ctx: BenchContext, prefix: string, endAt: number): Promise<number>;
}

/** 16 hex digits, like a lease ID (Mutex keys). */
const leaseHex = (i: number) => `7${(0x1a2b3c4d5e00 + i).toString(16).padStart(15, '0')}`;
/** 19 digits, like a nanosecond time or a revision-ordered name, older than any real one. */
const digits = (i: number) => String(1_000_000_000_000_000_000n + BigInt(i));

/** Swallows the rejection of a call that the end of the run aborted; rethrows any other. */
function unlessStopped(stop: AbortSignal): (err: unknown) => undefined {
  return (err) => {
    if (!stop.aborted) throw err;
    return undefined;
  };
}

async function sessions(ctx: BenchContext, n: number): Promise<Session[]> {
  return Promise.all(Array.from({ length: n }, () => Session.create(ctx.client(), { ttl: 30 })));
}

const workloads: Workload[] = [
  {
    name: 'Mutex, 8 workers, lock → unlock',
    dirs: (p) => [[`${p}/`, leaseHex]],
    async run(ctx, p, endAt) {
      let ops = 0;
      const all = await sessions(ctx, 8);
      await Promise.all(
        all.map(async (s) => {
          const m = new Mutex(s, p);
          for (; Date.now() < endAt; ops++) {
            await m.lock();
            await m.unlock();
          }
        }),
      );
      await Promise.all(all.map((s) => s.close()));
      return ops;
    },
  },
  {
    name: 'Semaphore(2), 8 workers, acquire → release',
    dirs: (p) => [[`${p}/queue/`, digits]],
    async run(ctx, p, endAt) {
      let ops = 0;
      const all = await sessions(ctx, 8);
      await Promise.all(
        all.map(async (s) => {
          const sem = new Semaphore(s, p, 2);
          for (; Date.now() < endAt; ops++) await (await sem.acquire()).release();
        }),
      );
      await Promise.all(all.map((s) => s.close()));
      return ops;
    },
  },
  {
    name: 'Queue, 1 producer, 4 consumers',
    dirs: (p) => [
      [`${p}/`, digits],
      [`__${p}/waiters/`, digits],
    ],
    async run(ctx, p, endAt) {
      const producer = new Queue(ctx.client(), p);
      const consumers = Array.from({ length: 4 }, () => new Queue(ctx.client(), p));
      const stop = new AbortController();
      let delivered = 0;
      const taking = consumers.map(async (q) => {
        while (!stop.signal.aborted) {
          await q.dequeue({ signal: stop.signal }).then(() => delivered++, unlessStopped(stop.signal));
        }
      });
      while (Date.now() < endAt) await producer.enqueue('x');
      stop.abort();
      await Promise.all(taking);
      await Promise.all([producer, ...consumers].map((q) => q.close()));
      return delivered;
    },
  },
  {
    name: 'WorkQueue, 1 producer, 4 consumers, claim({ ack })',
    dirs: (p) => [
      [`${p}/jobs/`, (i) => `00100-${digits(i)}`],
      [`${p}/claims/`, (i) => `00100-${digits(i)}`],
      [`${p}/waiters/`, digits],
    ],
    async run(ctx, p, endAt) {
      const [producerSession, ...consumerSessions] = await sessions(ctx, 5);
      const producer = new WorkQueue(producerSession!, p);
      const stop = new AbortController();
      let claimed = 0;
      const working = consumerSessions.map(async (s) => {
        const q = new WorkQueue(s, p);
        let last: Job | undefined;
        while (!stop.signal.aborted) {
          last = await q.claim({ signal: stop.signal, ack: last }).catch(unlessStopped(stop.signal));
          if (last) claimed++;
        }
      });
      while (Date.now() < endAt) await producer.add('x');
      stop.abort();
      await Promise.all(working);
      await Promise.all([producerSession!, ...consumerSessions].map((s) => s.close()));
      return claimed;
    },
  },
];

interface Run {
  deleted: number;
  perSecond: number;
  etcdCpuPerOp: number;
  cpuPerOp: number;
  kvPerOp: number;
}

async function measure(ctx: BenchContext, w: Workload, deleted: number, n: number): Promise<Run> {
  const prefix = `bench/history/${n}-${deleted}`;
  const admin = ctx.client();
  for (const [dir, name] of w.dirs(prefix)) await leaveTombstones(admin, dir, name, deleted);
  const requests = await grpcMessages(ctx.metricsUrl);
  const etcdCpu = await etcdCpuSeconds(ctx.metricsUrl);
  const cpu = process.cpuUsage();
  const start = performance.now();
  const ops = await w.run(ctx, prefix, Date.now() + ctx.seconds * 1000);
  const seconds = (performance.now() - start) / 1000;
  const req = requestsBetween(requests, await grpcMessages(ctx.metricsUrl));
  return {
    deleted,
    perSecond: ops / seconds,
    etcdCpuPerOp: (((await etcdCpuSeconds(ctx.metricsUrl)) - etcdCpu) * 1000) / ops,
    cpuPerOp: cpuMs(cpu) / ops,
    kvPerOp: req.kv / ops,
  };
}

export default async function run(ctx: BenchContext): Promise<void> {
  const rows: (string | number)[][] = [];
  for (const w of workloads) {
    await w.run(ctx, `bench/history/warm-up-${workloads.indexOf(w)}`, Date.now() + 1000);
    const runs: Run[] = [];
    for (const deleted of [0, DELETED, 0, DELETED])
      runs.push(await measure(ctx, w, deleted, rows.length + runs.length));
    const none = runs.filter((r) => r.deleted === 0);
    const mean = (rs: Run[], f: (r: Run) => number) => rs.reduce((sum, r) => sum + f(r), 0) / rs.length;
    for (const r of runs) {
      rows.push([
        w.name,
        r.deleted,
        fmt.n(r.perSecond),
        fmt.ratio(r.perSecond / mean(none, (x) => x.perSecond)),
        fmt.cpu(r.etcdCpuPerOp),
        fmt.ratio(r.etcdCpuPerOp / mean(none, (x) => x.etcdCpuPerOp)),
        fmt.cpu(r.cpuPerOp),
        fmt.n(r.kvPerOp, 2),
      ]);
    }
  }
  table(
    `Keys deleted since the last compaction: ${DELETED.toLocaleString('en')} per directory, ${ctx.seconds} s per run`,
    [
      'workload',
      'deleted per directory',
      'ops/s',
      '÷ none',
      'etcd CPU ms/op',
      '÷ none',
      'client CPU ms/op',
      'KV req/op',
    ],
    rows,
  );
  console.log('\nRuns alternate (none, deleted, none, deleted), each on a fresh name; "÷ none" divides by the mean of');
  console.log("the workload's runs without history. The deleted keys are named like the recipe's own and lie in the");
  console.log('directories its reads range over (docs/compaction.md, "Which reads walk the tombstones").');
}
