import { describe, expect, it } from 'vitest';
import { type HeldKey, Mutex, RWMutex, Session } from '../src/index.js';
import { requestCounts, requestsBetween } from '../src/testing/index.js';
import { keysUnder, stillPending, useCluster, within, useProxies } from './helpers.js';
import { nextWaiter, openLineFeed, waiting } from './lock-helpers.js';

/*
 * Mutex waiters and RWMutex writers follow the line's feed (core/line-feed.ts, docs/internals.md
 * "The line's feed") once it is live: one watch per process on the line's
 * deletes, from which a waiter counts the keys ahead of it. What must hold:
 * a waiter takes the lock when the last key ahead goes (even if it hears
 * nothing on its own connection), never before, and falls back to its own
 * watch and reads when the feed ends.
 */

describe('Mutex and RWMutex writer waiters following the line feed', () => {
  const etcd = useCluster();
  const net = useProxies(etcd);

  // First in the file: no other test's feed is open (or lingering) on this cluster yet.
  it('an uncontended lock opens no feed: no watch message reaches etcd', async () => {
    await using session = await Session.create(etcd().client(), { ttl: 30 });
    const url = etcd().members[0]!.clientUrl;
    const before = await requestCounts(url);
    for (let i = 0; i < 5; i++) {
      await (await new Mutex(session, 'fu/lock').acquire()).release();
      await (await new RWMutex(session, 'fu/rw').acquireWrite()).release();
    }
    const sent = requestsBetween(before, await requestCounts(url));
    expect(sent.txn).toBeGreaterThanOrEqual(20);
    expect(sent.watch).toBe(0);
  });

  /** How each kind of lock takes its holder (the first key) and its two waiters. */
  const kinds = {
    'a Mutex waiter': {
      name: 'fd/lock',
      hold: (s: Session): Promise<HeldKey> => new Mutex(s, 'fd/lock').acquire(),
      wait: (s: Session): Promise<HeldKey> => new Mutex(s, 'fd/lock').acquire(),
    },
    'an RWMutex writer behind a reader and a writer': {
      name: 'fr/rw',
      hold: (s: Session): Promise<HeldKey> => new RWMutex(s, 'fr/rw').acquireRead(),
      wait: (s: Session): Promise<HeldKey> => new RWMutex(s, 'fr/rw').acquireWrite(),
    },
  };

  it.each(Object.keys(kinds) as (keyof typeof kinds)[])(
    '%s takes the lock when the keys ahead go, from the feed alone, never before',
    async (kind) => {
      const { name, hold, wait } = kinds[kind];
      const admin = etcd().client();
      const { proxy, client: muted } = await net.plainViaProxy();
      await using a = await Session.create(etcd().client(), { ttl: 30 });
      await using b = await Session.create(etcd().client(), { ttl: 30 });
      await using c = await Session.create(muted, { ttl: 30 });
      const feed = await openLineFeed(etcd().client(), name);
      try {
        const holder = await hold(a);
        let queued = nextWaiter(name);
        const secondTurn = wait(b);
        await within(10_000, queued, 'second waiter queued');
        queued = nextWaiter(name);
        const thirdTurn = wait(c);
        await within(10_000, queued, 'third waiter queued');
        // From now on the third waiter's own connection hears nothing: no watch event, no read's reply.
        proxy.dropReplies();
        // Deleted as another process's release would: no in-process hand-over.
        await admin.delete().key(holder.key);
        const secondHeld = await within(10_000, secondTurn, 'second waiter');
        expect(await stillPending(thirdTurn, 200)).toBe(true);
        await admin.delete().key(secondHeld.key);
        const thirdHeld = await within(10_000, thirdTurn, 'third waiter, from the feed');
        expect(thirdHeld.fencingToken > secondHeld.fencingToken).toBe(true);
        proxy.restore();
        await Promise.all([holder.release(), secondHeld.release(), thirdHeld.release()]);
        expect(await keysUnder(admin, `${name}/`)).toEqual([]);
      } finally {
        feed.close();
      }
    },
  );

  it('after a waiter ahead gives up, the one behind it waits for the holder, then takes the lock', async () => {
    const admin = etcd().client();
    await using a = await Session.create(etcd().client(), { ttl: 30 });
    await using b = await Session.create(etcd().client(), { ttl: 30 });
    await using c = await Session.create(etcd().client(), { ttl: 30 });
    await using d = await Session.create(etcd().client(), { ttl: 30 });
    const feed = await openLineFeed(etcd().client(), 'fg/lock');
    try {
      const holder = await new Mutex(a, 'fg/lock').acquire();
      const [second, quitter, last] = [b, c, d].map((s) => new Mutex(s, 'fg/lock'));
      const turns = [];
      const controller = new AbortController();
      for (const [m, signal] of [
        [second!, undefined],
        [quitter!, controller.signal],
        [last!, undefined],
      ] as const) {
        const queued = waiting(m.key);
        turns.push(m.acquire({ signal }));
        await within(10_000, queued, `${m.key} queued`);
      }
      const [secondTurn, quitterTurn, lastTurn] = turns;
      const reason = new Error('gave up');
      controller.abort(reason);
      await expect(quitterTurn).rejects.toBe(reason);
      expect(await stillPending(lastTurn!, 200)).toBe(true);
      await admin.delete().key(holder.key);
      const secondHeld = await within(10_000, secondTurn!, 'second waiter');
      expect(await stillPending(lastTurn!, 200)).toBe(true);
      await admin.delete().key(secondHeld.key);
      const lastHeld = await within(10_000, lastTurn!, 'last waiter');
      expect(lastHeld.fencingToken > secondHeld.fencingToken).toBe(true);
      expect(await keysUnder(admin, 'fg/lock/')).toEqual([last!.key]);
      await Promise.all([holder.release(), secondHeld.release(), lastHeld.release()]);
    } finally {
      feed.close();
    }
  });

  it('a waiter whose feed ends (its client closed) waits on its own and takes the lock', async () => {
    const admin = etcd().client();
    const feedClient = net.plain(etcd().endpoints);
    await using a = await Session.create(etcd().client(), { ttl: 30 });
    await using b = await Session.create(etcd().client(), { ttl: 30 });
    const feed = await openLineFeed(feedClient, 'fe/lock');
    const holder = await new Mutex(a, 'fe/lock').acquire();
    const waiter = new Mutex(b, 'fe/lock');
    const queued = waiting(waiter.key);
    const turn = waiter.acquire();
    await within(10_000, queued, 'waiter queued');
    feedClient.close();
    feed.close();
    expect(await stillPending(turn, 200)).toBe(true);
    await admin.delete().key(holder.key);
    const held = await within(10_000, turn, 'waiter, on its own watch');
    expect(held.fencingToken > holder.fencingToken).toBe(true);
    await Promise.all([holder.release(), held.release()]);
    expect(await keysUnder(admin, 'fe/lock/')).toEqual([]);
  });
});
