import { describe, expect, it } from 'vitest';
import { isRecipeError, MAX_PERMITS, Semaphore, Session, type PermitHandle } from '../src/index.js';
import { keysUnder, rejectsInvalid, stillPending, useCluster, waitForKeyCount, within } from './helpers.js';

/** Records the order in which pending acquires resolve. */
function tracker() {
  const order: string[] = [];
  return {
    order,
    track: (name: string, p: Promise<PermitHandle>) =>
      p.then((h) => {
        order.push(name);
        return h;
      }),
  };
}

describe('Semaphore', () => {
  const etcd = useCluster();

  it('writes <name>/queue/<19 digits> on the lease and stores the count once in <name>/permits', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const sem = new Semaphore(session, 'layout/sem', 3);
    expect(sem.permits).toBe(3);
    expect(sem.permitsKey).toBe('layout/sem/permits');
    expect(sem.queuePrefix).toBe('layout/sem/queue/');
    const held = await sem.acquire();
    expect(held.key).toMatch(/^layout\/sem\/queue\/\d{19}$/);
    const kvs = (await client.getAll().prefix('layout/sem/').exec()).kvs;
    const byKey = new Map(kvs.map((kv) => [kv.key.toString(), kv]));
    expect([...byKey.keys()].sort()).toEqual([held.key, 'layout/sem/permits'].sort());
    expect(byKey.get('layout/sem/permits')!.value.toString()).toBe('3');
    expect(byKey.get('layout/sem/permits')!.lease).toBe('0');
    expect(byKey.get(held.key)!.value.length).toBe(0);
    expect(byKey.get(held.key)!.lease).toBe(session.leaseId);
    expect(held.fencingToken).toBe(BigInt(byKey.get(held.key)!.create_revision));
    expect(await sem.usage()).toEqual({ holders: 1, waiters: 0 });
    await held.release();
    expect(await keysUnder(client, 'layout/')).toEqual(['layout/sem/permits']);
  });

  it('never has more than `permits` holders under contention, and nothing is lost', async () => {
    const admin = etcd().client();
    const permits = 3;
    let inside = 0;
    let maxInside = 0;
    let sections = 0;
    const workers = 8;
    const rounds = 6;
    const tokens = new Set<bigint>();
    await within(
      60_000,
      Promise.all(
        Array.from({ length: workers }, async () => {
          const client = etcd().client();
          await using session = await Session.create(client, { ttl: 10 });
          const sem = new Semaphore(session, 'cap/sem', permits);
          for (let i = 0; i < rounds; i++) {
            await using held = await sem.acquire();
            inside++;
            maxInside = Math.max(maxInside, inside);
            tokens.add(held.fencingToken);
            await client.get('cap/work').string(); // a little work while holding
            await new Promise((r) => setTimeout(r, 3));
            sections++;
            inside--;
          }
        }),
      ),
      'contended run',
    );
    expect(maxInside).toBeLessThanOrEqual(permits);
    expect(sections).toBe(workers * rounds);
    expect(tokens.size).toBe(workers * rounds);
    expect(await keysUnder(admin, 'cap/sem/queue/')).toEqual([]);
  });

  it('grants `permits` holds at once, even from one session, and makes the next wait', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const sem = new Semaphore(session, 'one/sem', 3);
    const held = await within(5000, Promise.all([sem.acquire(), sem.acquire(), sem.acquire()]), 'three permits');
    expect(new Set(held.map((h) => h.key)).size).toBe(3);
    expect(await sem.tryAcquire()).toBeUndefined();
    const fourth = sem.acquire();
    expect(await stillPending(fourth, 200)).toBe(true);
    expect(await sem.usage()).toEqual({ holders: 3, waiters: 1 });
    await held[1]!.release();
    const h4 = await within(5000, fourth);
    await Promise.all([h4, held[0]!, held[2]!].map((h) => h.release()));
    expect(await keysUnder(client, 'one/sem/queue/')).toEqual([]);
  });

  it('serves waiters in FIFO order', async () => {
    const client = etcd().client();
    await using hs = await Session.create(client, { ttl: 10 });
    const held: PermitHandle[] = [
      await new Semaphore(hs, 'fifo/sem', 2).acquire(),
      await new Semaphore(hs, 'fifo/sem', 2).acquire(),
    ];
    const { order, track } = tracker();
    const sessions: Session[] = [];
    const waiters: Promise<PermitHandle>[] = [];
    for (let i = 0; i < 6; i++) {
      const s = await Session.create(etcd().client(), { ttl: 10 });
      sessions.push(s);
      waiters.push(track(`W${i}`, new Semaphore(s, 'fifo/sem', 2).acquire()));
      await waitForKeyCount(client, 'fifo/sem/queue/', i + 3);
    }
    // Each release lets exactly the oldest waiter in; the one behind it stays out.
    for (let i = 0; i < 6; i++) {
      await held.shift()!.release();
      held.push(await within(5000, waiters[i]!, `W${i}`));
      if (i < 5) expect(await stillPending(waiters[i + 1]!, 50)).toBe(true);
    }
    expect(order).toEqual(['W0', 'W1', 'W2', 'W3', 'W4', 'W5']);
    await Promise.all(held.map((h) => h.release()));
    await Promise.all(sessions.map((s) => s.close()));
  });

  it('holders released in any order each let exactly the next waiter in (no lost wake-up)', async () => {
    const client = etcd().client();
    const permits = 3;
    const sessions = await Promise.all(Array.from({ length: 9 }, () => Session.create(etcd().client(), { ttl: 10 })));
    const sem = sessions.map((s) => new Semaphore(s, 'any/sem', permits));
    const holders: PermitHandle[] = [];
    for (let i = 0; i < permits; i++) holders.push(await sem[i]!.acquire());
    const { order, track } = tracker();
    const waiters: Promise<PermitHandle>[] = [];
    for (let i = 0; i < 6; i++) {
      waiters.push(track(`W${i}`, sem[permits + i]!.acquire()));
      await waitForKeyCount(client, 'any/sem/queue/', permits + i + 1);
    }
    // The middle holder first: the first waiter (W0) must wake although its predecessor is the last holder.
    await holders[1]!.release();
    const w0 = await within(5000, waiters[0]!, 'W0');
    expect(await stillPending(Promise.race(waiters.slice(1)), 150)).toBe(true);
    // W1 was deep in line when W0 moved up; W0's touch made it the first waiter. Now two holders leave at once.
    await Promise.all([holders[0]!.release(), holders[2]!.release()]);
    const [w1, w2] = await within(5000, Promise.all([waiters[1]!, waiters[2]!]), 'W1, W2');
    expect(await stillPending(Promise.race(waiters.slice(3)), 150)).toBe(true);
    // The newest holder leaves: the first waiter (W3) takes its permit.
    await w2.release();
    const w3 = await within(5000, waiters[3]!, 'W3');
    await w0.release();
    await w1.release();
    const [w4, w5] = await within(5000, Promise.all([waiters[4]!, waiters[5]!]), 'W4, W5');
    expect(order).toEqual(['W0', ...order.slice(1, 3).sort(), 'W3', ...order.slice(4).sort()]);
    expect(order.slice(1, 3).sort()).toEqual(['W1', 'W2']);
    expect(await sem[0]!.usage()).toEqual({ holders: 3, waiters: 0 });
    await Promise.all([w3, w4, w5].map((h) => h.release()));
    await Promise.all(sessions.map((s) => s.close()));
  });

  it('aborting a waiter (first in line or deeper) rejects with its reason, leaves no key, keeps permits', async () => {
    const client = etcd().client();
    await using hs = await Session.create(client, { ttl: 10 });
    const holder = await new Semaphore(hs, 'abort/sem', 1).acquire();
    const sessions = await Promise.all(Array.from({ length: 3 }, () => Session.create(etcd().client(), { ttl: 10 })));
    const controllers = sessions.map(() => new AbortController());
    const outcomes: Promise<unknown>[] = [];
    for (let i = 0; i < 3; i++) {
      outcomes.push(
        new Semaphore(sessions[i]!, 'abort/sem', 1)
          .acquire({ signal: controllers[i]!.signal })
          .catch((e: unknown) => e),
      );
      await waitForKeyCount(client, 'abort/sem/queue/', i + 2);
    }
    const reason = new Error('caller gave up');
    // Abort the first waiter: the one behind it (deep until now) must become first and still get the permit.
    controllers[0]!.abort(reason);
    expect(await within(5000, outcomes[0]!)).toBe(reason);
    const keys = await keysUnder(client, 'abort/sem/queue/');
    expect(keys).toHaveLength(3);
    expect(keys).toContain(holder.key);
    // Abort the last one (deep in line).
    controllers[2]!.abort(reason);
    expect(await within(5000, outcomes[2]!)).toBe(reason);
    expect(await keysUnder(client, 'abort/sem/queue/')).toHaveLength(2);
    await holder.release();
    const next = (await within(5000, outcomes[1]!)) as PermitHandle;
    expect(next.fencingToken > holder.fencingToken).toBe(true);
    // A timeout signal works as an acquire timeout; an already-aborted one writes nothing.
    const err = await new Semaphore(sessions[0]!, 'abort/sem', 1)
      .acquire({ signal: AbortSignal.timeout(150) })
      .catch((e: unknown) => e);
    expect((err as Error).name).toBe('TimeoutError');
    await expect(
      new Semaphore(sessions[0]!, 'abort/sem', 1).acquire({ signal: AbortSignal.abort(reason) }),
    ).rejects.toBe(reason);
    expect(await keysUnder(client, 'abort/sem/queue/')).toEqual([next.key]);
    await next.release();
    await Promise.all(sessions.map((s) => s.close()));
  });

  it('rejects a different permit count with INVALID_ARGUMENT before queueing', async () => {
    const client = etcd().client();
    await using a = await Session.create(client, { ttl: 10 });
    await using b = await Session.create(etcd().client(), { ttl: 10 });
    const held = await new Semaphore(a, 'count/sem', 2).acquire();
    const before = await keysUnder(client, 'count/');
    const err = await new Semaphore(b, 'count/sem', 3).acquire().catch((e: unknown) => e);
    expect(isRecipeError(err, 'INVALID_ARGUMENT')).toBe(true);
    expect((err as { argument: string }).argument).toBe('permits');
    expect((err as Error).message).toMatch(/"2".*count\/sem\/permits.*3/);
    await expect(new Semaphore(b, 'count/sem', 1).tryAcquire()).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    expect(await keysUnder(client, 'count/')).toEqual(before);
    // The matching count still works.
    await (await new Semaphore(b, 'count/sem', 2).acquire()).release();
    await held.release();
  });

  it('on first use by several processes at once, one count wins and the others are rejected cleanly', async () => {
    const client = etcd().client();
    const counts = [3, 5, 3, 5, 3, 5]; // at most 3 acquirers per count, so all of the winners hold
    const sessions = await Promise.all(counts.map(() => Session.create(etcd().client(), { ttl: 10 })));
    const results = await Promise.all(
      sessions.map((s, i) => new Semaphore(s, 'race/sem', counts[i]!).acquire().catch((e: unknown) => e)),
    );
    const stored = Number(await client.get('race/sem/permits').string());
    expect([3, 5]).toContain(stored);
    const handles: PermitHandle[] = [];
    results.forEach((r, i) => {
      if (counts[i] === stored) {
        expect(isRecipeError(r)).toBe(false);
        handles.push(r as PermitHandle);
      } else {
        expect(r).toMatchObject({ code: 'INVALID_ARGUMENT' });
      }
    });
    expect(handles).toHaveLength(3);
    expect((await keysUnder(client, 'race/sem/queue/')).sort()).toEqual(handles.map((h) => h.key).sort());
    await Promise.all(handles.map((h) => h.release()));
    await Promise.all(sessions.map((s) => s.close()));
  });

  it('a waiter whose session expires gets SESSION_EXPIRED; a lost holder is told and frees its permit', async () => {
    const client = etcd().client();
    // Short TTLs: a session notices a revoked lease at its next keepalive (every TTL/3).
    const a = await Session.create(client, { ttl: 3 });
    const b = await Session.create(etcd().client(), { ttl: 3 });
    await using c = await Session.create(etcd().client(), { ttl: 10 });
    const holder = await new Semaphore(a, 'lost/sem', 1).acquire();
    const doomed = new Semaphore(b, 'lost/sem', 1).acquire().catch((e: unknown) => e);
    await waitForKeyCount(client, 'lost/sem/queue/', 2);
    const next = new Semaphore(c, 'lost/sem', 1).acquire();
    await waitForKeyCount(client, 'lost/sem/queue/', 3);
    await client.leaseClient.leaseRevoke({ ID: b.leaseId });
    expect(await within(10_000, doomed)).toMatchObject({ code: 'SESSION_EXPIRED' });
    expect(await stillPending(next, 100)).toBe(true);
    await client.leaseClient.leaseRevoke({ ID: a.leaseId });
    const reason = await within(
      10_000,
      new Promise<unknown>((resolve) => {
        holder.signal.addEventListener('abort', () => resolve(holder.signal.reason), { once: true });
      }),
      'holder signal',
    );
    expect(isRecipeError(reason, 'SESSION_EXPIRED')).toBe(true);
    const h = await within(10_000, next, 'next holder');
    expect(h.fencingToken > holder.fencingToken).toBe(true);
    const stale = await client
      .if(holder.key, 'Create', '==', holder.fencingToken.toString())
      .then(client.put('lost/data').value('x'))
      .commit();
    expect(stale.succeeded).toBe(false);
    await holder.release();
    await h.release();
  });

  it('an acquire on a lease etcd already dropped rejects with SESSION_EXPIRED and writes nothing', async () => {
    const client = etcd().client();
    const session = await Session.create(etcd().client(), { ttl: 30 });
    await client.leaseClient.leaseRevoke({ ID: session.leaseId }); // behind the session's back
    await expect(new Semaphore(session, 'gone/sem', 2).acquire()).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
    expect(await keysUnder(client, 'gone/')).toEqual([]); // not even the count key
    await session.close();
  });

  it('tryAcquire takes a free permit and returns undefined without a key when none is free', async () => {
    const client = etcd().client();
    await using a = await Session.create(client, { ttl: 10 });
    await using b = await Session.create(etcd().client(), { ttl: 10 });
    const h1 = await new Semaphore(a, 'try/sem', 2).tryAcquire();
    const h2 = await new Semaphore(b, 'try/sem', 2).tryAcquire();
    expect(h1 && h2).toBeTruthy();
    expect(await new Semaphore(b, 'try/sem', 2).tryAcquire()).toBeUndefined();
    expect((await keysUnder(client, 'try/sem/queue/')).sort()).toEqual([h1!.key, h2!.key].sort());
    await h1!.release();
    const h3 = await new Semaphore(b, 'try/sem', 2).tryAcquire();
    expect(h3).toBeDefined();
    await h2!.release();
    await h3!.release();
  });

  it('rejects bad input with INVALID_ARGUMENT before writing anything', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const before = await keysUnder(client);
    const bad = rejectsInvalid;
    await bad(() => new Semaphore(session, 'bad/sem', 0), 'permits');
    await bad(() => new Semaphore(session, 'bad/sem', -1), 'permits');
    await bad(() => new Semaphore(session, 'bad/sem', 1.5), 'permits');
    await bad(() => new Semaphore(session, 'bad/sem', Number.NaN), 'permits');
    await bad(() => new Semaphore(session, 'bad/sem', Infinity), 'permits');
    await bad(() => new Semaphore(session, 'bad/sem', '3' as never), 'permits');
    await bad(() => new Semaphore(session, 'bad/sem', undefined as never), 'permits');
    await bad(() => new Semaphore(session, 'bad/sem', MAX_PERMITS + 1), 'permits');
    await bad(() => new Semaphore(session, '', 1), 'name');
    await bad(() => new Semaphore(session, Buffer.alloc(0), 1), 'name');
    await bad(() => new Semaphore({} as never, 'bad/sem', 1), 'session');
    const sem = new Semaphore(session, 'bad/sem', 2);
    await bad(() => sem.acquire({ signal: 'soon' as never }), 'options.signal');
    await bad(() => sem.acquire(null as never), 'options');
    await bad(() => sem.tryAcquire({ signal: {} as never }), 'options.signal');
    expect(await keysUnder(client)).toEqual(before);
  });
});
