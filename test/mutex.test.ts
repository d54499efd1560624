import { describe, expect, it } from 'vitest';
import { isRecipeError, Mutex, Session, withLock } from '../src/index.js';
import { keysUnder, rejectsBadNames, rejectsInvalid, stillPending, useCluster, waitForKey, within } from './helpers.js';

describe('Mutex', () => {
  const etcd = useCluster();

  it("uses Go's key layout: <name>/<lease hex>, empty value, attached to the lease", async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const m = new Mutex(session, 'layout/lock');
    expect(m.key).toBe(`layout/lock/${BigInt(session.leaseId).toString(16)}`);
    await m.lock();
    const kv = (await client.getAll().prefix('layout/lock/').exec()).kvs;
    expect(kv).toHaveLength(1);
    expect(kv[0]!.key.toString()).toBe(m.key);
    expect(kv[0]!.value.length).toBe(0);
    expect(kv[0]!.lease).toBe(session.leaseId);
    expect(m.fencingToken).toBe(BigInt(kv[0]!.create_revision));
    // Go does not normalise slashes: "a/" gives "a//<hex>".
    expect(new Mutex(session, 'x/').key).toBe(`x//${session.leaseHex}`);
    await m.unlock();
    expect(await keysUnder(client, 'layout/')).toEqual([]);
  });

  it('keeps mutual exclusion among many contenders on separate connections', async () => {
    const workers = 8;
    const rounds = 6;
    const counterKey = 'mx/counter';
    let inside = 0;
    let maxInside = 0;
    const tokens: bigint[] = [];
    const admin = etcd().client();
    await admin.put(counterKey).value('0');
    await Promise.all(
      Array.from({ length: workers }, async () => {
        const client = etcd().client();
        await using session = await Session.create(client, { ttl: 10 });
        const m = new Mutex(session, 'mx/lock');
        for (let i = 0; i < rounds; i++) {
          await using held = await m.acquire();
          inside++;
          maxInside = Math.max(maxInside, inside);
          tokens.push(held.fencingToken);
          // A read-modify-write that would lose updates without the lock, fenced by ownership.
          const n = Number(await client.get(counterKey).string());
          await new Promise((r) => setImmediate(r));
          const res = await held
            .ifOwner()
            .then(client.put(counterKey).value(String(n + 1)))
            .commit();
          expect(res.succeeded).toBe(true);
          inside--;
        }
      }),
    );
    expect(maxInside).toBe(1);
    expect(await admin.get(counterKey).string()).toBe(String(workers * rounds));
    // Fencing tokens strictly increase in the order holders entered.
    for (let i = 1; i < tokens.length; i++) expect(tokens[i]! > tokens[i - 1]!).toBe(true);
    expect(await keysUnder(admin, 'mx/lock/')).toEqual([]);
  });

  it('serves waiters in FIFO order', async () => {
    const client = etcd().client();
    await using holderSession = await Session.create(client, { ttl: 10 });
    const holder = new Mutex(holderSession, 'fifo/lock');
    await holder.lock();
    const order: number[] = [];
    const waiters: Promise<void>[] = [];
    const sessions: Session[] = [];
    for (let i = 0; i < 6; i++) {
      const s = await Session.create(etcd().client(), { ttl: 10 });
      sessions.push(s);
      const m = new Mutex(s, 'fifo/lock');
      waiters.push(
        m.lock().then(async () => {
          order.push(i);
          await m.unlock();
        }),
      );
      await waitForKey(client, m.key); // queued strictly after the previous waiter
    }
    await holder.unlock();
    await within(20_000, Promise.all(waiters), 'waiters');
    expect(order).toEqual([0, 1, 2, 3, 4, 5]);
    await Promise.all(sessions.map((s) => s.close()));
  });

  it('serves a deep line (more waiters than DEEP_IN_LINE) in FIFO order, one at a time', async () => {
    const client = etcd().client();
    const clients = Array.from({ length: 4 }, () => etcd().client());
    await using holderSession = await Session.create(client, { ttl: 20 });
    const holder = await new Mutex(holderSession, 'deep/lock').acquire();
    const sessions = await Promise.all(
      Array.from({ length: 80 }, (_, i) => Session.create(clients[i % 4]!, { ttl: 20 })),
    );
    const order: number[] = [];
    let inside = 0;
    const waiters: Promise<void>[] = [];
    for (const [i, s] of sessions.entries()) {
      const m = new Mutex(s, 'deep/lock');
      waiters.push(
        m.acquire().then(async (h) => {
          inside++;
          expect(inside).toBe(1);
          order.push(i);
          inside--;
          await h.release();
        }),
      );
      // Queue strictly in index order: wait until this waiter's key exists.
      await waitForKey(client, m.key);
    }
    await holder.release();
    await within(60_000, Promise.all(waiters), 'deep line');
    expect(order).toEqual(sessions.map((_, i) => i));
    await Promise.all(sessions.map((s) => s.close()));
  });

  it('tryLock takes a free lock and fails on a held one without leaving a key', async () => {
    const client = etcd().client();
    await using a = await Session.create(client, { ttl: 10 });
    await using b = await Session.create(etcd().client(), { ttl: 10 });
    const ma = new Mutex(a, 'try/lock');
    const mb = new Mutex(b, 'try/lock');
    expect(await ma.tryLock()).toBe(true);
    expect(await mb.tryLock()).toBe(false);
    expect(mb.held).toBe(false);
    expect(await keysUnder(client, 'try/lock/')).toEqual([ma.key]);
    expect(await mb.tryAcquire()).toBeUndefined();
    await ma.unlock();
    expect(await mb.tryLock()).toBe(true);
    await mb.unlock();
  });

  it("an aborted lock() rejects with the signal's reason and leaves no key", async () => {
    const client = etcd().client();
    await using a = await Session.create(client, { ttl: 10 });
    await using b = await Session.create(etcd().client(), { ttl: 10 });
    const holder = new Mutex(a, 'abort/lock');
    await holder.lock();
    const waiter = new Mutex(b, 'abort/lock');
    const controller = new AbortController();
    const pending = waiter.lock({ signal: controller.signal });
    await waitForKey(client, waiter.key);
    const reason = new Error('caller gave up');
    controller.abort(reason);
    await expect(pending).rejects.toBe(reason);
    expect(await keysUnder(client, 'abort/lock/')).toEqual([holder.key]);
    expect(waiter.held).toBe(false);
    // An already-aborted signal rejects before anything is written.
    await expect(waiter.lock({ signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
    expect(await keysUnder(client, 'abort/lock/')).toEqual([holder.key]);
    // The waiter can still take the lock later.
    await holder.unlock();
    await waiter.lock();
    await waiter.unlock();
  });

  it('a timeout signal works as a lock timeout', async () => {
    const client = etcd().client();
    await using a = await Session.create(client, { ttl: 10 });
    await using b = await Session.create(etcd().client(), { ttl: 10 });
    await new Mutex(a, 'timeout/lock').lock();
    const err = await new Mutex(b, 'timeout/lock').lock({ signal: AbortSignal.timeout(200) }).catch((e: unknown) => e);
    expect((err as Error).name).toBe('TimeoutError');
    expect(await keysUnder(client, 'timeout/lock/')).toHaveLength(1);
  });

  it("releases the lock and aborts the holder's signal when its session expires", async () => {
    const client = etcd().client();
    const a = await Session.create(client, { ttl: 10 });
    await using b = await Session.create(etcd().client(), { ttl: 10 });
    const held = await new Mutex(a, 'expire/lock').acquire();
    const waiter = new Mutex(b, 'expire/lock').acquire();
    await waitForKey(client, `expire/lock/${b.leaseHex}`);
    // The lease disappears behind the holder's back (an operator, or expiry on the server).
    await client.leaseClient.leaseRevoke({ ID: a.leaseId });
    const reason = await within(
      10_000,
      new Promise<unknown>((resolve) => {
        held.signal.addEventListener('abort', () => resolve(held.signal.reason), { once: true });
      }),
      'holder signal',
    );
    expect(isRecipeError(reason, 'SESSION_EXPIRED')).toBe(true);
    const next = await within(10_000, waiter, 'waiter');
    expect(next.fencingToken > held.fencingToken).toBe(true);
    // The stale holder's fenced write (the compare ifOwner() builds) cannot land.
    const stale = await client
      .if(held.key, 'Create', '==', held.fencingToken.toString())
      .then(client.put('expire/data').value('stale'))
      .commit();
    expect(stale.succeeded).toBe(false);
    expect(() => held.ifOwner()).toThrow(expect.objectContaining({ code: 'LOCK_NOT_HELD' }));
    expect((await next.ifOwner().then(client.put('expire/data').value('fresh')).commit()).succeeded).toBe(true);
    expect(await client.get('expire/data').string()).toBe('fresh');
    await held.release(); // harmless after loss
    await next.release();
  });

  it('a waiter whose session expires while queued rejects with SESSION_EXPIRED instead of acquiring', async () => {
    const client = etcd().client();
    await using a = await Session.create(client, { ttl: 10 });
    const b = await Session.create(etcd().client(), { ttl: 10 });
    const holder = await new Mutex(a, 'jepsen/lock').acquire();
    const waiter = new Mutex(b, 'jepsen/lock');
    const pending = waiter.lock();
    await waitForKey(client, waiter.key);
    await client.leaseClient.leaseRevoke({ ID: b.leaseId });
    await expect(within(10_000, pending)).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
    await holder.release();
  });

  it('two Mutex objects on one session and name never both hold', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const m1 = new Mutex(session, 'local/lock');
    const m2 = new Mutex(session, 'local/lock');
    await m1.lock();
    const second = m2.lock();
    expect(await stillPending(second, 200)).toBe(true);
    expect(await m2.tryAcquire({ signal: AbortSignal.timeout(100) }).catch((e: Error) => e.name)).toBe('TimeoutError');
    const token1 = m1.fencingToken!;
    await m1.unlock();
    await within(5000, second);
    expect(m2.fencingToken! > token1).toBe(true);
    await m2.unlock();
  });

  it('one Mutex object rejects a second lock() and unlock() when not held', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const m = new Mutex(session, 'misuse/lock');
    await expect(m.unlock()).rejects.toMatchObject({ code: 'LOCK_NOT_HELD' });
    expect(() => m.ifOwner()).toThrow(expect.objectContaining({ code: 'LOCK_NOT_HELD' }));
    await m.lock();
    await expect(m.lock()).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await m.unlock();
    await expect(m.unlock()).rejects.toMatchObject({ code: 'LOCK_NOT_HELD' });
  });

  it('withLock runs the function under the lock and always releases', async () => {
    const client = etcd().client();
    const result = await withLock(
      client,
      'with/lock',
      async ({ fencingToken, signal, key, ifOwner }) => {
        expect(signal.aborted).toBe(false);
        expect(fencingToken > 0n).toBe(true);
        expect(await keysUnder(client, 'with/lock/')).toEqual([key]);
        expect((await ifOwner().then(client.put('with/data').value('1')).commit()).succeeded).toBe(true);
        return 42;
      },
      { ttl: 5 },
    );
    expect(result).toBe(42);
    expect(await keysUnder(client, 'with/lock/')).toEqual([]);
    await expect(
      withLock(client, 'with/lock', () => {
        throw new Error('boom');
      }),
    ).rejects.toThrow('boom');
    expect(await keysUnder(client, 'with/lock/')).toEqual([]);
    // The lease of the session withLock created is revoked too.
    const leases = (await client.leaseClient.leaseLeases()).leases;
    for (const l of leases)
      expect(Number((await client.leaseClient.leaseTimeToLive({ ID: l.ID })).TTL)).toBeLessThanOrEqual(0);
  });

  it('rejects bad input with INVALID_ARGUMENT before writing anything', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const before = await keysUnder(client);
    const bad = rejectsInvalid;
    await rejectsBadNames((name) => new Mutex(session, name));
    await bad(() => new Mutex({} as never, 'x'));
    await bad(() => new Mutex(undefined as never, 'x'));
    const m = new Mutex(session, 'bad/lock');
    await bad(() => m.lock({ signal: 'soon' as never }));
    await bad(() => m.lock(null as never));
    await bad(() => m.acquire({ signal: {} as never }));
    await bad(() => withLock(client, '', async () => 1));
    await bad(() => withLock(client, 'x', 'not a function' as never));
    await bad(() => withLock(client, 'x', async () => 1, { ttl: 0 }));
    await bad(() => withLock({} as never, 'x', async () => 1));
    expect(await keysUnder(client)).toEqual(before);
  });
});
