import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Etcd3 } from 'etcd3';
import { op, range, txn } from '../src/core/kv.js';
import { openWatch, type WatchHandle } from '../src/core/watch-hub.js';
import { PrefixCache, ServiceDiscovery, ServiceRegistry } from '../src/index.js';
import { fmt, interleaved, percentile, table, type BenchContext } from './lib.js';

/*
 * npm run bench -- discovery
 *
 * Propagation: how long from a write until 10 watchers (each on its own
 * connection) have seen it.
 *  (a) raw: put → event on a plain prefix watch (the core watch hub, no cache)
 *  (b) raw, registration-shaped: lease grant + put → event on a plain prefix watch
 *  (c) ServiceRegistry.register() → 'added' on 10 ServiceDiscovery instances
 *  (d) ServiceRegistry.register() → event on a plain prefix watch (splits (c) into registry and discovery costs)
 * Latencies are per watcher (10 samples per write) and for the last of the 10.
 * Each write is removed again after the measurement (delete / revoke / deregister).
 *
 * Memory: heap used per 1,000 cached instances (10,000 registrations), for a
 * PrefixCache alone, a ServiceDiscovery (cache + parsed instances), and the
 * floor of holding the same keys and values in a Map<string, string>.
 */

const WATCHERS = 10;

interface Seen {
  perWatcher: number[];
  lastOfTen: number[];
}

/** A write and the moment every watcher saw it: resolves once `expect(key)` was reported by all. */
class Arrivals {
  readonly #pending = new Map<string, { started: number; left: number; resolve: () => void }>();
  readonly seen: Seen = { perWatcher: [], lastOfTen: [] };

  expect(key: string, started: number): Promise<void> {
    return new Promise((resolve) => this.#pending.set(key, { started, left: WATCHERS, resolve }));
  }

  arrived(key: string): void {
    const p = this.#pending.get(key);
    if (!p) return;
    const elapsed = performance.now() - p.started;
    this.seen.perWatcher.push(elapsed);
    if (--p.left === 0) {
      this.#pending.delete(key);
      this.seen.lastOfTen.push(elapsed);
      p.resolve();
    }
  }
}

async function propagation(ctx: BenchContext): Promise<void> {
  const writer = ctx.client();
  const watcherClients: Etcd3[] = Array.from({ length: WATCHERS }, () => ctx.client());

  // (a) and (b): plain prefix watches on the core hub.
  const raw = new Arrivals();
  const rawLease = new Arrivals();
  const regRaw = new Arrivals();
  const handles: WatchHandle[] = [];
  const watchInto = (c: Etcd3, prefix: string, arrivals: Arrivals) =>
    openWatch(
      c,
      { key: Buffer.from(prefix), prefix: true, noDelete: true },
      {
        onEvents: (events) => {
          for (const e of events) arrivals.arrived(e.kv.key.toString());
        },
        onEnd: () => undefined,
      },
    );
  for (const c of watcherClients) {
    handles.push(await watchInto(c, 'bench/disco/raw/', raw));
    handles.push(await watchInto(c, 'bench/disco/lease/', rawLease));
    handles.push(await watchInto(c, 'services/bench-reg/', regRaw));
  }
  // (c): 10 ServiceDiscovery instances.
  const ours = new Arrivals();
  const discos = watcherClients.map((c) => new ServiceDiscovery(c, 'bench-disco'));
  await Promise.all(discos.map((d) => d.ready()));
  for (const d of discos)
    d.on('change', (c) => {
      if (c.type === 'added') ours.arrived(c.instance.key);
    });
  // Warm the writer's lease and KV channels.
  await writer.get('bench/disco/warm').string();

  const value = JSON.stringify({
    address: '10.0.0.1:8008',
    metadata: { zone: 'a' },
    registeredAt: new Date().toISOString(),
  });
  let n = 0;
  const rawOp = async () => {
    const key = `bench/disco/raw/${n++}`;
    const seen = raw.expect(key, performance.now());
    await writer.put(key).value(value);
    await seen;
    await writer.delete().key(key);
  };
  const rawLeaseOp = async () => {
    const key = `bench/disco/lease/${n++}`;
    const seen = rawLease.expect(key, performance.now());
    const lease = await writer.leaseClient.leaseGrant({ TTL: 10 });
    await writer.kv.put({ key: Buffer.from(key), value: Buffer.from(value), lease: lease.ID });
    await seen;
    await writer.leaseClient.leaseRevoke({ ID: lease.ID });
  };
  const registerOp = (service: string, arrivals: Arrivals) => async () => {
    const id = `i${n++}`;
    const seen = arrivals.expect(`services/${service}/${id}`, performance.now());
    const reg = await ServiceRegistry.register(writer, {
      service,
      id,
      address: '10.0.0.1:8008',
      metadata: { zone: 'a' },
      ttl: 10,
    });
    await seen;
    await reg.deregister();
  };
  const oursOp = registerOp('bench-disco', ours);
  const regOp = registerOp('bench-reg', regRaw);
  const timings = await interleaved(ctx.seconds, [rawOp, rawLeaseOp, oursOp, regOp]);
  for (const h of handles) h.close();
  await Promise.all(discos.map((d) => d.close()));

  const row = (what: string, s: Seen, base: Seen | undefined, i: number) => [
    what,
    s.lastOfTen.length,
    fmt.cpu(timings[i]!.cpuPerOp),
    fmt.ms(percentile(s.perWatcher, 50)),
    fmt.ms(percentile(s.perWatcher, 99)),
    fmt.ms(percentile(s.lastOfTen, 50)),
    fmt.ms(percentile(s.lastOfTen, 99)),
    base ? fmt.ratio(percentile(s.lastOfTen, 50) / percentile(base.lastOfTen, 50)) : '1.00×',
  ];
  table(
    `Write → seen by ${WATCHERS} watchers (each on its own connection), ms from the call`,
    [
      'what',
      'writes',
      'client CPU ms/write',
      'per watcher p50',
      'per watcher p99',
      'all 10 p50',
      'all 10 p99',
      'all-10 p50 ratio',
    ],
    [
      row('(a) raw put → plain prefix watch', raw.seen, undefined, 0),
      row('(b) raw lease grant + put → plain prefix watch', rawLease.seen, raw.seen, 1),
      row('(c) ServiceRegistry.register → ServiceDiscovery', ours.seen, raw.seen, 2),
      row('(d) ServiceRegistry.register → plain prefix watch', regRaw.seen, raw.seen, 3),
    ],
  );
  const c = percentile(ours.seen.lastOfTen, 50);
  const b = percentile(rawLease.seen.lastOfTen, 50);
  const d = percentile(regRaw.seen.lastOfTen, 50);
  console.log(
    `\n(c) ÷ (b), the same two requests (grant + write) plus registry and discovery: ${fmt.ratio(c / b)} at p50;`,
  );
  console.log(`of which the registry (d ÷ b): ${fmt.ratio(d / b)}, the discovery side (c ÷ d): ${fmt.ratio(c / d)}.`);
  console.log(
    'register() is a lease grant then a create-if-absent Txn: two round trips before the watch event can leave etcd.',
  );
  console.log('client CPU ms/write: the bench process (writer, its removal, and all 10 watchers) per write cycle.');
}

async function memory(ctx: BenchContext): Promise<void> {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const heap = async () => {
    for (let i = 0; i < 3; i++) {
      gc();
      await new Promise((r) => setImmediate(r));
    }
    return process.memoryUsage().heapUsed;
  };
  const count = 10_000;
  const client = ctx.client();
  const lease = await client.leaseClient.leaseGrant({ TTL: 600 });
  const registeredAt = new Date().toISOString();
  for (let i = 0; i < count; i += 100) {
    await txn(
      client,
      [],
      Array.from({ length: Math.min(100, count - i) }, (_, j) => {
        const k = i + j;
        const value = JSON.stringify({
          address: `10.${(k >> 16) & 255}.${(k >> 8) & 255}.${k & 255}:8008`,
          metadata: { zone: `zone-${k % 3}`, version: '1.4.2' },
          registeredAt,
        });
        return op.put(`services/bench-mem/instance-${String(k).padStart(5, '0')}`, value, lease.ID);
      }),
    );
  }
  const sample = (await range(client, `services/bench-mem/instance-00000`)).kvs[0]!;
  const perThousand = (bytes: number) => bytes / (count / 1000);

  // Floor: the same keys and values as JS strings in a Map.
  let before = await heap();
  const res = await client.getAll().prefix('services/bench-mem/').exec();
  const floor = new Map(res.kvs.map((kv) => [kv.key.toString(), kv.value.toString()]));
  (res as { kvs: unknown[] }).kvs = [];
  const floorBytes = (await heap()) - before;
  if (floor.size !== count) throw new Error(`expected ${count} keys, got ${floor.size}`);
  floor.clear();

  before = await heap();
  const cache = new PrefixCache(client, 'services/bench-mem/');
  await cache.ready();
  const cacheBytes = (await heap()) - before;
  if (cache.size !== count) throw new Error(`cache holds ${cache.size} keys`);
  await cache.close();

  before = await heap();
  const disco = new ServiceDiscovery(client, 'bench-mem');
  await disco.ready();
  const discoBytes = (await heap()) - before;
  if (disco.size !== count) throw new Error(`discovery holds ${disco.size} instances`);
  await disco.close();
  await client.leaseClient.leaseRevoke({ ID: lease.ID });

  const kb = (bytes: number) => `${fmt.n(perThousand(bytes) / 1024, 0)} KiB`;
  table(
    `Heap per 1,000 cached instances (${count.toLocaleString('en')} registered; ` +
      `key ${sample.key.length} B, value ${sample.value.length} B)`,
    ['what', 'heap per 1,000', 'bytes per instance', 'ratio to floor'],
    [
      ['floor: Map<string, string> of keys and values', kb(floorBytes), fmt.n(floorBytes / count), '1.00×'],
      ['PrefixCache', kb(cacheBytes), fmt.n(cacheBytes / count), fmt.ratio(cacheBytes / floorBytes)],
      [
        'ServiceDiscovery (cache + parsed instances)',
        kb(discoBytes),
        fmt.n(discoBytes / count),
        fmt.ratio(discoBytes / floorBytes),
      ],
    ],
  );
}

export default async function run(ctx: BenchContext): Promise<void> {
  await propagation(ctx);
  await memory(ctx);
}
