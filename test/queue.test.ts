import { describe, expect, it } from 'vitest';
import { Queue } from '../src/index.js';
import { keysUnder, stillPending, useCluster, within } from './helpers.js';
import { requestCounts, tally, waitForCount } from './queue-helpers.js';

describe('Queue', () => {
  const etcd = useCluster();

  it("uses Go's layout: <prefix>/<19-digit ns>, the value, no lease; FIFO by mod revision", async () => {
    const client = etcd().client();
    await using q = new Queue(client, 'lay');
    const key = await q.enqueue('first');
    expect(key).toMatch(/^lay\/[0-9]{19}$/);
    const kv = (await client.getAll().prefix('lay/').exec()).kvs;
    expect(kv).toHaveLength(1);
    expect(kv[0]!.value.toString()).toBe('first');
    expect(kv[0]!.lease).toBe('0');
    // Items written by another client the way Go's Enqueue does (a plain key under the prefix), and
    // Go's rule that an item put again moves to the back (order is by mod revision).
    await client.put('lay/1000000000000000001').value('go-a');
    await client.put('lay/1000000000000000002').value('go-b');
    await client.put('lay/1000000000000000001').value('go-a2');
    expect(await q.size()).toBe(3);
    expect([await q.dequeue(), await q.dequeue(), await q.dequeue()]).toEqual(['first', 'go-b', 'go-a2']);
    expect(await q.size()).toBe(0);
    const item = q.dequeueItem();
    await q.enqueue(Buffer.from([0, 1, 255]));
    expect((await within(5000, item)).value).toEqual(Buffer.from([0, 1, 255]));
    expect(await keysUnder(client, 'lay/')).toEqual([]);
  });

  it('delivers in FIFO order to one consumer, whichever client enqueued', async () => {
    const producers = [etcd().client(), etcd().client(), etcd().client()].map((c) => new Queue(c, 'fifo'));
    const sent: string[] = [];
    for (let i = 0; i < 30; i++) {
      const v = `m${i}`;
      await producers[i % 3]!.enqueue(v);
      sent.push(v);
    }
    await using q = new Queue(etcd().client(), 'fifo');
    const got: string[] = [];
    for (let i = 0; i < 30; i++) got.push(await q.dequeue());
    expect(got).toEqual(sent);
    // Their spent receipts go now, not by an idle flush (a Txn 2 s later) inside a later test's count.
    await Promise.all(producers.map((p) => p.close()));
  });

  it('wakes one waiting consumer per item, in the order they started waiting', async () => {
    const admin = etcd().client();
    const consumers = Array.from({ length: 4 }, () => new Queue(etcd().client(), 'line'));
    const pending: Promise<string>[] = [];
    for (let i = 0; i < consumers.length; i++) {
      pending.push(consumers[i]!.dequeue());
      await waitForCount(admin, '__line/waiters/', i + 1); // queued strictly after the previous one
    }
    const producer = new Queue(admin, 'line');
    await producer.enqueue('a');
    expect(await within(5000, pending[0]!)).toBe('a');
    // The others were not woken: still waiting, still in line.
    expect(await stillPending(Promise.race(pending.slice(1)), 300)).toBe(true);
    expect(await keysUnder(admin, '__line/waiters/')).toHaveLength(3);
    for (const v of ['b', 'c', 'd']) await producer.enqueue(v);
    // The i-th waiter takes the i-th item. Waiters claim their items at once (docs/queue.md, step 5), so
    // which of their replies comes back first is not an order the queue promises.
    expect(await within(5000, Promise.all(pending))).toEqual(['a', 'b', 'c', 'd']);
    expect(await keysUnder(admin, '__line/waiters/')).toEqual([]);
    await Promise.all([producer, ...consumers].map((c) => c.close()));
  });

  it('keeps that order when a claim reaches the others as two watch responses (40 lines of 6)', async () => {
    // A claim deletes an item and the claimer's waiter key at one revision; etcd sends the two on two
    // watches, in either order. A waiter that acted on one alone took the next waiter's item (about
    // one line in 13 here, before core/whole-writes.ts).
    const admin = etcd().client();
    const clients = Array.from({ length: 6 }, () => etcd().client());
    const misordered: string[] = [];
    for (let round = 0; round < 40; round++) {
      const name = `split-${round}`;
      const consumers = clients.map((c) => new Queue(c, name));
      const taking: Promise<string>[] = [];
      for (const [i, q] of consumers.entries()) {
        taking.push(q.dequeue());
        await waitForCount(admin, `__${name}/waiters/`, i + 1);
      }
      const producer = new Queue(admin, name);
      const sent = ['a', 'b', 'c', 'd', 'e', 'f'];
      for (const v of sent) await producer.enqueue(v);
      const got = await within(10_000, Promise.all(taking), `line ${round}`);
      if (got.join('') !== sent.join('')) misordered.push(got.join(''));
      await Promise.all([producer, ...consumers].map((q) => q.close()));
    }
    expect(misordered).toEqual([]);
  });

  it('costs a bounded number of requests per item, however many consumers wait (no herd)', async () => {
    const cluster = etcd();
    const consumers = Array.from({ length: 8 }, () => new Queue(cluster.client(), 'herd'));
    const producer = new Queue(cluster.client(), 'herd');
    const items = 20;
    let delivered = 0;
    const stop = new AbortController();
    const deliveries: ((v: string) => void)[] = [];
    const loops = consumers.map(async (q) => {
      for (;;) {
        const v = await q.dequeue({ signal: stop.signal }).catch(() => undefined);
        if (v === undefined) return;
        delivered++;
        deliveries.shift()?.(v);
      }
    });
    await waitForCount(cluster.client(), '__herd/waiters/', 8);
    const before = await requestCounts(cluster.members[0]!.clientUrl);
    for (let i = 0; i < items; i++) {
      const got = new Promise<string>((resolve) => deliveries.push(resolve));
      await producer.enqueue(`h${i}`);
      await within(5000, got, `delivery of h${i}`);
    }
    const after = await requestCounts(cluster.members[0]!.clientUrl);
    stop.abort();
    await Promise.all(loops);
    expect(delivered).toBe(items);
    const perItem = (after.txn + after.range - before.txn - before.range) / items;
    // Go's Queue: every waiting consumer tries to claim every item (>= 9 requests here).
    // Ours: enqueue, claim, the claimer re-joining the line (waiters follow the queue's feed, no read per turn).
    expect(perItem).toBeLessThanOrEqual(6);
    await Promise.all(consumers.map((c) => c.close()));
  });

  it('N producers and M consumers, each on its own connection: every item delivered exactly once', async () => {
    const cluster = etcd();
    const perProducer = 60;
    const producers = Array.from({ length: 3 }, () => new Queue(cluster.client(), 'nm'));
    const consumers = Array.from({ length: 4 }, () => new Queue(cluster.client(), 'nm'));
    const total = producers.length * perProducer;
    const got: string[] = [];
    const stop = new AbortController();
    const loops = consumers.map(async (q) => {
      for (;;) {
        const v = await q.dequeue({ signal: stop.signal }).catch(() => undefined);
        if (v === undefined) return;
        got.push(v);
        if (got.length === total) stop.abort();
      }
    });
    await Promise.all(
      producers.map(async (p, i) => {
        for (let j = 0; j < perProducer; j++) await p.enqueue(`p${i}-${j}`);
      }),
    );
    await within(30_000, Promise.all(loops), 'consumers');
    const counts = tally(got);
    expect(counts.size).toBe(total);
    expect([...counts.values()].every((n) => n === 1)).toBe(true);
    const admin = cluster.client();
    expect(await keysUnder(admin, 'nm/')).toEqual([]);
    expect(await keysUnder(admin, '__nm/waiters/')).toEqual([]);
    await Promise.all([...producers, ...consumers].map((c) => c.close()));
    expect(await keysUnder(admin, '__nm/')).toEqual([]);
  });

  it("an aborted dequeue rejects with the signal's reason and leaves no key", async () => {
    const client = etcd().client();
    await using q = new Queue(client, 'abort');
    const controller = new AbortController();
    const pending = q.dequeue({ signal: controller.signal });
    await waitForCount(client, '__abort/waiters/', 1);
    const reason = new Error('caller gave up');
    controller.abort(reason);
    await expect(pending).rejects.toBe(reason);
    expect(await keysUnder(client, '__abort/waiters/')).toEqual([]);
    // Aborted before anything was written; aborted while joining; timed out.
    await expect(q.dequeue({ signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
    const early = new AbortController();
    const joining = q.dequeue({ signal: early.signal });
    early.abort(reason);
    await expect(joining).rejects.toBe(reason);
    await expect(q.dequeue({ signal: AbortSignal.timeout(200) })).rejects.toMatchObject({ name: 'TimeoutError' });
    expect(await keysUnder(client, '__abort/waiters/')).toEqual([]);
    expect(await keysUnder(client, 'abort/')).toEqual([]);
    // The queue still works, and the item is not lost to the aborted calls.
    await q.enqueue('after');
    expect(await q.dequeue()).toBe('after');
    await q.close();
    expect(await keysUnder(client, '__abort/')).toEqual([]);
  });

  it('keeps serving when its own lease is revoked behind its back', async () => {
    const client = etcd().client();
    await using q = new Queue(client, 'revoked', { ttl: 2 });
    const pending = q.dequeue();
    await waitForCount(client, '__revoked/waiters/', 1);
    const waiter = (await client.getAll().prefix('__revoked/waiters/').exec()).kvs[0]!;
    await client.leaseClient.leaseRevoke({ ID: waiter.lease });
    // The queue notices (keepalive), takes a new lease and joins the line again.
    await within(
      10_000,
      (async () => {
        for (;;) {
          const kvs = (await client.getAll().prefix('__revoked/waiters/').exec()).kvs;
          if (kvs.length === 1 && kvs[0]!.lease !== waiter.lease) return;
          await waitForCount(client, '__revoked/waiters/', 1);
          await new Promise((r) => setTimeout(r, 50));
        }
      })(),
      'new waiter key',
    );
    await q.enqueue('x');
    expect(await within(5000, pending)).toBe('x');
  });

  it('rejects bad input before writing anything', async () => {
    const client = etcd().client();
    const bad = (fn: () => unknown) => expect(fn).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    bad(() => new Queue(client, ''));
    bad(() => new Queue(client, Buffer.alloc(0)));
    bad(() => new Queue(undefined as never, 'x'));
    bad(() => new Queue({} as never, 'x'));
    bad(() => new Queue(client, 5 as never));
    bad(() => new Queue(client, 'x', { ttl: 0 }));
    bad(() => new Queue(client, 'x', { ttl: 1.5 }));
    bad(() => new Queue(client, 'x', 'opts' as never));
    const q = new Queue(client, 'badin');
    for (const v of [undefined, null, 5, {}, ['a']]) {
      await expect(q.enqueue(v as never)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', argument: 'value' });
    }
    await expect(q.dequeue({ signal: 'soon' as never })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      argument: 'options.signal',
    });
    await expect(q.dequeue(null as never)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    expect(await keysUnder(client, 'badin')).toEqual([]);
    expect(await keysUnder(client, '__badin')).toEqual([]);
    await q.close();
  });
});
