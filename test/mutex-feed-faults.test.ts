import { describe, expect, it } from 'vitest';
import { type LockHandle, Mutex, Session } from '../src/index.js';
import { etcdctl } from './cli-helpers.js';
import {
  forkFixture,
  keysUnder,
  stillPending,
  useCluster,
  waitForKey,
  waitForKeyCount,
  within,
  useProxies,
} from './helpers.js';
import { waiting, openLineFeed } from './lock-helpers.js';

/*
 * Trying to break the Mutex line feed (core/line-feed.ts, Follower in core/wait.ts; docs/internals.md,
 * "The line's feed"): waiters that follow a live feed, against dead feed clients and members, revoked
 * leases, etcdctl lockers, nested lock names, a lost join reply, a line wiped at one revision, and
 * many waiters in one and two processes. What must hold: one holder at a time, no turn after our own
 * key went, no hang while our own client works, no key left behind.
 */

/** Starts `m.acquire()` and resolves, once the waiter is queued, with its (wrapped) promise. */
async function queue(m: Mutex): Promise<[Promise<LockHandle>]> {
  const queued = waiting(m.key);
  const turn = m.acquire();
  turn.catch(() => undefined);
  await within(10_000, queued, `${m.key} queued`);
  return [turn];
}

describe('Mutex line feed under faults', () => {
  const etcd = useCluster();
  const net = useProxies(etcd);

  it.each(['cut', 'dropReplies'] as const)(
    "a waiter on a healthy client takes the lock when the feed's client goes dead (%s)",
    async (fault) => {
      const admin = etcd().client();
      const { proxy, client: feedClient } = await net.plainViaProxy();
      await using a = await Session.create(etcd().client(), { ttl: 30 });
      await using b = await Session.create(etcd().client(), { ttl: 30 });
      const feed = await openLineFeed(feedClient, `dead-${fault}/lock`);
      try {
        const holder = await new Mutex(a, `dead-${fault}/lock`).acquire();
        const [turn] = await queue(new Mutex(b, `dead-${fault}/lock`));
        proxy[fault](); // the feed's stream breaks (cut) or goes silent (dropReplies) and never comes back
        await admin.delete().key(holder.key);
        const held = await within(15_000, turn, 'waiter, whose own client is healthy');
        expect(held.fencingToken > holder.fencingToken).toBe(true);
        await held.release();
        expect(await keysUnder(admin, `dead-${fault}/lock/`)).toEqual([]);
      } finally {
        feed.close();
      }
    },
  );

  it('revoked leases ahead are counted out; a follower whose lease is revoked rejects, no key left', async () => {
    const admin = etcd().client();
    const sessions = await Promise.all([0, 1, 2, 3].map(() => Session.create(etcd().client(), { ttl: 30 })));
    const [a, b, c, d] = sessions as [Session, Session, Session, Session];
    const feed = await openLineFeed(admin, 'rv/lock');
    try {
      const holder = await new Mutex(a, 'rv/lock').acquire();
      const [mb, mc, md] = [b, c, d].map((s) => new Mutex(s, 'rv/lock')) as [Mutex, Mutex, Mutex];
      const [bTurn] = await queue(mb);
      const [cTurn] = await queue(mc);
      const [dTurn] = await queue(md);
      // b (ahead of c and d) goes by lease: c and d count it out, and still wait for the holder.
      await admin.leaseClient.leaseRevoke({ ID: b.leaseId });
      await expect(within(10_000, bTurn, 'b')).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
      expect(await stillPending(cTurn, 200)).toBe(true);
      expect(await stillPending(dTurn, 0)).toBe(true);
      await admin.delete().key(holder.key);
      const cHeld = await within(10_000, cTurn, 'c');
      expect(await stillPending(dTurn, 200)).toBe(true);
      // d's own lease goes while it follows: it rejects, and c still holds.
      await admin.leaseClient.leaseRevoke({ ID: d.leaseId });
      await expect(within(10_000, dTurn, 'd')).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
      expect(await keysUnder(admin, 'rv/lock/')).toEqual([mc.key]);
      await cHeld.release();
      await holder.release();
      expect(await keysUnder(admin, 'rv/lock/')).toEqual([]);
    } finally {
      feed.close();
      await Promise.all(sessions.map((s) => s.close()));
    }
  });

  it('etcdctl lock holders and waiters count as keys ahead; a killed one counts once its lease expires', async () => {
    const admin = etcd().client();
    await using a = await Session.create(etcd().client(), { ttl: 30 });
    await using b = await Session.create(etcd().client(), { ttl: 30 });
    const feed = await openLineFeed(admin, 'ctl/lock');
    try {
      const holder = await new Mutex(a, 'ctl/lock').acquire();
      // etcdctl queues behind our holder (its key appears before it holds), then our waiter behind it.
      const ctl = etcdctl(etcd().endpoints, ['lock', '--ttl', '2', 'ctl/lock']);
      await waitForKeyCount(admin, 'ctl/lock/', 2);
      const waiter = new Mutex(b, 'ctl/lock');
      const [turn] = await queue(waiter);
      await admin.delete().key(holder.key);
      const ctlKey = await ctl.waitFor(/^ctl\/lock\//, 10_000);
      expect(await stillPending(turn, 200)).toBe(true);
      // No release: its lease must expire first, and only then may our waiter hold.
      ctl.kill('SIGKILL');
      await ctl.exited;
      expect(await stillPending(turn, 200)).toBe(true);
      const held = await within(15_000, turn, 'waiter after the etcdctl lease expired');
      expect(await keysUnder(admin, 'ctl/lock/')).toEqual([waiter.key]);
      expect(await admin.get(ctlKey).string()).toBeNull();
      await held.release();
      await holder.release();
      expect(await keysUnder(admin, 'ctl/lock/')).toEqual([]);
    } finally {
      feed.close();
    }
  });

  it('keys of Mutex "n/sub" count ahead of Mutex "n" waiters (as Go reads them), not the other way', async () => {
    const admin = etcd().client();
    const sessions = await Promise.all([0, 1, 2, 3].map(() => Session.create(etcd().client(), { ttl: 30 })));
    const [a, b, c, d] = sessions as [Session, Session, Session, Session];
    const feeds = [await openLineFeed(admin, 'nest'), await openLineFeed(admin, 'nest/sub')];
    try {
      const outer = await new Mutex(a, 'nest').acquire();
      const inner = await within(10_000, new Mutex(b, 'nest/sub').acquire(), 'nest/sub is another lock');
      const outerWaiter = new Mutex(c, 'nest');
      const [outerTurn] = await queue(outerWaiter);
      const innerWaiter = new Mutex(d, 'nest/sub');
      const [innerTurn] = await queue(innerWaiter);
      await outer.release();
      expect(await stillPending(outerTurn, 200)).toBe(true);
      expect(await stillPending(innerTurn, 0)).toBe(true);
      await admin.delete().key(inner.key);
      const [outerHeld, innerHeld] = await within(10_000, Promise.all([outerTurn, innerTurn]), 'both waiters');
      expect(await keysUnder(admin, 'nest/')).toEqual([outerWaiter.key, innerWaiter.key].sort());
      await Promise.all([outerHeld.release(), innerHeld.release(), inner.release()]);
      expect(await keysUnder(admin, 'nest/')).toEqual([]);
    } finally {
      for (const f of feeds) f.close();
      await Promise.all(sessions.map((s) => s.close()));
    }
  });

  it('a join whose reply is lost (re-sent by etcd3, adopted) waits for the holder and leaves no key', async () => {
    const admin = etcd().client();
    const { proxy, client: viaProxy } = await net.plainViaProxy();
    await using a = await Session.create(etcd().client(), { ttl: 30 });
    await using b = await Session.create(viaProxy, { ttl: 30 });
    const feed = await openLineFeed(admin, 'lost/lock');
    try {
      const holder = await new Mutex(a, 'lost/lock').acquire();
      const waiter = new Mutex(b, 'lost/lock');
      const caught = proxy.dropNextReply();
      const turn = waiter.acquire();
      turn.catch(() => undefined);
      expect(await within(10_000, caught, 'the join Txn')).toBe(true);
      await waitForKey(admin, waiter.key);
      proxy.restore(); // the connection resets; etcd3 re-sends the Txn, which finds our key
      expect(await stillPending(turn, 500)).toBe(true);
      expect(await keysUnder(admin, 'lost/lock/')).toEqual([holder.key, waiter.key].sort());
      await admin.delete().key(holder.key);
      const held = await within(10_000, turn, 'adopted waiter');
      expect(held.fencingToken > holder.fencingToken).toBe(true);
      await held.release();
      await holder.release();
      expect(await keysUnder(admin, 'lost/lock/')).toEqual([]);
    } finally {
      feed.close();
    }
  });

  it('lock/unlock and tryLock on the Mutex object while the feed is live', async () => {
    const admin = etcd().client();
    const sessions = await Promise.all([0, 1, 2, 3].map(() => Session.create(etcd().client(), { ttl: 30 })));
    const feed = await openLineFeed(admin, 'obj/lock');
    try {
      const [ma, mb, mc, md] = sessions.map((s) => new Mutex(s, 'obj/lock')) as [Mutex, Mutex, Mutex, Mutex];
      await ma.lock();
      const first = ma.fencingToken!;
      expect(await mc.tryLock()).toBe(false);
      const lockings = [];
      for (const m of [mb, md]) {
        const queued = waiting(m.key);
        lockings.push(m.lock());
        await within(10_000, queued, `${m.key} queued`);
      }
      const [bLocking, dLocking] = lockings as [Promise<void>, Promise<void>];
      expect(await mc.tryLock()).toBe(false);
      expect(await keysUnder(admin, 'obj/lock/')).toEqual([ma.key, mb.key, md.key].sort());
      expect(await stillPending(bLocking, 200)).toBe(true);
      await ma.unlock();
      await within(10_000, bLocking, 'b');
      expect(mb.held).toBe(true);
      expect(await stillPending(dLocking, 200)).toBe(true);
      expect(await mc.tryLock()).toBe(false);
      await mb.unlock();
      await within(10_000, dLocking, 'd');
      expect(md.fencingToken! > first).toBe(true);
      expect(await keysUnder(admin, 'obj/lock/')).toEqual([md.key]);
      await md.unlock();
      expect(await mc.tryLock()).toBe(true);
      await mc.unlock();
      expect(await keysUnder(admin, 'obj/lock/')).toEqual([]);
    } finally {
      feed.close();
      await Promise.all(sessions.map((s) => s.close()));
    }
  });

  it('an operator deleting the whole line in one revision leaves no phantom holder', async () => {
    const admin = etcd().client();
    const sessions = await Promise.all([0, 1, 2].map(() => Session.create(etcd().client(), { ttl: 30 })));
    const [a, b, c] = sessions as [Session, Session, Session];
    const feed = await openLineFeed(admin, 'wipe/lock');
    try {
      const holder = await new Mutex(a, 'wipe/lock').acquire();
      const [mb, mc] = [b, c].map((s) => new Mutex(s, 'wipe/lock')) as [Mutex, Mutex];
      const [bTurn] = await queue(mb);
      const [cTurn] = await queue(mc);
      // The last key ahead of each follower goes at the revision its own key goes: not a turn.
      await admin.delete().prefix('wipe/lock/');
      await expect(within(10_000, bTurn, 'b')).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
      await expect(within(10_000, cTurn, 'c')).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
      expect(await keysUnder(admin, 'wipe/lock/')).toEqual([]);
      await holder.release();
      const again = await within(10_000, mb.acquire(), 'the lock, free again');
      await again.release();
      expect(await keysUnder(admin, 'wipe/lock/')).toEqual([]);
    } finally {
      feed.close();
      await Promise.all(sessions.map((s) => s.close()));
    }
  });

  it('many waiters on three clients with random aborts: one holder at a time, fenced, no key left', async () => {
    const admin = etcd().client();
    const cs = [etcd().client(), etcd().client(), etcd().client()];
    const sessions = await Promise.all(
      Array.from({ length: 24 }, (_, i) => Session.create(cs[i % cs.length]!, { ttl: 30 })),
    );
    const feed = await openLineFeed(admin, 'many/lock');
    let seed = 0x5eed;
    const random = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed / 0x7fffffff;
    };
    await admin.put('many/counter').value('0');
    let inside = 0;
    let overlaps = 0;
    let sections = 0;
    let aborted = 0;
    try {
      const rounds = sessions.map(async (session) => {
        const m = new Mutex(session, 'many/lock');
        for (let round = 0; round < 3; round++) {
          const controller = new AbortController();
          const giveUp =
            random() < 0.3 ? setTimeout(() => controller.abort(new Error('gave up')), random() * 30) : undefined;
          let held: LockHandle;
          try {
            held = await m.acquire({ signal: controller.signal });
          } catch (err) {
            if ((err as Error).message !== 'gave up') throw err;
            aborted++;
            continue;
          } finally {
            clearTimeout(giveUp);
          }
          if (inside++) overlaps++;
          const n = Number(await session.client.get('many/counter').string());
          const put = await held
            .ifOwner()
            .and('many/counter', 'Value', '==', String(n))
            .then(session.client.put('many/counter').value(String(n + 1)))
            .commit();
          expect(put.succeeded).toBe(true);
          sections++;
          inside--;
          await held.release();
        }
      });
      await within(45_000, Promise.all(rounds), 'every round');
      expect(overlaps).toBe(0);
      expect(Number(await admin.get('many/counter').string())).toBe(sections);
      expect(sections + aborted).toBe(sessions.length * 3);
      expect(await keysUnder(admin, 'many/lock/')).toEqual([]);
    } finally {
      feed.close();
      await Promise.all(sessions.map((s) => s.close()));
    }
  });

  it('two processes, each with its waiters on its own feed: one holder at a time across both', async () => {
    const admin = etcd().client();
    const other = forkFixture('fixtures/mutex-feed-locker.ts', [etcd().endpoints.join(','), 'two/lock', '6', '10']);
    const sessions = await Promise.all(Array.from({ length: 6 }, () => Session.create(etcd().client(), { ttl: 30 })));
    await other.next((m) => m.type === 'ready');
    other.child.send({ type: 'go' });
    let violations = 0;
    let sections = 0;
    try {
      await within(
        45_000,
        Promise.all(
          sessions.map(async (session) => {
            const m = new Mutex(session, 'two/lock');
            for (let i = 0; i < 10; i++) {
              const held = await m.acquire();
              try {
                const put = session.client.put('two/lock-inside').value('parent');
                const res = await held.ifOwner().and('two/lock-inside', 'Create', '==', 0).then(put).commit();
                if (res.succeeded) sections++;
                else violations++;
                await held.ifOwner().then(session.client.delete().key('two/lock-inside')).commit();
              } finally {
                await held.release();
              }
            }
          }),
        ),
        "this process's rounds",
      );
      const done = other.messages[await other.next((m) => m.type === 'done', 0, 45_000)]!;
      expect({ violations, otherViolations: done.violations }).toEqual({ violations: 0, otherViolations: 0 });
      expect([sections, done.sections]).toEqual([60, 60]);
      expect(await other.exited).toBe(0);
      expect(await keysUnder(admin, 'two/lock')).toEqual([]);
    } finally {
      if (other.child.exitCode === null) other.child.kill('SIGKILL');
      await Promise.all(sessions.map((s) => s.close()));
    }
  });
});

describe('Mutex line feed on a member that stops', () => {
  const etcd = useCluster({ members: 3 });

  it("waiters on other members take the lock while the feed's member is down, past a compaction", async () => {
    const [m0, m1, m2] = etcd().members;
    const admin = etcd().client({ hosts: [m1!.endpoint, m2!.endpoint] });
    const feedClient = etcd().client({ hosts: [m0!.endpoint] });
    const sessions = await Promise.all(
      [0, 1, 2].map(() => Session.create(etcd().client({ hosts: [m1!.endpoint, m2!.endpoint] }), { ttl: 30 })),
    );
    const [a, b, c] = sessions as [Session, Session, Session];
    const feed = await openLineFeed(feedClient, 'm0/lock');
    try {
      const holder = await new Mutex(a, 'm0/lock').acquire();
      const [mb, mc] = [b, c].map((s) => new Mutex(s, 'm0/lock')) as [Mutex, Mutex];
      const [bTurn] = await queue(mb);
      const [cTurn] = await queue(mc);
      await m0!.stop();
      await admin.delete().key(holder.key);
      const bHeld = await within(15_000, bTurn, "b, while the feed's member is down");
      expect(await stillPending(cTurn, 200)).toBe(true);
      const rev = (await admin.put('m0/other').value('x').exec()).header.revision;
      await admin.kv.compact({ revision: rev, physical: true });
      await bHeld.release();
      const cHeld = await within(15_000, cTurn, 'c');
      expect(cHeld.fencingToken > bHeld.fencingToken).toBe(true);
      await m0!.restart();
      await etcd().waitHealthy();
      await cHeld.release();
      await holder.release();
      await admin.delete().key('m0/other');
      expect(await keysUnder(admin, 'm0/lock/')).toEqual([]);
    } finally {
      feed.close();
      await Promise.all(sessions.map((s) => s.close()));
    }
  });
});
