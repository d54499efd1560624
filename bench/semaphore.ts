import type { Etcd3 } from 'etcd3';
import { Mutex, RWMutex, Semaphore, Session } from '../src/index.js';
import { fmt, grpcMessages, interleaved, percentile, requestsBetween, table, type BenchContext } from './lib.js';

/*
 * npm run bench -- semaphore
 *
 * Uncontended, one client, interleaved rounds:
 *   (a) raw floor: create-if-absent Txn + delete, the two writes any cycle needs
 *   (b) Semaphore acquire + release (4 permits, nobody else)
 *   (c) Mutex lock + unlock (the reference rate for readers)
 *   (d) RWMutex read lock + unlock, (e) write lock + unlock
 * Concurrent, each worker on its own connection and session:
 *   (f) raw floor ×N: N clients each doing (a) on their own key, the ceiling for N parallel holders
 *   (g) 8 readers looping rLock → rUnlock on one RWMutex
 *   (h) Semaphore with 4 permits and 4 workers (never waits), then 16 workers (4× oversubscribed)
 */

interface LoopResult {
  workers: number;
  cycles: number;
  perSecond: number;
  handoffs: number[];
  maxInside: number;
  kvPerCycle: number;
  watchPerCycle: number;
}

/** Runs `cycle` in a loop on `workers` connections for `seconds`; `cycle` resolves after a full acquire+release. */
async function loop(ctx: BenchContext, workers: number, seconds: number,
  make: (client: Etcd3, session: Session) => (mark: Marks) => Promise<void>): Promise<LoopResult> {
  const clients = Array.from({ length: workers }, () => ctx.client());
  const sessions = await Promise.all(clients.map((c) => Session.create(c, { ttl: 30 })));
  await Promise.all(clients.map((c) => c.get('bench/warm').string())); // connect before the clock starts
  const cycles = sessions.map((s, i) => make(clients[i]!, s));
  const marks = new Marks();
  let stop = false;
  let count = 0;
  for (const c of cycles) await c(marks); // warm-up: one cycle each
  marks.reset();
  const before = await grpcMessages(ctx.metricsUrl);
  const started = performance.now();
  const timer = setTimeout(() => { stop = true; }, seconds * 1000);
  await Promise.all(cycles.map(async (cycle) => {
    while (!stop) {
      await cycle(marks);
      count++;
    }
  }));
  const elapsed = (performance.now() - started) / 1000;
  clearTimeout(timer);
  const req = requestsBetween(before, await grpcMessages(ctx.metricsUrl));
  await Promise.all(sessions.map((s) => s.close()));
  return {
    workers, cycles: count, perSecond: count / elapsed, handoffs: marks.handoffs, maxInside: marks.maxInside,
    kvPerCycle: req.kv / count, watchPerCycle: req.watch / count,
  };
}

/**
 * Handoff bookkeeping for a FIFO semaphore: release calls are queued in
 * order; an acquire that was called before the oldest unconsumed release
 * (so it had to wait for it) records the time from that release call to
 * its acquisition.
 */
class Marks {
  handoffs: number[] = [];
  inside = 0;
  maxInside = 0;
  #releases: number[] = [];
  reset(): void {
    this.handoffs = [];
    this.#releases = [];
    this.maxInside = this.inside;
  }
  acquired(calledAt: number): void {
    const now = performance.now();
    this.inside++;
    this.maxInside = Math.max(this.maxInside, this.inside);
    const release = this.#releases.shift();
    if (release !== undefined && calledAt < release) this.handoffs.push(now - release);
  }
  releasing(): void {
    this.inside--;
    this.#releases.push(performance.now());
  }
}

export default async function run(ctx: BenchContext): Promise<void> {
  const client = ctx.client();
  const s = ctx.seconds;
  const session = await Session.create(client, { ttl: 30 });

  // (a) raw floor.
  const floorKey = Buffer.from('bench/semaphore/floor');
  const floorOp = async () => {
    await client.if(floorKey, 'Create', '==', 0).then(client.put(floorKey).value('')).commit();
    await client.delete().key(floorKey);
  };
  // (b) Semaphore, uncontended.
  const sem = new Semaphore(session, 'bench/semaphore/solo', 4);
  const semOp = async () => {
    const h = await sem.acquire();
    await h.release();
  };
  // (c) Mutex, uncontended.
  const mutex = new Mutex(session, 'bench/semaphore/mutex');
  const mutexOp = async () => {
    await mutex.lock();
    await mutex.unlock();
  };
  // (d), (e) RWMutex, uncontended.
  const rw = new RWMutex(session, 'bench/semaphore/rw-solo');
  const readOp = async () => {
    await rw.rLock();
    await rw.rUnlock();
  };
  const writeOp = async () => {
    await rw.lock();
    await rw.unlock();
  };
  const [floor, semSolo, mutexSolo, readSolo, writeSolo] = await interleaved(s, [floorOp, semOp, mutexOp, readOp, writeOp]);
  await session.close();
  const ratio = (x: number) => `${fmt.ratio(x / floor!.perSecond)} of floor`;
  table('Uncontended (one client)', ['what', 'cycles/s', 'p50 ms', 'p99 ms', 'ratio'], [
    ['(a) raw floor: create-if-absent Txn + delete', fmt.n(floor!.perSecond), fmt.ms(percentile(floor!.latencies, 50)), fmt.ms(percentile(floor!.latencies, 99)), '1.00×'],
    ...([['(b) Semaphore acquire+release (4 permits)', semSolo!], ['(c) Mutex lock+unlock', mutexSolo!],
      ['(d) RWMutex rLock+rUnlock', readSolo!], ['(e) RWMutex lock+unlock', writeSolo!]] as const).map(([name, r]) =>
      [name, fmt.n(r.perSecond), fmt.ms(percentile(r.latencies, 50)), fmt.ms(percentile(r.latencies, 99)), ratio(r.perSecond)]),
  ]);

  // (f) raw floor with N parallel clients, each on its own key.
  const rawParallel = (n: number) => loop(ctx, n, s, (c) => {
    const key = Buffer.from(`bench/semaphore/raw-${Math.random()}`);
    return async () => {
      await c.if(key, 'Create', '==', 0).then(c.put(key).value('')).commit();
      await c.delete().key(key);
    };
  });
  const raw4 = await rawParallel(4);
  const raw8 = await rawParallel(8);
  const raw16 = await rawParallel(16);

  // (g) 8 concurrent readers.
  const readers = await loop(ctx, 8, s, (_c, sess) => {
    const r = new RWMutex(sess, 'bench/semaphore/rw-readers');
    return async () => {
      const h = await r.acquireRead();
      await h.release();
    };
  });

  // (h) Semaphore, 4 permits, 4 and 16 workers.
  const semLoop = (workers: number) => loop(ctx, workers, s, (_c, sess) => {
    const sm = new Semaphore(sess, `bench/semaphore/sem-${workers}`, 4);
    return async (marks) => {
      const calledAt = performance.now();
      const h = await sm.acquire();
      marks.acquired(calledAt);
      marks.releasing();
      await h.release();
    };
  });
  const sem4 = await semLoop(4);
  const sem16 = await semLoop(16);

  table('Concurrent: workers on separate connections and sessions', [
    'what', 'workers', 'cycles/s', 'ratio', 'handoff p50 ms', 'handoff p99 ms', 'max holders', 'KV req/cycle', 'watch msgs/cycle',
  ], [
    ['(f) raw floor, own key per client', 4, fmt.n(raw4.perSecond), '', '', '', '', fmt.n(raw4.kvPerCycle, 2), ''],
    ['(f) raw floor, own key per client', 8, fmt.n(raw8.perSecond), '', '', '', '', fmt.n(raw8.kvPerCycle, 2), ''],
    ['(f) raw floor, own key per client', 16, fmt.n(raw16.perSecond), '', '', '', '', fmt.n(raw16.kvPerCycle, 2), ''],
    ['(g) RWMutex readers, rLock+rUnlock', 8, fmt.n(readers.perSecond),
      `${fmt.ratio(readers.perSecond / mutexSolo!.perSecond)} Mutex (c), ${fmt.ratio(readers.perSecond / raw8.perSecond)} raw×8`,
      '', '', '', fmt.n(readers.kvPerCycle, 2), fmt.n(readers.watchPerCycle, 2)],
    ['(h) Semaphore(4), never waits', 4, fmt.n(sem4.perSecond), `${fmt.ratio(sem4.perSecond / raw4.perSecond)} raw×4`,
      '', '', sem4.maxInside, fmt.n(sem4.kvPerCycle, 2), fmt.n(sem4.watchPerCycle, 2)],
    ['(h) Semaphore(4), 4× oversubscribed', 16, fmt.n(sem16.perSecond), `${fmt.ratio(sem16.perSecond / raw4.perSecond)} raw×4`,
      fmt.ms(percentile(sem16.handoffs, 50)), fmt.ms(percentile(sem16.handoffs, 99)), sem16.maxInside, fmt.n(sem16.kvPerCycle, 2), fmt.n(sem16.watchPerCycle, 2)],
  ]);
  console.log('\nratio for (g) compares 8 readers\' total rate with one uncontended Mutex (c) and with 8 raw clients (f);');
  console.log('for (h) with 4 raw clients, i.e. 4 holders that never wait. Handoff: from a release call to the');
  console.log('acquisition of the waiter it let in (FIFO bookkeeping). KV req/cycle counts every Range/Txn/Put/DeleteRange');
  console.log('etcd received per acquire+release; watch msgs are watch create/cancel messages.');
  if (sem4.maxInside > 4 || sem16.maxInside > 4) throw new Error('more than 4 holders: the semaphore was violated');
}
