import { setMaxListeners } from 'node:events';
import type { Etcd3 } from 'etcd3';
import { cmp, op, rangeAt, txn } from '../src/core/kv.js';
import { openWatch, type WatchEvent, type WatchHandle } from '../src/core/watch-hub.js';
import { PriorityQueue, Queue, Session, WorkQueue } from '../src/index.js';
import {
  cpuMs,
  fmt,
  grpcMessages,
  interleaved,
  percentile,
  requestsBetween,
  table,
  timedRow,
  type BenchContext,
} from './lib.js';

/*
 * npm run bench -- queue
 *
 * (a) enqueue/s against raw etcd writes, one at a time: a plain put, and the
 *     create-if-absent Txn an enqueue cannot do without.
 * (b) deliveries/s with 1 producer and 4 consumers, each on its own
 *     connection: the producer enqueues for the run's duration, one item at
 *     a time (deliveries are bounded by its enqueue rate, and latency shows),
 *     then with 16 enqueues in flight (the consumers are the bottleneck);
 *     the consumers take items until all are delivered.
 *       - raw floor: the producer's put plus a delete per item, the consumers
 *         handed keys in process (no coordination at all);
 *       - Go's recipe.Queue algorithm, ported line by line (herd:
 *         every waiting consumer watches the prefix from the read's revision
 *         and races for each item);
 *       - our Queue, PriorityQueue, and WorkQueue (claim + ack).
 * (c) a backlog drained by 4 consumers, and (d) 16 waiting consumers, where
 *     the herd shows: etcd requests per delivered item.
 */

const VALUE = 'x'.repeat(64);

interface RunResult {
  what: string;
  delivered: number;
  produced: number;
  perSecond: number;
  latencies: number[];
  kvPerItem: number;
  watchPerItem: number;
  duplicates: number;
  /** Client CPU ms per delivered item (this process: producer and consumers). */
  cpuPerItem: number;
}

interface Consumer {
  /** Takes one item; resolves undefined once `stop` aborted. */
  take(stop: AbortSignal): Promise<string | undefined>;
  close(): Promise<void>;
}

interface Producer {
  put(value: string): Promise<unknown>;
  close(): Promise<void>;
}

/** One producer enqueueing back to back for `seconds`, `consumers` consumers taking until everything is delivered. */
async function deliveries(
  ctx: BenchContext,
  what: string,
  seconds: number,
  producer: Producer,
  consumers: Consumer[],
  inFlight = 1,
): Promise<RunResult> {
  const sentAt = new Map<string, number>();
  const latencies: number[] = [];
  const seen = new Set<string>();
  let duplicates = 0;
  let produced = 0;
  let delivered = 0;
  let producing = true;
  let lastDelivery = 0;
  const stop = new AbortController();
  setMaxListeners(1000, stop.signal); // every consumer listens to it
  const before = await grpcMessages(ctx.metricsUrl);
  const cpu = process.cpuUsage();
  const started = performance.now();
  const loops = consumers.map(async (c) => {
    for (;;) {
      const v = await c.take(stop.signal);
      if (v === undefined) return;
      const now = performance.now();
      lastDelivery = now;
      if (seen.has(v)) duplicates++;
      seen.add(v);
      const t = sentAt.get(v);
      if (t !== undefined) latencies.push(now - t);
      delivered++;
      if (!producing && delivered >= produced) stop.abort();
    }
  });
  const end = started + seconds * 1000;
  let n = 0;
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (performance.now() < end) {
        const v = `${n++}-${VALUE}`;
        await producer.put(v);
        sentAt.set(v, performance.now());
        produced++;
      }
    }),
  );
  producing = false;
  if (delivered >= produced) stop.abort();
  const drainTimer = setTimeout(() => stop.abort(), 30_000);
  await Promise.all(loops);
  clearTimeout(drainTimer);
  const cpuPerItem = cpuMs(cpu) / delivered;
  const after = await grpcMessages(ctx.metricsUrl);
  const req = requestsBetween(before, after);
  await Promise.all([producer.close(), ...consumers.map((c) => c.close())]);
  return {
    what,
    delivered,
    produced,
    perSecond: delivered / ((lastDelivery - started) / 1000),
    latencies,
    kvPerItem: req.kv / delivered,
    watchPerItem: req.watch / delivered,
    duplicates,
    cpuPerItem,
  };
}

/**
 * Go's recipe.Queue (experimental/recipes/queue.go) ported as directly as
 * possible: read the oldest item (sort by mod revision, limit 1), claim it
 * with a delete guarded by its mod revision, and when there is nothing,
 * watch the whole prefix from the read's revision and race for the first
 * put. The watch goes through our own watch stream (etcd3's Watcher stalls
 * under this churn), so the comparison isolates the algorithm.
 */
function goStyleConsumer(client: Etcd3, prefix: string): Consumer {
  const claim = async (key: Buffer, mod: bigint) =>
    (await txn(client, [cmp.mod(key, '==', mod)], [op.delete(key)])).succeeded;
  return {
    async take(stop) {
      while (!stop.aborted) {
        // Get(prefix, WithFirstRev()): sort by mod revision, limit 1; claimFirstKey.
        const res = await txn(
          client,
          [],
          [op.range(prefix, { prefix: true, sortTarget: 'Mod', sortOrder: 'Ascend', limit: 1 })],
        );
        const r = rangeAt(res, 0);
        const kv = r.kvs[0];
        if (kv && (await claim(kv.key, kv.modRevision))) return kv.value.toString();
        if (r.more) continue;
        // WaitPrefixEvents(prefix, header.revision, PUT): every waiting consumer wakes for every put.
        let wake: ((ev: WatchEvent | undefined) => void) | undefined;
        const got = new Promise<WatchEvent | undefined>((resolve) => {
          wake = resolve;
        });
        const onAbort = () => wake?.(undefined);
        stop.addEventListener('abort', onAbort, { once: true });
        let handle: WatchHandle | undefined;
        try {
          handle = await openWatch(
            client,
            { key: Buffer.from(prefix), prefix: true, startRevision: res.revision, noDelete: true },
            {
              onEvents: (evs) => wake?.(evs[0]),
              onEnd: () => wake?.(undefined),
            },
            stop,
          );
          const ev = await got;
          if (!ev) continue;
          if (await claim(ev.kv.key, ev.kv.modRevision)) return ev.kv.value.toString();
        } catch {
          // aborted
        } finally {
          stop.removeEventListener('abort', onAbort);
          handle?.close();
        }
      }
      return undefined;
    },
    close: async () => undefined,
  };
}

function queueConsumer(q: Queue | PriorityQueue): Consumer {
  return {
    take: (stop) =>
      q.dequeue({ signal: stop }).catch((err: unknown) => {
        if (stop.aborted) return undefined;
        throw err;
      }),
    close: () => q.close(),
  };
}

async function workQueueConsumer(client: Etcd3, prefix: string): Promise<Consumer> {
  const session = await Session.create(client, { ttl: 30 });
  const wq = new WorkQueue(session, prefix);
  return {
    async take(stop) {
      const job = await wq.claim({ signal: stop }).catch((err: unknown) => {
        if (stop.aborted) return undefined;
        throw err;
      });
      if (!job) return undefined;
      await job.ack();
      return job.value;
    },
    close: () => session.close(),
  };
}

function rawFloor(ctx: BenchContext, consumers: number): { producer: Producer; consumers: Consumer[] } {
  const client = ctx.client();
  const handed: { key: string; value: string }[] = [];
  const waiting: (() => void)[] = [];
  let n = 0;
  const producer: Producer = {
    async put(value) {
      const key = `bench/queue/raw/${n++}`;
      await client.put(key).value(value);
      handed.push({ key, value });
      waiting.shift()?.();
    },
    close: async () => undefined,
  };
  const make = (): Consumer => {
    const c = ctx.client();
    return {
      async take(stop) {
        while (!handed.length) {
          if (stop.aborted) return undefined;
          await new Promise<void>((resolve) => {
            const onAbort = () => resolve();
            stop.addEventListener('abort', onAbort, { once: true });
            waiting.push(() => {
              stop.removeEventListener('abort', onAbort);
              resolve();
            });
          });
        }
        const item = handed.shift()!;
        await c.delete().key(item.key);
        return item.value;
      },
      close: async () => undefined,
    };
  };
  return { producer, consumers: Array.from({ length: consumers }, make) };
}

async function connect(clients: Etcd3[]): Promise<void> {
  await Promise.all(clients.map((c) => c.get('bench/queue/warmup').string()));
}

export default async function run(ctx: BenchContext): Promise<void> {
  const s = ctx.seconds;
  const client = ctx.client();
  await connect([client]);

  // (a) enqueue/s
  let i = 0;
  const rawPut = () => client.put(`bench/queue/put/${i++}`).value(VALUE).exec();
  const rawTxn = () => {
    const key = `bench/queue/txn/${i++}`;
    return client.if(key, 'Create', '==', 0).then(client.put(key).value(VALUE)).commit();
  };
  const q = new Queue(client, 'bench/queue/enq');
  const pq = new PriorityQueue(client, 'bench/queue/penq');
  const session = await Session.create(client, { ttl: 30 });
  const wq = new WorkQueue(session, 'bench/queue/wenq');
  const [put, tx, enq, penq, add] = await interleaved(s, [
    rawPut,
    rawTxn,
    () => q.enqueue(VALUE),
    () => pq.enqueue(VALUE, i++ % 4),
    () => wq.add(VALUE),
  ]);
  table(
    'Enqueue, one at a time (one client)',
    ['what', 'ops/s', 'p50 ms', 'p99 ms', 'ratio', 'client CPU ms/op'],
    [
      timedRow('raw put', put!, '1.00×'),
      ...(
        [
          ['raw create-if-absent Txn + put', tx!],
          ['Queue.enqueue', enq!],
          ['PriorityQueue.enqueue (4 priorities)', penq!],
          ['WorkQueue.add', add!],
        ] as const
      ).map(([name, r]) => timedRow(name, r, fmt.ratio(r.perSecond / put!.perSecond))),
    ],
  );
  await client.delete().prefix('bench/queue/');
  await client.delete().prefix('__bench/queue/');
  await q.close();
  await pq.close();
  await session.close();

  // (b) 1 producer, 4 consumers: the producer one enqueue at a time, then with 16 enqueues in flight
  const consumers = 4;
  for (const inFlight of [1, 16]) {
    const results: RunResult[] = [];
    {
      const floor = rawFloor(ctx, consumers);
      results.push(
        await deliveries(
          ctx,
          'raw floor: put + delete per item (keys handed over in process)',
          s,
          floor.producer,
          floor.consumers,
          inFlight,
        ),
      );
    }
    // Each run's consumers are on their own connections, connected before its producer is made.
    const run = async (
      what: string,
      producer: () => Producer | Promise<Producer>,
      consumer: (c: Etcd3) => Consumer | Promise<Consumer>,
    ) => {
      const clients = Array.from({ length: consumers }, () => ctx.client());
      await connect(clients);
      const p = await producer();
      results.push(await deliveries(ctx, what, s, p, await Promise.all(clients.map(consumer)), inFlight));
    };
    const name = (kind: string) => `bench/queue/${kind}-${inFlight}`;
    const queueProducer = (q: Queue): Producer => ({ put: (v) => q.enqueue(v), close: () => q.close() });
    await run(
      "Go's recipe.Queue algorithm, ported",
      () => queueProducer(new Queue(ctx.client(), name('go'))),
      (c) => goStyleConsumer(c, `${name('go')}/`),
    );
    await run(
      'Queue',
      () => queueProducer(new Queue(ctx.client(), name('ours'))),
      (c) => queueConsumer(new Queue(c, name('ours'))),
    );
    let n = 0;
    await run(
      'PriorityQueue (4 priorities)',
      () => {
        const producer = new PriorityQueue(ctx.client(), name('prio'));
        return { put: (v) => producer.enqueue(v, n++ % 4), close: () => producer.close() };
      },
      (c) => queueConsumer(new PriorityQueue(c, name('prio'))),
    );
    await run(
      'WorkQueue (claim + ack)',
      async () => {
        const ps = await Session.create(ctx.client(), { ttl: 30 });
        const producer = new WorkQueue(ps, name('work'));
        return { put: (v) => producer.add(v), close: () => ps.close() };
      },
      (c) => workQueueConsumer(c, name('work')),
    );
    const floorRate = results[0]!.perSecond;
    const goRate = results[1]!.perSecond;
    table(
      `1 producer (${inFlight === 1 ? 'one enqueue at a time' : `${inFlight} enqueues in flight`}, ${s} s) ` +
        `and ${consumers} consumers, each on its own connection`,
      [
        'what',
        'delivered/s',
        '÷ raw floor',
        '÷ Go algorithm',
        'latency p50 ms',
        'p99 ms',
        'KV req/item',
        'watch msgs/item',
        'client CPU ms/item',
        'lost/dup',
      ],
      results.map((r) => [
        r.what,
        fmt.n(r.perSecond),
        fmt.ratio(r.perSecond / floorRate),
        fmt.ratio(r.perSecond / goRate),
        fmt.ms(percentile(r.latencies, 50)),
        fmt.ms(percentile(r.latencies, 99)),
        fmt.n(r.kvPerItem, 2),
        fmt.n(r.watchPerItem, 2),
        fmt.cpu(r.cpuPerItem),
        `${r.produced - r.delivered + r.duplicates}`,
      ]),
    );
    if (results.some((r) => r.duplicates > 0 || r.delivered !== r.produced))
      throw new Error('an item was lost or delivered twice');
  }

  // (c) backlog drain and (d) many waiting consumers
  const drain: (string | number)[][] = [];
  for (const [label, make] of [
    ["Go's algorithm", (c: Etcd3, p: string) => goStyleConsumer(c, `${p}/`)],
    ['Queue', (c: Etcd3, p: string) => queueConsumer(new Queue(c, p))],
  ] as const) {
    const prefix = `bench/queue/drain-${label.length}`;
    const producer = new Queue(client, prefix);
    const items = 1000;
    await Promise.all(
      Array.from({ length: 8 }, async (_, k) => {
        for (let j = k; j < items; j += 8) await producer.enqueue(`${j}`);
      }),
    );
    const clients = Array.from({ length: consumers }, () => ctx.client());
    await connect(clients);
    const cs = clients.map((c) => make(c, prefix));
    const before = await grpcMessages(ctx.metricsUrl);
    const cpu = process.cpuUsage();
    const started = performance.now();
    let got = 0;
    const stop = new AbortController();
    setMaxListeners(1000, stop.signal);
    await Promise.all(
      cs.map(async (c) => {
        while ((await c.take(stop.signal)) !== undefined) if (++got === items) stop.abort();
      }),
    );
    const elapsed = (performance.now() - started) / 1000;
    const cpuPerItem = cpuMs(cpu) / got;
    const req = requestsBetween(before, await grpcMessages(ctx.metricsUrl));
    drain.push([
      `${label}: drain ${items} queued items, ${consumers} consumers`,
      fmt.n(got / elapsed),
      fmt.n(req.kv / got, 2),
      fmt.n(req.watch / got, 2),
      fmt.cpu(cpuPerItem),
    ]);
    await Promise.all(cs.map((c) => c.close()));
    await producer.close();
  }
  for (const [label, make] of [
    ["Go's algorithm", (c: Etcd3, p: string) => goStyleConsumer(c, `${p}/`)],
    ['Queue', (c: Etcd3, p: string) => queueConsumer(new Queue(c, p))],
  ] as const) {
    const waiters = 16;
    const clients = Array.from({ length: waiters }, () => ctx.client());
    await connect(clients);
    const prefix = `bench/queue/many-${label.length}`;
    const r = await deliveries(
      ctx,
      label,
      Math.max(1, s / 2),
      new (class implements Producer {
        readonly q = new Queue(client, prefix);
        put(v: string) {
          return this.q.enqueue(v);
        }
        close() {
          return this.q.close();
        }
      })(),
      clients.map((c) => make(c, prefix)),
    );
    drain.push([
      `${label}: 1 producer, ${waiters} consumers`,
      fmt.n(r.perSecond),
      fmt.n(r.kvPerItem, 2),
      fmt.n(r.watchPerItem, 2),
      fmt.cpu(r.cpuPerItem),
    ]);
  }
  table(
    'Where the herd shows: etcd requests per delivered item',
    ['what', 'delivered/s', 'KV req/item', 'watch msgs/item', 'client CPU ms/item'],
    drain,
  );
  console.log(
    '\nKV req/item counts every Range/Txn/Put/DeleteRange etcd received, the enqueue included; watch msgs are',
  );
  console.log(
    "watch create/cancel messages. Go's algorithm sends one claim per waiting consumer per item, and its watch",
  );
  console.log("from a past revision waits for etcd 3.4's 100 ms catch-up loop. client CPU ms/item: this process's CPU");
  console.log('time (producer and consumers together) ÷ items. The same workload with the consumers split over 4');
  console.log('processes is in the workqueue benchmark.');
}
