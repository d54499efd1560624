import { Mutex, Session } from '../src/index.js';
import {
  cpuMs,
  fmt,
  grpcMessages,
  interleaved,
  mutexHandoffs,
  percentile,
  requestsBetween,
  table,
  type BenchContext,
  type Timed,
} from './lib.js';
import { merged, WorkerGroup } from './workers/pool.js';
import { formatSummary, summarize } from './workers/profile-summary.js';

/*
 * npm run bench -- mutex
 *
 * (a) raw floor: create-if-absent Txn + delete per cycle
 * (b) our Mutex, uncontended lock+unlock
 * (c) etcd3's built-in Lock acquire+release
 * (d) contended: W workers, each on its own connection, lock → read-modify-write a counter → unlock,
 *     all in one worker process, and (W = 8, 32) spread over 4 worker processes
 * (e) chain floor: delete, range, get, put in sequence: the least a contended section can cost
 * plus a scale run with 1000 queued waiters.
 */

interface ContendedResult {
  workers: number;
  procs: number;
  sections: number;
  perSecond: number;
  handoffs: number[];
  counterOk: boolean;
  kvPerSection: number;
  watchPerSection: number;
  /** Client CPU ms per section, summed over the worker processes. */
  cpuPerSection: number;
  /** The chain floor in a worker process, measured in the slices right before this row's. */
  chainPerSecond?: number;
}

/** A contended row: W workers, each on its own connection and session, spread over `procs` worker processes. */
interface Contender {
  workers: number;
  procs: number;
  counter: string;
  group: WorkerGroup;
  runs: ReturnType<typeof merged>[];
  elapsed: number;
  kv: number;
  watch: number;
  chainOps: number;
  chainElapsed: number;
}

/**
 * The contended rows and the chain floor, all set up first (every worker
 * connected and its session created), then run in alternating slices, each
 * row right after a slice of the chain floor in a worker process: the load
 * of this shared machine drifts within minutes, and a row and its floor
 * should see the same drift. With `profileDir`, the W = 8 one-process row's
 * worker is CPU-profiled (BENCH_PROFILE_PROCS=4: the four-process row's workers).
 */
async function contendedRows(
  ctx: BenchContext,
  shapes: readonly (readonly [number, number])[],
  seconds: number,
  profileDir?: string,
): Promise<ContendedResult[]> {
  const admin = ctx.client();
  const slices = 3;
  const contenders: Contender[] = [];
  const chain = await WorkerGroup.start(ctx.endpoints, 'chain', { prefix: 'bench/mutex/chain-worker' }, { procs: 1 });
  try {
    for (const [workers, procs] of shapes) {
      const counter = `bench/mutex/counter-${workers}-${procs}`;
      await admin.put(counter).value('0');
      const profile =
        profileDir && workers === 8 && procs === Number(process.env.BENCH_PROFILE_PROCS ?? 1) ? profileDir : undefined;
      const group = await WorkerGroup.start(
        ctx.endpoints,
        'mutex',
        { workers, lock: `bench/mutex/lock-${workers}-${procs}`, counter },
        { procs, profileDir: profile },
      );
      contenders.push({
        workers,
        procs,
        counter,
        group,
        runs: [],
        elapsed: 0,
        kv: 0,
        watch: 0,
        chainOps: 0,
        chainElapsed: 0,
      });
    }
    for (let slice = 0; slice < slices; slice++) {
      for (const c of contenders) {
        const floor = await chain.run(seconds / slices);
        c.chainOps += merged(floor).ops;
        c.chainElapsed += floor.elapsed;
        const before = await grpcMessages(ctx.metricsUrl);
        const r = await c.group.run(seconds / slices);
        const req = requestsBetween(before, await grpcMessages(ctx.metricsUrl));
        c.runs.push(merged(r));
        c.elapsed += r.elapsed;
        c.kv += req.kv;
        c.watch += req.watch;
      }
    }
    const rows: ContendedResult[] = [];
    for (const c of contenders) {
      const ops = c.runs.reduce((t, r) => t + r.ops, 0);
      const cpu = c.runs.reduce((t, r) => t + r.cpuMs, 0);
      const value = Number(await admin.get(c.counter).string());
      rows.push({
        workers: c.workers,
        procs: c.procs,
        sections: ops,
        perSecond: ops / c.elapsed,
        handoffs: c.runs.flatMap((r) => mutexHandoffs(r.records)),
        counterOk: value === ops + (c.group.warmUp ? merged(c.group.warmUp).ops : 0),
        // The workload's own get + put are not the lock's cost.
        kvPerSection: (c.kv - 2 * ops) / ops,
        watchPerSection: c.watch / ops,
        cpuPerSection: cpu / ops,
        chainPerSecond: c.chainOps / c.chainElapsed,
      });
    }
    return rows;
  } finally {
    await Promise.all([chain.close(), ...contenders.map((c) => c.group.close())]);
  }
}

/** 1000 waiters queued at once (over 25 connections), each takes the lock once. */
async function scale(ctx: BenchContext, waiters: number): Promise<ContendedResult> {
  const clients = Array.from({ length: 25 }, () => ctx.client());
  const sessions = await Promise.all(
    Array.from({ length: waiters }, (_, i) => Session.create(clients[i % clients.length]!, { ttl: 60 })),
  );
  const handoffs: number[] = [];
  let sections = 0;
  let lastUnlockCall = 0;
  const before = await grpcMessages(ctx.metricsUrl);
  const cpu = process.cpuUsage();
  const started = performance.now();
  await Promise.all(
    sessions.map(async (session) => {
      const m = new Mutex(session, 'bench/mutex/scale');
      await m.lock();
      const acquiredAt = performance.now();
      if (lastUnlockCall > 0) handoffs.push(acquiredAt - lastUnlockCall);
      sections++;
      lastUnlockCall = performance.now();
      await m.unlock();
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  const cpuPerSection = cpuMs(cpu) / sections;
  const after = await grpcMessages(ctx.metricsUrl);
  const req = requestsBetween(before, after);
  await Promise.all(sessions.map((s) => s.close()));
  return {
    workers: waiters,
    procs: 1,
    sections,
    perSecond: sections / elapsed,
    handoffs,
    counterOk: sections === waiters,
    kvPerSection: req.kv / sections,
    watchPerSection: req.watch / sections,
    cpuPerSection,
  };
}

export default async function run(ctx: BenchContext): Promise<void> {
  const s = ctx.seconds;
  const profileDir = ctx.profileDir ? `${ctx.profileDir}mutex-w8` : undefined;
  // MUTEX_CONTENDED_ONLY=1: only the W = 8 rows and their floor, for quick before/after comparisons.
  if (process.env.MUTEX_CONTENDED_ONLY) {
    const rows = await contendedRows(
      ctx,
      [
        [8, 1],
        [8, 4],
      ] as const,
      s,
      profileDir,
    );
    printContended(rows, undefined, undefined, profileDir);
    return;
  }
  const chain = await uncontended(ctx);
  const shapes = [
    [2, 1],
    [8, 1],
    [8, 4],
    [32, 1],
    [32, 4],
  ] as const;
  const rows = await contendedRows(ctx, shapes, s, profileDir);
  const scaleRun = await scale(ctx, 1000);
  printContended(rows, chain, scaleRun, profileDir);
}

/** The uncontended table; returns the chain floor (e), which the contended rows are divided by. */
async function uncontended(ctx: BenchContext): Promise<Timed> {
  const client = ctx.client();
  const s = ctx.seconds;

  // (a) raw floor: the two writes a lock cycle cannot avoid.
  const floorKey = Buffer.from('bench/mutex/floor');
  const floorOp = async () => {
    await client.if(floorKey, 'Create', '==', 0).then(client.put(floorKey).value('')).commit();
    await client.delete().key(floorKey);
  };
  // (b) our Mutex, uncontended.
  const session = await Session.create(client, { ttl: 30 });
  const m = new Mutex(session, 'bench/mutex/solo');
  const oursOp = async () => {
    await m.lock();
    await m.unlock();
  };
  // (c) etcd3's Lock: grants a lease per acquire, fails fast when held.
  const etcd3Op = async () => {
    const lock = client.lock('bench/mutex/etcd3');
    await lock.acquire();
    await lock.release();
  };
  // (e) chain floor.
  const chainKey = 'bench/mutex/chain';
  await client.put(chainKey).value('0');
  const chainOp = async () => {
    await client.delete().key('bench/mutex/chain-lock');
    await client.getAll().prefix('bench/mutex/chain-lock').limit(2).keys();
    const n = Number(await client.get(chainKey).string());
    await client.put(chainKey).value(String(n + 1));
  };
  const [floor, ours, etcd3Lock, chain] = await interleaved(s, [floorOp, oursOp, etcd3Op, chainOp]);
  // Requests per uncontended cycle, counted apart (etcd's counters cannot split interleaved rounds).
  const reqBefore = await grpcMessages(ctx.metricsUrl);
  for (let i = 0; i < 100; i++) await oursOp();
  const oursReq = requestsBetween(reqBefore, await grpcMessages(ctx.metricsUrl)).kv / 100;
  await session.close();

  table(
    'Uncontended (one client)',
    ['what', 'cycles/s', 'p50 ms', 'p99 ms', 'ratio', 'KV req/cycle', 'client CPU ms/cycle'],
    [
      [
        '(a) raw floor: create-if-absent Txn + delete',
        fmt.n(floor!.perSecond),
        fmt.ms(percentile(floor!.latencies, 50)),
        fmt.ms(percentile(floor!.latencies, 99)),
        '1.00×',
        '2',
        fmt.cpu(floor!.cpuPerOp),
      ],
      [
        '(b) etcd-recipes Mutex lock+unlock',
        fmt.n(ours!.perSecond),
        fmt.ms(percentile(ours!.latencies, 50)),
        fmt.ms(percentile(ours!.latencies, 99)),
        `${fmt.ratio(ours!.perSecond / floor!.perSecond)} of floor`,
        fmt.n(oursReq, 2),
        fmt.cpu(ours!.cpuPerOp),
      ],
      [
        '(c) etcd3 Lock acquire+release',
        fmt.n(etcd3Lock!.perSecond),
        fmt.ms(percentile(etcd3Lock!.latencies, 50)),
        fmt.ms(percentile(etcd3Lock!.latencies, 99)),
        `ours = ${fmt.ratio(ours!.perSecond / etcd3Lock!.perSecond)} etcd3`,
        '2 + 2 lease',
        fmt.cpu(etcd3Lock!.cpuPerOp),
      ],
      [
        '(e) chain floor: delete, range, get, put',
        fmt.n(chain!.perSecond),
        fmt.ms(percentile(chain!.latencies, 50)),
        fmt.ms(percentile(chain!.latencies, 99)),
        '',
        '4',
        fmt.cpu(chain!.cpuPerOp),
      ],
    ],
  );

  return chain!;
}

function printContended(
  rows: ContendedResult[],
  chain: Timed | undefined,
  scaleRun: ContendedResult | undefined,
  profileDir: string | undefined,
): void {
  const all = scaleRun ? [...rows, scaleRun] : rows;
  table(
    'Contended: W workers on separate connections, lock → get+put counter → unlock',
    [
      'W',
      'processes',
      'sections/s',
      '÷ chain floor (e)',
      'chain floor in a worker /s',
      '÷ it',
      'handoff p50 ms',
      'handoff p99 ms',
      'lock KV req/section',
      'watch msgs/section',
      'client CPU ms/section',
      'counter ok',
    ],
    all.map((r) => [
      r === scaleRun ? `${r.workers} (queued once each, no workload)` : r.workers,
      r === scaleRun ? '1 (bench)' : r.procs,
      fmt.n(r.perSecond),
      r === scaleRun || !chain ? '' : fmt.ratio(r.perSecond / chain.perSecond),
      r.chainPerSecond === undefined ? '' : fmt.n(r.chainPerSecond),
      r.chainPerSecond === undefined ? '' : fmt.ratio(r.perSecond / r.chainPerSecond),
      fmt.ms(percentile(r.handoffs, 50)),
      fmt.ms(percentile(r.handoffs, 99)),
      fmt.n(r.kvPerSection, 2),
      fmt.n(r.watchPerSection, 2),
      fmt.cpu(r.cpuPerSection),
      r.counterOk ? 'yes' : 'NO',
    ]),
  );
  console.log('\nlock KV req/section counts every Range/Txn/Put/DeleteRange etcd received for the lock itself (the');
  console.log("workload's get+put are subtracted); watch msgs are watch create/cancel messages. Of these, only the");
  console.log(
    "holder's delete and the successor's post-wake range lie on the handoff path; the acquire Txn, the watch",
  );
  console.log("and the confirming range happen while the waiter is queued. A successor in the holder's process is");
  console.log("handed the lock by the delete's reply (core/handoff.ts) and sends no post-wake range.");
  console.log('client CPU ms/section is the CPU time of');
  console.log('all worker processes during the run (user + system), divided by the sections, the workload included.');
  console.log('The chain floor in a worker is (e) run in a worker process like the rows, in the slices right before');
  console.log("each row's, so that both see the same load.");
  if (profileDir)
    console.log(
      formatSummary(
        `Mutex W = 8, ${process.env.BENCH_PROFILE_PROCS ?? 1} process(es) (self time)`,
        summarize(profileDir),
        20,
      ),
    );
  if (all.some((r) => !r.counterOk)) throw new Error('counter mismatch: mutual exclusion violated');
}
