import type { Namespace } from 'etcd3';
import { afterAll, describe, expect, it } from 'vitest';
import {
  closeClient,
  createClient,
  Election,
  Mutex,
  PriorityQueue,
  Queue,
  Session,
  type EnqueueOptions,
  type QueueOptions,
} from '../src/index.js';
import { TcpProxy } from './fixtures/tcp-proxy.js';
import { keysUnder, useCluster, waitForKeyCount, waitForKeyGone, within } from './helpers.js';
import {
  beforeTxn,
  compactAll,
  deletesUnder,
  faultFor,
  putsUnder,
  requestCounts,
  tally,
  waitForCount,
  type RawTxn,
  Collected,
} from './queue-helpers.js';

/*
 * Queue and PriorityQueue under real network faults: a TCP proxy between
 * one client and etcd forwards a request but drops etcd's reply (the write
 * commits, the client hears nothing), cuts the connection, or restores it.
 * The only hook in the client says *when* to start dropping replies: just
 * before the request under test is sent.
 */

interface Kind {
  name: string;
  make(client: Namespace, name: string, options?: QueueOptions): Queue | PriorityQueue;
  enqueue(q: Queue | PriorityQueue, value: string, options?: EnqueueOptions): Promise<string>;
}

const kinds: Kind[] = [
  { name: 'Queue', make: (c, n, o) => new Queue(c, n, o), enqueue: (q, v, o) => (q as Queue).enqueue(v, o) },
  {
    name: 'PriorityQueue',
    make: (c, n, o) => new PriorityQueue(c, n, o),
    enqueue: (q, v, o) => (q as PriorityQueue).enqueue(v, 7, o),
  },
];

/** Dequeues into `taken` until `stop` aborts; any other rejection fails the test. */
function drain(q: Queue | PriorityQueue, taken: Collected, stop: AbortSignal): Promise<void> {
  return (async () => {
    for (;;) {
      let v: string;
      try {
        v = await q.dequeue({ signal: stop });
      } catch (err) {
        if (stop.aborted) return;
        throw err;
      }
      taken.push(v);
    }
  })();
}

/** Bookkeeping keys other than Go's per-priority sequence keys, which stay by design. */
async function leftovers(client: Namespace, name: string): Promise<string[]> {
  return (await keysUnder(client, `__${name}/`)).filter((k) => !/^__[^/]+\/[0-9]{5}$/.test(k));
}

const proxies: TcpProxy[] = [];
const clients: Namespace[] = [];
afterAll(async () => {
  await Promise.all(proxies.map((p) => p.close()));
  await Promise.all(clients.map((c) => closeClient(c)));
});

describe.each(kinds)('$name under network faults', (kind) => {
  const etcd = useCluster();

  async function proxied(callTimeoutMs = 500): Promise<{ proxy: TcpProxy; client: Namespace }> {
    const proxy = await TcpProxy.start(etcd().endpoints[0]!);
    proxies.push(proxy);
    const client = createClient({ hosts: proxy.endpoint, callTimeoutMs });
    clients.push(client);
    return { proxy, client };
  }

  function direct(): Namespace {
    const client = createClient({ hosts: etcd().endpoints });
    clients.push(client);
    return client;
  }

  it('(a) a lost enqueue reply while a consumer drains: 0 lost, 0 duplicated', async () => {
    const name = `${kind.name}-a`;
    const { proxy, client } = await proxied();
    const producer = kind.make(client, name);
    const consumer = kind.make(direct(), name);
    const taken = new Collected();
    const stop = new AbortController();
    const draining = drain(consumer, taken, stop.signal);
    const rounds = 6;
    await producer.size(); // the connection is up before replies are dropped
    let hits = 0;
    for (let i = 0; i < rounds; i++) {
      const v = `v${i}`;
      const hook = beforeTxn(client, putsUnder(`${name}/`), () => proxy.dropReplies());
      const sending = kind.enqueue(producer, v);
      // The item committed and the consumer took it while the producer still waits for its reply.
      await taken.until((vs) => vs.includes(v), `consumer took ${v}`);
      proxy.restore();
      await within(20_000, sending, `enqueue ${v} after the lost reply`);
      hits += hook.hits;
    }
    expect(hits).toBe(rounds);
    // Every enqueue has resolved: a duplicate would be in etcd by now.
    expect(await consumer.size()).toBe(0);
    stop.abort();
    await draining;
    expect([...tally(taken.values)]).toEqual(Array.from({ length: rounds }, (_, i) => [`v${i}`, 1]));
    await Promise.all([producer.close(), consumer.close()]);
    expect(await leftovers(etcd().client(), name)).toEqual([]);
  });

  it('(b) a lost claim reply followed by a cut longer than every TTL: delivered once, no rejection', async () => {
    const name = `${kind.name}-b`;
    const admin = etcd().client();
    const { proxy, client } = await proxied();
    const ttl = 1;
    const consumer = kind.make(client, name, { ttl });
    const producer = kind.make(admin, name);
    await consumer.size();
    for (const [i, waiting] of [
      [0, false],
      [1, true],
    ] as const) {
      const v = `b${i}`;
      beforeTxn(client, deletesUnder(`${name}/`), () => proxy.dropReplies());
      let key: string;
      let pending: Promise<string>;
      if (waiting) {
        // The consumer waits at the head of the line first, on the queue's own lease.
        pending = consumer.dequeue();
        await waitForCount(admin, `__${name}/waiters/`, 1);
        key = await kind.enqueue(producer, v);
      } else {
        key = await kind.enqueue(producer, v);
        pending = consumer.dequeue();
      }
      await waitForKeyGone(admin, key); // the claim committed; its reply is lost
      proxy.cut();
      await faultFor(ttl * 1000 + 2000); // the queue's lease is gone in etcd by now
      proxy.restore();
      expect(await within(20_000, pending, `dequeue of ${v} after the outage`)).toBe(v);
    }
    expect(await consumer.size()).toBe(0);
    await consumer.close();
    expect(await leftovers(admin, name)).toEqual([]);
  });

  it('(c) a lost reply followed by a compaction: enqueue and dequeue settle from receipts, not history', async () => {
    const name = `${kind.name}-c`;
    const admin = etcd().client();
    const { proxy, client } = await proxied();
    const q = kind.make(client, name);
    await q.size();
    beforeTxn(client, putsUnder(`${name}/`), () => proxy.dropReplies());
    const sending = kind.enqueue(q, 'once');
    await waitForKeyCount(admin, `${name}/`, 1);
    await compactAll(admin, `${name}-filler`);
    proxy.restore();
    const key = await within(20_000, sending, 'enqueue after the compaction');
    expect(await keysUnder(admin, `${name}/`)).toEqual([key]);

    beforeTxn(client, deletesUnder(`${name}/`), () => proxy.dropReplies());
    const taking = q.dequeue();
    await waitForKeyGone(admin, key);
    await compactAll(admin, `${name}-filler`);
    proxy.restore();
    expect(await within(20_000, taking, 'dequeue after the compaction')).toBe('once');
    expect(await q.size()).toBe(0);
    await q.close();
    expect(await leftovers(admin, name)).toEqual([]);
  });

  it('(d) re-sends that etcd3 makes on its own (default policies): 0 lost, 0 duplicated', async () => {
    const name = `${kind.name}-d`;
    const cluster = etcd();
    const admin = cluster.client();
    const proxy = await TcpProxy.start(cluster.endpoints[0]!);
    proxies.push(proxy);
    const plain = cluster.client({ hosts: [proxy.endpoint] }); // new Etcd3(...): silent re-sends, no deadlines
    const q = kind.make(plain, name);
    const url = cluster.members[0]!.clientUrl;
    await q.size();

    const enqueueHook = beforeTxn(plain, putsUnder(`${name}/`), () => proxy.dropReplies());
    const sending = kind.enqueue(q, 'one');
    await waitForKeyCount(admin, `${name}/`, 1);
    const calls = enqueueHook.calls;
    const before = await requestCounts(url);
    proxy.restore(); // resets the connection: etcd3 re-sends the Txn by itself
    const key = await within(20_000, sending, 'enqueue');
    const hidden = (await requestCounts(url)).txn - before.txn - (enqueueHook.calls - calls);
    expect(hidden).toBeGreaterThan(0);
    expect(await keysUnder(admin, `${name}/`)).toEqual([key]);

    const claimHook = beforeTxn(plain, deletesUnder(`${name}/`), () => proxy.dropReplies());
    const taking = q.dequeue();
    await waitForKeyGone(admin, key);
    const calls2 = claimHook.calls;
    const before2 = await requestCounts(url);
    proxy.restore();
    expect(await within(20_000, taking, 'dequeue')).toBe('one');
    expect((await requestCounts(url)).txn - before2.txn - (claimHook.calls - calls2)).toBeGreaterThan(0);
    expect(await q.size()).toBe(0);
    await q.close();
    expect(await leftovers(admin, name)).toEqual([]);
  });

  it("dequeue never fails because of the queue's own lease, even a write refused for a dropped lease", async () => {
    const name = `${kind.name}-lease`;
    const admin = etcd().client();
    const client = direct();
    const consumers = Array.from({ length: 3 }, () => kind.make(client, name, { ttl: 1 }));
    // The first joins of the line find their lease revoked just before their Txn: etcd refuses
    // them with "requested lease not found", before the queue's keepalive notices.
    const isJoin = (req: RawTxn) => putsUnder(`__${name}/waiters/`)(req);
    const hook = beforeTxn(
      client,
      isJoin,
      async (req) => {
        const put = req.success!.find((op) => op.request_put?.lease)!.request_put!;
        await admin.leaseClient.leaseRevoke({ ID: String(put.lease) }).catch(() => undefined);
      },
      4,
    );
    const taken = new Collected();
    const stop = new AbortController();
    const draining = consumers.map((c) => drain(c, taken, stop.signal));
    const producer = kind.make(admin, name);
    const total = 30;
    for (let i = 0; i < total; i++) {
      await kind.enqueue(producer, `l${i}`);
      // Now and then revoke whatever lease the line is on, from outside.
      if (i % 10 === 5) {
        const waiter = (await admin.getAll().prefix(`__${name}/waiters/`).exec()).kvs[0];
        if (waiter) await admin.leaseClient.leaseRevoke({ ID: waiter.lease }).catch(() => undefined);
      }
    }
    await taken.until((vs) => vs.length >= total, 'every item taken', 30_000);
    expect(hook.hits).toBe(4);
    stop.abort();
    await Promise.all(draining); // a rejection other than the stop would fail here
    expect(tally(taken.values).size).toBe(total);
    expect(taken.values).toHaveLength(total);
    await Promise.all([producer, ...consumers].map((c) => c.close()));
    expect(await leftovers(admin, name)).toEqual([]);
  });

  it('a guarded enqueue by a deposed leader, or a lock holder that let go, writes nothing', async () => {
    const name = `${kind.name}-guard`;
    const admin = etcd().client();
    const q = kind.make(direct(), name);
    const s1 = await Session.create(admin, { ttl: 10 });
    const e1 = new Election(s1, `${name}-leader`);
    await e1.campaign('old');
    const guard = e1.ifLeader();
    await kind.enqueue(q, 'while-leading', { guard });
    // Deposed: its lease is revoked (as after a pause past the TTL), another candidate leads.
    await admin.leaseClient.leaseRevoke({ ID: s1.leaseId });
    await using s2 = await Session.create(admin, { ttl: 10 });
    const e2 = new Election(s2, `${name}-leader`);
    await within(10_000, e2.campaign('new'), 'the new leader');
    await expect(kind.enqueue(q, 'stale', { guard })).rejects.toMatchObject({ code: 'NOT_LEADER' });
    await kind.enqueue(q, 'from-new-leader', { guard: e2.ifLeader() });

    const m = new Mutex(s2, `${name}-lock`);
    await m.lock();
    const owner = m.ifOwner();
    await m.unlock();
    await expect(kind.enqueue(q, 'after-unlock', { guard: owner })).rejects.toMatchObject({ code: 'LOCK_NOT_HELD' });
    await expect(
      kind.enqueue(q, 'compares', { guard: [{ key: `${name}-flag`, target: 'Version', result: '>', value: 0n }] }),
    ).rejects.toMatchObject({ code: 'LOCK_NOT_HELD' });
    await admin.put(`${name}-flag`).value('on');
    await kind.enqueue(q, 'flag-on', { guard: [{ key: `${name}-flag`, target: 'Version', result: '>', value: 0n }] });

    const values = await admin.getAll().prefix(`${name}/`).strings();
    expect(Object.values(values).sort()).toEqual(['flag-on', 'from-new-leader', 'while-leading']);
    await q.close();
    expect(await leftovers(admin, name)).toEqual([]);
  });
});
