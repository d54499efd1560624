import type { Etcd3 } from 'etcd3';
import { Mutex, RWMutex, Semaphore, Session } from '../src/index.js';
import {
  cpuMs,
  fifoHandoffs,
  fmt,
  grpcMessages,
  interleaved,
  percentile,
  requestsBetween,
  table,
  timedRow,
  type BenchContext,
} from './lib.js';
import { merged, WorkerGroup } from './workers/pool.js';

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
 *   (h) Semaphore with 4 permits and 4 workers (never waits), then 16 workers (4× oversubscribed),
 *       these in worker processes: all in one, and spread over 4
 * Burst: 8 holders of an 8-permit Semaphore release at once with 16 waiters queued; time until 8 hold.
 */

interface LoopResult {
  workers: number;
  cycles: number;
  perSecond: number;
  handoffs: number[];
  kvPerCycle: number;
  watchPerCycle: number;
  /** Client CPU ms per cycle (the bench process, or the sum over worker processes). */
  cpuPerCycle: number;
  procs?: number;
}

/** Runs `cycle` in a loop on `workers` connections for `seconds`; `cycle` resolves after a full acquire+release. */
async function loop(
  ctx: BenchContext,
  workers: number,
  seconds: number,
  make: (client: Etcd3, session: Session) => (mark: Marks) => Promise<void>,
): Promise<LoopResult> {
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
  const cpu = process.cpuUsage();
  const started = performance.now();
  const timer = setTimeout(() => {
    stop = true;
  }, seconds * 1000);
  await Promise.all(
    cycles.map(async (cycle) => {
      while (!stop) {
        await cycle(marks);
        count++;
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  const cpuPerCycle = cpuMs(cpu) / count;
  clearTimeout(timer);
  const req = requestsBetween(before, await grpcMessages(ctx.metricsUrl));
  await Promise.all(sessions.map((s) => s.close()));
  return {
    workers,
    cycles: count,
    perSecond: count / elapsed,
    handoffs: marks.handoffs,
    kvPerCycle: req.kv / count,
    watchPerCycle: req.watch / count,
    cpuPerCycle,
  };
}

/** The oversubscribed Semaphore in worker processes: `workers` workers, `permits` permits, over `procs` processes. */
async function semGroup(
  ctx: BenchContext,
  workers: number,
  permits: number,
  procs: number,
  seconds: number,
): Promise<LoopResult> {
  const group = await WorkerGroup.start(
    ctx.endpoints,
    'semaphore',
    { workers, permits, name: `bench/semaphore/group-${workers}-${procs}` },
    { procs },
  );
  try {
    const before = await grpcMessages(ctx.metricsUrl);
    const run = merged(await group.run(seconds));
    const req = requestsBetween(before, await grpcMessages(ctx.metricsUrl));
    return {
      workers,
      cycles: run.ops,
      perSecond: run.perSecond,
      handoffs: fifoHandoffs(run.records),
      kvPerCycle: req.kv / run.ops,
      watchPerCycle: req.watch / run.ops,
      cpuPerCycle: run.cpuPerOp,
      procs,
    };
  } finally {
    await group.close();
  }
}

/**
 * Handoff bookkeeping for a FIFO semaphore: release calls are queued in
 * order; an acquire that was called before the oldest unconsumed release
 * (so it had to wait for it) records the time from that release call to
 * its acquisition.
 */
class Marks {
  handoffs: number[] = [];
  #releases: number[] = [];
  reset(): void {
    this.handoffs = [];
    this.#releases = [];
  }
  acquired(calledAt: number): void {
    const now = performance.now();
    const release = this.#releases.shift();
    if (release !== undefined && calledAt < release) this.handoffs.push(now - release);
  }
  releasing(): void {
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
  const [floor, semSolo, mutexSolo, readSolo, writeSolo] = await interleaved(s, [
    floorOp,
    semOp,
    mutexOp,
    readOp,
    writeOp,
  ]);
  await session.close();
  const ratio = (x: number) => `${fmt.ratio(x / floor!.perSecond)} of floor`;
  table(
    'Uncontended (one client)',
    ['what', 'cycles/s', 'p50 ms', 'p99 ms', 'ratio', 'client CPU ms/cycle'],
    [
      timedRow('(a) raw floor: create-if-absent Txn + delete', floor!, '1.00×'),
      timedRow('(b) Semaphore acquire+release (4 permits)', semSolo!, ratio(semSolo!.perSecond)),
      timedRow('(c) Mutex lock+unlock', mutexSolo!, ratio(mutexSolo!.perSecond)),
      timedRow('(d) RWMutex rLock+rUnlock', readSolo!, ratio(readSolo!.perSecond)),
      timedRow('(e) RWMutex lock+unlock', writeSolo!, ratio(writeSolo!.perSecond)),
    ],
  );

  // (f) raw floor with N parallel clients, each on its own key.
  const rawParallel = (n: number) =>
    loop(ctx, n, s, (c) => {
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
  const semLoop = (workers: number) =>
    loop(ctx, workers, s, (_c, sess) => {
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
  const sem16 = await semGroup(ctx, 16, 4, 1, s);
  const sem16x4 = await semGroup(ctx, 16, 4, 4, s);

  table(
    'Concurrent: workers on separate connections and sessions',
    [
      'what',
      'workers',
      'processes',
      'cycles/s',
      'ratio',
      'handoff p50 ms',
      'handoff p99 ms',
      'KV req/cycle',
      'watch msgs/cycle',
      'client CPU ms/cycle',
    ],
    [
      ...(
        [
          [4, raw4],
          [8, raw8],
          [16, raw16],
        ] as const
      ).map(([n, r]) => [
        '(f) raw floor, own key per client',
        n,
        '1 (bench)',
        fmt.n(r.perSecond),
        '',
        '',
        '',
        fmt.n(r.kvPerCycle, 2),
        '',
        fmt.cpu(r.cpuPerCycle),
      ]),
      [
        '(g) RWMutex readers, rLock+rUnlock',
        8,
        '1 (bench)',
        fmt.n(readers.perSecond),
        `${fmt.ratio(readers.perSecond / mutexSolo!.perSecond)} Mutex (c), ` +
          `${fmt.ratio(readers.perSecond / raw8.perSecond)} raw×8`,
        '',
        '',
        fmt.n(readers.kvPerCycle, 2),
        fmt.n(readers.watchPerCycle, 2),
        fmt.cpu(readers.cpuPerCycle),
      ],
      [
        '(h) Semaphore(4), never waits',
        4,
        '1 (bench)',
        fmt.n(sem4.perSecond),
        `${fmt.ratio(sem4.perSecond / raw4.perSecond)} raw×4`,
        '',
        '',
        fmt.n(sem4.kvPerCycle, 2),
        fmt.n(sem4.watchPerCycle, 2),
        fmt.cpu(sem4.cpuPerCycle),
      ],
      ...[sem16, sem16x4].map((r) => [
        '(h) Semaphore(4), 4× oversubscribed',
        16,
        r.procs ?? 1,
        fmt.n(r.perSecond),
        `${fmt.ratio(r.perSecond / raw16.perSecond)} raw×16`,
        fmt.ms(percentile(r.handoffs, 50)),
        fmt.ms(percentile(r.handoffs, 99)),
        fmt.n(r.kvPerCycle, 2),
        fmt.n(r.watchPerCycle, 2),
        fmt.cpu(r.cpuPerCycle),
      ]),
    ],
  );
  console.log(
    "\nratio for (g) compares 8 readers' total rate with one uncontended Mutex (c) and with 8 raw clients (f);",
  );
  console.log('for (h) with as many raw clients as workers. Handoff: from a release call to the acquisition of the');
  console.log(
    'waiter it let in (FIFO bookkeeping). KV req/cycle counts every Range/Txn/Put/DeleteRange etcd received per',
  );
  console.log(
    'acquire+release (a waiter that became a holder adds a touch); watch msgs are watch create/cancel messages.',
  );

  const refill = await burst(ctx, 8, 10);
  table(
    'Burst: 8 holders of Semaphore(8) release at once, 16 waiters queued',
    ['what', 'p50 ms', 'max ms', 'ratio to raw floor p50 (a)'],
    [
      [
        'time until 8 waiters hold',
        fmt.ms(percentile(refill, 50)),
        fmt.ms(Math.max(...refill)),
        fmt.ratio(percentile(refill, 50) / percentile(floor!.latencies, 50)),
      ],
    ],
  );
}

/** `rounds` times: `permits` holders release at once while 2×permits wait; ms until `permits` waiters hold. */
async function burst(ctx: BenchContext, permits: number, rounds: number): Promise<number[]> {
  const clients = Array.from({ length: 8 }, () => ctx.client());
  const times: number[] = [];
  for (let round = 0; round < rounds; round++) {
    const sessions = await Promise.all(
      Array.from({ length: 3 * permits }, (_, i) => Session.create(clients[i % clients.length]!, { ttl: 30 })),
    );
    const name = `bench/semaphore/burst-${round}`;
    const holders = await Promise.all(sessions.slice(0, permits).map((s) => new Semaphore(s, name, permits).acquire()));
    const admitted: number[] = [];
    let allIn: () => void = () => undefined;
    const done = new Promise<void>((resolve) => {
      allIn = resolve;
    });
    const waiters = sessions.slice(permits).map((s) =>
      new Semaphore(s, name, permits).acquire().then(
        (h) => {
          if (admitted.push(performance.now()) === permits) allIn();
          return h;
        },
        () => undefined,
      ),
    );
    // Every waiter queued and watching: one range shows all keys, then let the watches settle.
    for (let i = 0; i < 100 && (await clients[0]!.getAll().prefix(`${name}/queue/`).count()) < 3 * permits; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    await new Promise((r) => setTimeout(r, 100));
    const started = performance.now();
    await Promise.all(holders.map((h) => h.release()));
    await done;
    times.push(admitted[permits - 1]! - started);
    await Promise.all(sessions.map((s) => s.close()));
    await Promise.all(waiters);
  }
  return times;
}
