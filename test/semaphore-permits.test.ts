import { describe, expect, it } from 'vitest';
import { MAX_PERMITS_PER_ACQUIRE, Semaphore, Session, type PermitHandle } from '../src/index.js';
import { keysUnder, useCluster, waitForKeyCount, within } from './helpers.js';

describe('Semaphore.acquire({ permits: n })', () => {
  const etcd = useCluster();

  it('writes n keys <name>/queue/<19 digits>-<i> in one Txn (one create revision), all released together', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const sem = new Semaphore(session, 'wlayout', 5);
    const held = await sem.acquire({ permits: 3 });
    const kvs = (await client.getAll().prefix('wlayout/queue/').exec()).kvs;
    expect(kvs).toHaveLength(3);
    const base = held.key.slice(0, -4);
    expect(held.key).toMatch(/^wlayout\/queue\/\d{19}-000$/);
    expect(kvs.map((kv) => kv.key.toString()).sort()).toEqual(
      [0, 1, 2].map((i) => `${base}-00${i}`.replace('--', '-')),
    );
    expect(new Set(kvs.map((kv) => kv.create_revision))).toEqual(new Set([held.fencingToken.toString()]));
    expect(kvs.every((kv) => kv.lease === session.leaseId && kv.value.length === 0)).toBe(true);
    expect(await sem.usage()).toEqual({ holders: 3, waiters: 0 });
    await held.release();
    expect(await keysUnder(client, 'wlayout/queue/')).toEqual([]);
  });

  it('takes all n or none, strictly FIFO: a single-permit request behind a waiting large one waits too', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const sem = new Semaphore(session, 'fifo-w', 4);
    const singles = await Promise.all([sem.acquire(), sem.acquire(), sem.acquire()]);
    const order: string[] = [];
    const big = sem.acquire({ permits: 2 }).then((h) => {
      order.push('big');
      return h;
    });
    await waitForKeyCount(client, 'fifo-w/queue/', 5);
    const small = sem.acquire().then((h) => {
      order.push('small');
      return h;
    });
    await waitForKeyCount(client, 'fifo-w/queue/', 6);
    // One permit is free, but the large request is ahead: nobody barges past it.
    expect(await sem.usage()).toEqual({ holders: 3, waiters: 3 });
    expect(order).toEqual([]);
    await singles[0]!.release();
    const bigHeld = await within(10_000, big);
    expect(order).toEqual(['big']);
    expect(await sem.usage()).toEqual({ holders: 4, waiters: 1 });
    await singles[1]!.release();
    const smallHeld = await within(10_000, small);
    expect(order).toEqual(['big', 'small']);
    for (const h of [bigHeld, smallHeld, singles[2]!]) await h.release();
    expect(await keysUnder(client, 'fifo-w/queue/')).toEqual([]);
  });

  it('aborted and refused requests leave no key, and the line moves on', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const sem = new Semaphore(session, 'abort-w', 3);
    const holder = await sem.acquire({ permits: 2 });
    // tryAcquire of more than is free: undefined, nothing left behind.
    expect(await sem.tryAcquire({ permits: 2 })).toBeUndefined();
    expect(await keysUnder(client, 'abort-w/queue/')).toHaveLength(2);
    // The first waiter (a large one) and a deeper one, both aborted.
    const first = new AbortController();
    const deeper = new AbortController();
    const p1 = sem.acquire({ permits: 3, signal: first.signal });
    await waitForKeyCount(client, 'abort-w/queue/', 5);
    const p2 = sem.acquire({ permits: 2, signal: deeper.signal });
    await waitForKeyCount(client, 'abort-w/queue/', 7);
    const behind = sem.acquire(); // behind both
    await waitForKeyCount(client, 'abort-w/queue/', 8);
    deeper.abort(new Error('deeper gave up'));
    await expect(p2).rejects.toThrow('deeper gave up');
    expect(await keysUnder(client, 'abort-w/queue/')).toHaveLength(6);
    first.abort(new Error('first gave up'));
    await expect(p1).rejects.toThrow('first gave up');
    // With both gone, the single request behind them fits next to the holder.
    const h = await within(10_000, behind);
    expect(await keysUnder(client, 'abort-w/queue/')).toHaveLength(3);
    await h.release();
    await holder.release();
    expect(await keysUnder(client, 'abort-w/queue/')).toEqual([]);
  });

  it('rejects a bad count with INVALID_ARGUMENT naming options.permits, before writing', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const sem = new Semaphore(session, 'bad-w', 4);
    for (const permits of [0, 5, 1.5, '2', -1]) {
      await expect(sem.acquire({ permits: permits as number })).rejects.toMatchObject({
        code: 'INVALID_ARGUMENT',
        argument: 'options.permits',
      });
    }
    const big = new Semaphore(session, 'bad-w2', 1000);
    await expect(big.acquire({ permits: MAX_PERMITS_PER_ACQUIRE + 1 })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      argument: 'options.permits',
    });
    expect(await keysUnder(client, 'bad-w')).toEqual([]);
  });

  it('never more than N permits held (per etcd); a request of N/2 at the head is served amid single ones', async () => {
    const client = etcd().client();
    const N = 4;
    const stop = new AbortController();
    let violations = 0;
    let checks = 0;
    /** Records a hold in etcd and, in the same Txn, reads every recorded hold: their sum is exact at that revision. */
    async function occupy(h: PermitHandle, n: number, id: string): Promise<void> {
      const res = await h
        .ifOwner()
        .then(client.put(`wocc/${id}`).value(String(n)), client.getAll().prefix('wocc/'))
        .commit();
      if (!res.succeeded) return; // lost the permit: nothing recorded
      const all = res.responses[1]!.response_range!.kvs.map((kv) => Number(kv.value.toString()));
      checks++;
      if (all.reduce((a, b) => a + b, 0) > N) violations++;
    }
    const streamers = Array.from({ length: 6 }, async (_, w) => {
      const c = etcd().client();
      await using session = await Session.create(c, { ttl: 10 });
      const sem = new Semaphore(session, 'stream', N);
      for (let i = 0; !stop.signal.aborted && i < 10_000; i++) {
        const n = w === 5 && i % 3 === 0 ? 3 : 1; // one streamer also asks for 3 now and then
        let h: PermitHandle;
        try {
          h = await sem.acquire({ permits: n, signal: stop.signal });
        } catch {
          break;
        }
        await occupy(h, n, `s${w}-${i}`);
        await new Promise((r) => setTimeout(r, 5));
        await client.delete().key(`wocc/s${w}-${i}`);
        await h.release();
      }
    });
    await using session = await Session.create(client, { ttl: 10 });
    const sem = new Semaphore(session, 'stream', N);
    // Let the stream get going, then ask for N/2 several times and time each.
    await waitForKeyCount(client, 'stream/queue/', N);
    const waits: number[] = [];
    for (let i = 0; i < 20; i++) {
      const t0 = performance.now();
      const h = await within(20_000, sem.acquire({ permits: N / 2 }), 'the N/2 request');
      waits.push(performance.now() - t0);
      await occupy(h, N / 2, `big-${i}`);
      await client.delete().key(`wocc/big-${i}`);
      await h.release();
    }
    stop.abort();
    await within(30_000, Promise.all(streamers));
    console.log(
      `semaphore permits: N/2 request served in ${waits.map((w) => Math.round(w)).join(', ')} ms; ` +
        `${checks} occupancy checks`,
    );
    expect(violations).toBe(0);
    expect(checks).toBeGreaterThan(100);
    expect(Math.max(...waits)).toBeLessThan(10_000);
    expect(await keysUnder(client, 'stream/queue/')).toEqual([]);
  }, 90_000);
});
