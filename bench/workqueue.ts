import { Queue, Session, WorkQueue } from '../src/index.js';
import type { Etcd3 } from 'etcd3';
import {
  cpuMs,
  etcdCpuSeconds,
  fmt,
  grpcMessages,
  leaveTombstones,
  percentile,
  requestsBetween,
  table,
  watchEventsSent,
  type BenchContext,
} from './lib.js';
import { merged, WorkerGroup } from './workers/pool.js';
import { formatSummary, summarize } from './workers/profile-summary.js';

/*
 * npm run bench -- workqueue
 *
 * (a) 1 producer (one add at a time) and 4 consumers, each on its own
 *     connection, for BENCH_SECONDS, in worker processes:
 *       - raw floor: a put per job, and a delete by the consumer it is
 *         handed to in process (no coordination at all), one process;
 *       - Queue (enqueue / dequeue), one process and 4 processes;
 *       - WorkQueue (add / claim + ack), one process and 4 processes;
 *       - WorkQueue (add / claim({ ack: last })), the ack carrying the next
 *         claim's join: one process and 4 processes.
 *     delivered/s counts items dequeued (or acked) within the run; latency
 *     runs from add() resolving to ack() resolving (dequeue for Queue).
 *     Items still queued at the deadline stay in etcd and are counted, so
 *     nothing is lost or duplicated (checked).
 * (b) claim cost: one consumer claims and acks 200 jobs one at a time,
 *     first with no other job claimed, then with 1,000 jobs claimed (in
 *     flight) by another session, then with 20,000 jobs, claims and waiters
 *     deleted since etcd's last compaction (their tombstones, which every
 *     range over those directories visits), and with those 20,000 compacted.
 * With --profile, the one-process WorkQueue worker is profiled.
 * WORKQUEUE_DELIVERY_ONLY=1 runs the raw floor and the WorkQueue rows of (a) only.
 */

const CONSUMERS = 4;

interface Row {
  what: string;
  procs: number;
  perSecond: number;
  latencies: number[];
  kvPerItem: number;
  watchPerItem: number;
  eventsPerItem: number;
  cpuPerItem: number;
  etcdCpuPerItem: number;
  lostOrDup: number;
}

async function deliveries(
  ctx: BenchContext,
  what: string,
  kind: 'raw' | 'queue' | 'work' | 'work-next',
  procs: number,
  profileDir?: string,
): Promise<Row> {
  const prefix = `bench/wq/${kind}-${procs}`;
  const group = await WorkerGroup.start(
    ctx.endpoints,
    'queue',
    { kind, consumers: CONSUMERS, prefix },
    { procs, profileDir },
  );
  let run: ReturnType<typeof merged>;
  let req: ReturnType<typeof requestsBetween>;
  let events: number;
  let etcdCpuMs: number;
  try {
    const before = await grpcMessages(ctx.metricsUrl);
    const [eventsBefore, cpuBefore] = [await watchEventsSent(ctx.metricsUrl), await etcdCpuSeconds(ctx.metricsUrl)];
    run = merged(await group.run(ctx.seconds));
    req = requestsBetween(before, await grpcMessages(ctx.metricsUrl));
    events = (await watchEventsSent(ctx.metricsUrl)) - eventsBefore;
    etcdCpuMs = ((await etcdCpuSeconds(ctx.metricsUrl)) - cpuBefore) * 1000;
  } finally {
    await group.close();
  }
  // Join the producer's [0, seq, addedAt] with the consumers' [1, seq, deliveredAt]; the lost/dup
  // check covers the warm-up's items too (one produced then may be delivered in the measured run).
  const warm = group.warmUp ? merged(group.warmUp) : { records: [], counts: {} as Record<string, number> };
  const all = [...warm.records, ...run.records];
  const added = new Map<number, number>();
  for (const [role, seq, at] of all) if (role === 0) added.set(seq!, at!);
  const seen = new Set<number>();
  let duplicates = 0;
  for (const [role, seq] of all) {
    if (role !== 1) continue;
    if (seen.has(seq!)) duplicates++;
    seen.add(seq!);
  }
  const latencies: number[] = [];
  for (const [role, seq, at] of run.records) {
    const t = role === 1 ? added.get(seq!) : undefined;
    if (t !== undefined) latencies.push(at! - t);
  }
  const admin = ctx.client();
  let remaining: number;
  if (kind !== 'raw' && kind !== 'queue') {
    const s = await Session.create(admin, { ttl: 10 });
    remaining = (await new WorkQueue(s, prefix).stats()).jobs;
    await s.close();
  } else if (kind === 'queue') {
    const q = new Queue(admin, prefix);
    remaining = await q.size();
    await q.close();
  } else {
    remaining = Number(await admin.getAll().prefix(`${prefix}/`).count());
  }
  const produced = (warm.counts.produced ?? 0) + (run.counts.produced ?? 0);
  return {
    what,
    procs,
    perSecond: run.perSecond,
    latencies,
    kvPerItem: req.kv / run.ops,
    watchPerItem: req.watch / run.ops,
    eventsPerItem: events / run.ops,
    cpuPerItem: run.cpuPerOp,
    etcdCpuPerItem: etcdCpuMs / run.ops,
    lostOrDup: Math.abs(produced - seen.size - remaining) + duplicates,
  };
}

interface ClaimCost {
  inFlight: number;
  deleted: number;
  compacted: boolean;
  claimMs: number[];
  kvPerJob: number;
  cpuPerJob: number;
  etcdCpuPerJob: number;
}

/** `n` deleted keys in each of the queue's jobs/, claims/ and waiters/, as `n` acked jobs leave until a compaction. */
async function leaveAckedJobs(client: Etcd3, prefix: string, n: number): Promise<void> {
  // ID-like names, older than any real job's.
  const id = (i: number) => `00100-0${String(i).padStart(18, '0')}`;
  for (const dir of ['jobs/', 'claims/']) await leaveTombstones(client, `${prefix}/${dir}`, id, n);
  await leaveTombstones(client, `${prefix}/waiters/`, (i) => `0${String(i).padStart(18, '0')}`, n);
}

/**
 * One consumer claims and acks `jobs` jobs one at a time while `inFlight`
 * other jobs stay claimed and `deleted` tombstones lie in the queue's directories.
 */
async function claimCost(
  ctx: BenchContext,
  inFlight: number,
  jobs: number,
  deleted = 0,
  compacted = false,
): Promise<ClaimCost> {
  const prefix = `bench/wq/cost-${inFlight}-${deleted}${compacted ? '-compacted' : ''}`;
  const holderClient = ctx.client();
  await leaveAckedJobs(holderClient, prefix, deleted);
  if (compacted) {
    const { header } = await holderClient.kv.range({ key: Buffer.from(prefix) });
    await holderClient.kv.compact({ revision: header.revision, physical: true });
  }
  const holder = await Session.create(holderClient, { ttl: 60 });
  const holderQueue = new WorkQueue(holder, prefix);
  for (let i = 0; i < inFlight; i += 50) {
    await Promise.all(Array.from({ length: Math.min(50, inFlight - i) }, (_, k) => holderQueue.add(`held-${i + k}`)));
  }
  // Claimed in 10 parallel lines; never acked while we measure.
  const held = (
    await Promise.all(
      Array.from({ length: 10 }, async (_, line) => {
        const mine = [];
        for (let i = line; i < inFlight; i += 10) mine.push(await holderQueue.claim());
        return mine;
      }),
    )
  ).flat();
  for (let i = 0; i < jobs; i += 50) {
    await Promise.all(Array.from({ length: Math.min(50, jobs - i) }, (_, k) => holderQueue.add(`job-${i + k}`)));
  }
  const session = await Session.create(ctx.client(), { ttl: 60 });
  const wq = new WorkQueue(session, prefix);
  await (await wq.claim()).release(); // warm up; the job is claimable again at once
  const claimMs: number[] = [];
  const before = await grpcMessages(ctx.metricsUrl);
  const etcdBefore = await etcdCpuSeconds(ctx.metricsUrl);
  const cpu = process.cpuUsage();
  for (let i = 0; i < jobs; i++) {
    const t = performance.now();
    const job = await wq.claim();
    claimMs.push(performance.now() - t);
    await job.ack();
  }
  const cpuPerJob = cpuMs(cpu) / jobs;
  const etcdCpuPerJob = ((await etcdCpuSeconds(ctx.metricsUrl)) - etcdBefore) * (1000 / jobs);
  const req = requestsBetween(before, await grpcMessages(ctx.metricsUrl));
  if (held.length !== inFlight) throw new Error(`held ${held.length} jobs, wanted ${inFlight}`);
  await session.close();
  await holder.close();
  return { inFlight, deleted, compacted, claimMs, kvPerJob: req.kv / jobs, cpuPerJob, etcdCpuPerJob };
}

export default async function run(ctx: BenchContext): Promise<void> {
  const profileDir = ctx.profileDir ? `${ctx.profileDir}workqueue` : undefined;
  const rows: Row[] = [];
  rows.push(await deliveries(ctx, 'raw floor: put + delete per item (keys handed over in process)', 'raw', 1));
  const deliveryOnly = !!process.env.WORKQUEUE_DELIVERY_ONLY;
  if (!deliveryOnly) {
    rows.push(await deliveries(ctx, 'Queue (enqueue / dequeue)', 'queue', 1));
    rows.push(await deliveries(ctx, 'Queue (enqueue / dequeue)', 'queue', 4));
  }
  rows.push(await deliveries(ctx, 'WorkQueue (add / claim + ack)', 'work', 1, profileDir));
  rows.push(await deliveries(ctx, 'WorkQueue (add / claim + ack)', 'work', 4));
  rows.push(await deliveries(ctx, 'WorkQueue (add / claim({ ack: last }))', 'work-next', 1));
  rows.push(await deliveries(ctx, 'WorkQueue (add / claim({ ack: last }))', 'work-next', 4));
  const floor = rows[0]!.perSecond;
  table(
    `1 producer (one add at a time) and ${CONSUMERS} consumers, each on its own connection, ${ctx.seconds} s`,
    [
      'what',
      'processes',
      'delivered/s',
      '÷ raw floor',
      'latency p50 ms',
      'p99 ms',
      'KV req/item',
      'watch msgs/item',
      'watch events/item',
      'client CPU ms/item',
      'etcd CPU ms/item',
      'lost/dup',
    ],
    rows.map((r) => [
      r.what,
      r.procs,
      fmt.n(r.perSecond),
      fmt.ratio(r.perSecond / floor),
      fmt.ms(percentile(r.latencies, 50)),
      fmt.ms(percentile(r.latencies, 99)),
      fmt.n(r.kvPerItem, 2),
      fmt.n(r.watchPerItem, 2),
      fmt.n(r.eventsPerItem, 2),
      fmt.cpu(r.cpuPerItem),
      fmt.cpu(r.etcdCpuPerItem),
      r.lostOrDup,
    ]),
  );
  console.log('\nlatency: from add() (enqueue) resolving to ack() (dequeue) resolving, in ms. With 4 processes the');
  console.log('producer shares process 0 with one consumer. KV req/item counts every Range/Txn/Put/DeleteRange etcd');
  console.log(
    'received, the add included; client CPU ms/item is the CPU time of all worker processes ÷ items delivered.',
  );
  console.log('watch msgs/item counts watch create/cancel messages etcd received; watch events/item the events it');
  console.log('sent, to every watcher; etcd CPU ms/item the CPU time of the etcd process (10 ms resolution) ÷ items.');
  if (deliveryOnly) return;

  const jobs = 200;
  const idle = await claimCost(ctx, 0, jobs);
  const busy = await claimCost(ctx, 1000, jobs);
  const history = await claimCost(ctx, 0, jobs, 20_000);
  const compacted = await claimCost(ctx, 0, jobs, 20_000, true);
  table(
    `Claim cost: one consumer claims + acks ${jobs} jobs one at a time while other jobs stay claimed`,
    [
      'jobs in flight',
      'deleted since compaction',
      'claim p50 ms',
      'claim p99 ms',
      'KV req/job (claim + ack)',
      'client CPU ms/job',
      'etcd CPU ms/job',
      'p50 ÷ first row',
      'CPU ÷ first row',
    ],
    [idle, busy, history, compacted].map((c) => [
      c.inFlight,
      c.compacted ? `${c.deleted}, then compacted` : c.deleted,
      fmt.ms(percentile(c.claimMs, 50)),
      fmt.ms(percentile(c.claimMs, 99)),
      fmt.n(c.kvPerJob, 2),
      fmt.cpu(c.cpuPerJob),
      fmt.cpu(c.etcdCpuPerJob),
      fmt.ratio(percentile(c.claimMs, 50) / percentile(idle.claimMs, 50)),
      fmt.ratio(c.cpuPerJob / idle.cpuPerJob),
    ]),
  );
  console.log(
    '\nA claim reads a page of jobs and of claim keys from a cursor, plus two counts: flat in the jobs in flight.',
  );
  console.log(
    'It is not flat in the jobs deleted since etcd last compacted: etcd keeps their keys in its index until a',
  );
  console.log('compaction, and the counts and the waiter reads visit them (docs/compaction.md).');
  if (profileDir)
    console.log(
      formatSummary('WorkQueue, 1 producer + 4 consumers, one process (self time)', summarize(profileDir), 15),
    );
  if (rows.some((r) => r.lostOrDup !== 0)) throw new Error('an item was lost or delivered twice');
}
