import { Mutex, Session } from '../src/index.js';
import type { Etcd3 } from 'etcd3';
import { fmt, grpcMessages, interleaved, percentile, requestsBetween, table, type BenchContext } from './lib.js';

/*
 * npm run bench -- mutex
 *
 * (a) raw floor: create-if-absent Txn + delete per cycle
 * (b) our Mutex, uncontended lock+unlock
 * (c) etcd3's built-in Lock acquire+release
 * (d) contended: W workers, each on its own connection, lock → read-modify-write a counter → unlock
 * (e) chain floor: delete, range, get, put in sequence: the least a contended section can cost
 * plus a scale run with 1000 queued waiters.
 */

interface ContendedResult {
  workers: number;
  sections: number;
  perSecond: number;
  handoffs: number[];
  counterOk: boolean;
  kvPerSection: number;
  watchPerSection: number;
}

async function contended(ctx: BenchContext, workers: number, seconds: number): Promise<ContendedResult> {
  const admin = ctx.client();
  const counterKey = `bench/mutex/counter-${workers}`;
  const lockName = `bench/mutex/lock-${workers}`;
  await admin.put(counterKey).value('0');
  const clients: Etcd3[] = Array.from({ length: workers }, () => ctx.client());
  const sessions = await Promise.all(clients.map((c) => Session.create(c, { ttl: 30 })));
  await Promise.all(clients.map((c) => c.get(counterKey).string())); // connect before the clock starts
  const handoffs: number[] = [];
  let sections = 0;
  let lastUnlockCall = 0;
  let stop = false;
  const before = await grpcMessages(ctx.metricsUrl);
  const started = performance.now();
  const timer = setTimeout(() => { stop = true; }, seconds * 1000);
  await Promise.all(sessions.map(async (session, i) => {
    const client = clients[i]!;
    const m = new Mutex(session, lockName);
    while (!stop) {
      const calledAt = performance.now();
      await m.lock();
      const acquiredAt = performance.now();
      // A handoff: we were already queued when the previous holder called unlock().
      if (calledAt < lastUnlockCall) handoffs.push(acquiredAt - lastUnlockCall);
      const n = Number(await client.get(counterKey).string());
      await client.put(counterKey).value(String(n + 1));
      sections++;
      lastUnlockCall = performance.now();
      await m.unlock();
    }
  }));
  const elapsed = (performance.now() - started) / 1000;
  clearTimeout(timer);
  const after = await grpcMessages(ctx.metricsUrl);
  const req = requestsBetween(before, after);
  const counter = Number(await admin.get(counterKey).string());
  await Promise.all(sessions.map((s) => s.close()));
  return {
    workers,
    sections,
    perSecond: sections / elapsed,
    handoffs,
    counterOk: counter === sections,
    // The workload's own get + put are not the lock's cost.
    kvPerSection: (req.kv - 2 * sections) / sections,
    watchPerSection: req.watch / sections,
  };
}

/** 1000 waiters queued at once (over 25 connections), each takes the lock once. */
async function scale(ctx: BenchContext, waiters: number): Promise<ContendedResult> {
  const clients = Array.from({ length: 25 }, () => ctx.client());
  const sessions = await Promise.all(Array.from({ length: waiters }, (_, i) => Session.create(clients[i % clients.length]!, { ttl: 60 })));
  const handoffs: number[] = [];
  let sections = 0;
  let lastUnlockCall = 0;
  const before = await grpcMessages(ctx.metricsUrl);
  const started = performance.now();
  await Promise.all(sessions.map(async (session) => {
    const m = new Mutex(session, 'bench/mutex/scale');
    await m.lock();
    const acquiredAt = performance.now();
    if (lastUnlockCall > 0) handoffs.push(acquiredAt - lastUnlockCall);
    sections++;
    lastUnlockCall = performance.now();
    await m.unlock();
  }));
  const elapsed = (performance.now() - started) / 1000;
  const after = await grpcMessages(ctx.metricsUrl);
  const req = requestsBetween(before, after);
  await Promise.all(sessions.map((s) => s.close()));
  return {
    workers: waiters, sections, perSecond: sections / elapsed, handoffs, counterOk: sections === waiters,
    kvPerSection: req.kv / sections, watchPerSection: req.watch / sections,
  };
}

export default async function run(ctx: BenchContext): Promise<void> {
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
  await session.close();

  table('Uncontended (one client)', ['what', 'cycles/s', 'p50 ms', 'p99 ms', 'ratio'], [
    ['(a) raw floor: create-if-absent Txn + delete', fmt.n(floor!.perSecond), fmt.ms(percentile(floor!.latencies, 50)), fmt.ms(percentile(floor!.latencies, 99)), '1.00×'],
    ['(b) etcd-recipes Mutex lock+unlock', fmt.n(ours!.perSecond), fmt.ms(percentile(ours!.latencies, 50)), fmt.ms(percentile(ours!.latencies, 99)), `${fmt.ratio(ours!.perSecond / floor!.perSecond)} of floor`],
    ['(c) etcd3 Lock acquire+release', fmt.n(etcd3Lock!.perSecond), fmt.ms(percentile(etcd3Lock!.latencies, 50)), fmt.ms(percentile(etcd3Lock!.latencies, 99)), `ours = ${fmt.ratio(ours!.perSecond / etcd3Lock!.perSecond)} etcd3`],
    ['(e) chain floor: delete, range, get, put', fmt.n(chain!.perSecond), fmt.ms(percentile(chain!.latencies, 50)), fmt.ms(percentile(chain!.latencies, 99)), ''],
  ]);

  const rows: ContendedResult[] = [];
  for (const w of [2, 8, 32]) rows.push(await contended(ctx, w, s));
  const scaleRun = await scale(ctx, 1000);
  table('Contended: W workers on separate connections, lock → get+put counter → unlock', [
    'W', 'sections/s', '÷ chain floor', 'handoff p50 ms', 'handoff p99 ms', 'lock KV req/section', 'watch msgs/section', 'counter ok',
  ], [...rows, scaleRun].map((r) => [
    r === scaleRun ? `${r.workers} (queued once each, no workload)` : r.workers,
    fmt.n(r.perSecond), r === scaleRun ? '' : fmt.ratio(r.perSecond / chain!.perSecond),
    fmt.ms(percentile(r.handoffs, 50)), fmt.ms(percentile(r.handoffs, 99)),
    fmt.n(r.kvPerSection, 2), fmt.n(r.watchPerSection, 2), r.counterOk ? 'yes' : 'NO',
  ]));
  console.log('\nlock KV req/section counts every Range/Txn/Put/DeleteRange etcd received for the lock itself (the');
  console.log('workload\'s get+put are subtracted); watch msgs are watch create/cancel messages. Of these, only the');
  console.log('holder\'s delete and the successor\'s post-wake range lie on the handoff path; the acquire Txn, the watch');
  console.log('and the confirming range happen while the waiter is queued.');
  if (rows.some((r) => !r.counterOk) || !scaleRun.counterOk) throw new Error('counter mismatch: mutual exclusion violated');
}
