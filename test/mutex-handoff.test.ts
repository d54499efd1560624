import type { Etcd3, Namespace } from 'etcd3';
import { describe, expect, it } from 'vitest';
import { Mutex, RWMutex, Session, subscribeTracing, TRACING_CHANNELS, type HeldKey } from '../src/index.js';
import { HandoffSlot, releaseAndHandOver } from '../src/core/handoff.js';
import { clusterOf } from '../src/core/cluster-id.js';
import { cmp, op, range, rangeAt, txn } from '../src/core/kv.js';
import { requestCounts, requestsBetween, type EtcdCluster } from '../src/testing/index.js';
import { keysUnder, useCluster, within } from './helpers.js';
import { waiting } from './lock-helpers.js';

/*
 * The in-process handoff (src/core/handoff.ts): a release whose Txn finds a
 * waiter of this process at the head of the line hands it the lock, and the
 * waiter skips its post-wake read. What must hold: it happens, mutual
 * exclusion and FIFO stay, and a stale hand-over (aborted waiter, key deleted
 * or re-created, lease revoked, another cluster) is never taken.
 */

/** Counts the acquires of lock `name` that waited, and those of them that a local release handed over. */
function countAcquires(name: string) {
  const counts = { waited: 0, handedOver: 0 };
  const stop = subscribeTracing(TRACING_CHANNELS.lock, {
    asyncEnd(context) {
      if (context.name !== name || !context.result?.waited) return;
      counts.waited++;
      if (context.result.handedOver) counts.handedOver++;
    },
  });
  return { counts, stop };
}

/**
 * `clients.length` workers in this process, each on its own session (and the
 * given client), take `lock` (Mutex or RWMutex writer) `rounds` times each, a
 * fenced write (a Txn, no Range) inside. Returns the most ever inside at
 * once, the acquire counts, and the Range requests etcd received meanwhile.
 */
async function contend(
  etcd: EtcdCluster,
  clients: Namespace[],
  take: (session: Session, w: number) => Promise<HeldKey>,
  name: string,
  rounds: number,
) {
  const url = etcd.members[0]!.clientUrl;
  const before = await requestCounts(url);
  const { counts, stop } = countAcquires(name);
  let inside = 0;
  let maxInside = 0;
  const tokens: bigint[] = [];
  try {
    await Promise.all(
      clients.map(async (client, w) => {
        await using session = await Session.create(client, { ttl: 20 });
        for (let i = 0; i < rounds; i++) {
          await using held = await take(session, w);
          inside++;
          maxInside = Math.max(maxInside, inside);
          tokens.push(held.fencingToken);
          // Lands only while we hold the lock.
          const res = await held
            .ifOwner()
            .then(client.put(`${name}-data-${w}`).value(String(i)))
            .commit();
          expect(res.succeeded).toBe(true);
          inside--;
        }
      }),
    );
  } finally {
    stop();
  }
  const ranges = requestsBetween(before, await requestCounts(url)).range;
  return { maxInside, tokens, counts, ranges };
}

/**
 * What the hand-over must show under contention in one process: most waits
 * end with a hand-over (none would without it), and a handed-over waiter
 * sends no read: Range requests are at most one per wait (the read that
 * confirms a new watch) plus one per wait not handed over.
 */
function expectHandedOver(r: Awaited<ReturnType<typeof contend>>, sections: number) {
  expect(r.maxInside).toBe(1);
  expect(r.counts.waited).toBeGreaterThan(sections / 2);
  expect(r.counts.handedOver).toBeGreaterThan(r.counts.waited / 2);
  expect(r.ranges).toBeLessThanOrEqual(r.counts.waited + (r.counts.waited - r.counts.handedOver));
}

describe('Mutex in-process handoff', () => {
  const etcd = useCluster();

  it('hands the lock to a waiter on another connection of this process, without its post-wake read', async () => {
    const clients = [etcd().client(), etcd().client(), etcd().client()];
    const r = await contend(etcd(), clients, (session) => new Mutex(session, 'ho/lock').acquire(), 'ho/lock', 15);
    expectHandedOver(r, 45);
    for (let i = 1; i < r.tokens.length; i++) expect(r.tokens[i]! > r.tokens[i - 1]!).toBe(true);
    expect(await keysUnder(etcd().client(), 'ho/lock/')).toEqual([]);
  });

  it('hands over between a namespaced client and a plain one on the same keys', async () => {
    const plain = etcd().client();
    const clients = [plain, etcd().client().namespace('ns/'), plain.namespace('ns/')];
    const names = ['ns/nslock', 'nslock', 'nslock'];
    const r = await contend(etcd(), clients, (session, w) => new Mutex(session, names[w]!).acquire(), 'nslock', 10);
    // Tracing names the lock as its caller did: the plain client's acquires are not counted here.
    expect(r.maxInside).toBe(1);
    expect(r.counts.handedOver).toBeGreaterThan(0);
    expect(await keysUnder(plain, 'ns/nslock/')).toEqual([]);
  });

  it('RWMutex hands the write lock on in process too', async () => {
    const clients = [etcd().client(), etcd().client(), etcd().client()];
    const r = await contend(etcd(), clients, (session) => new RWMutex(session, 'ho/rw').acquireWrite(), 'ho/rw', 12);
    // A writer's post-wake read is a Range, as a Mutex waiter's.
    expectHandedOver(r, 36);
    expect(await keysUnder(etcd().client(), 'ho/rw/')).toEqual([]);
  });

  it('does not hand the lock to an aborted waiter; the one behind it takes it', async () => {
    const client = etcd().client();
    await using a = await Session.create(client, { ttl: 10 });
    await using b = await Session.create(etcd().client(), { ttl: 10 });
    await using c = await Session.create(etcd().client(), { ttl: 10 });
    const holder = await new Mutex(a, 'ab/lock').acquire();
    const first = new Mutex(b, 'ab/lock');
    const second = new Mutex(c, 'ab/lock');
    const controller = new AbortController();
    let queued = waiting(first.key);
    const aborted = first.lock({ signal: controller.signal });
    await within(10_000, queued, 'first waiter queued');
    queued = waiting(second.key);
    const next = second.acquire();
    await within(10_000, queued, 'second waiter queued');
    // The abort and the release race: whichever Txn etcd applies first, only `second` may end up holding.
    const reason = new Error('gave up');
    controller.abort(reason);
    const released = holder.release();
    await expect(aborted).rejects.toBe(reason);
    await released;
    const held = await within(10_000, next, 'second waiter');
    expect(held.fencingToken > holder.fencingToken).toBe(true);
    expect(first.held).toBe(false);
    expect(await keysUnder(client, 'ab/lock/')).toEqual([second.key]);
    await held.release();
  });

  it.each(['deleted by an operator', 'lease revoked'] as const)(
    'a waiter whose key was %s while queued is not handed the lock: it rejects with SESSION_EXPIRED',
    async (how) => {
      const client = etcd().client();
      await using a = await Session.create(client, { ttl: 10 });
      const b = await Session.create(etcd().client(), { ttl: 10 });
      const name = `gone-${how.split(' ')[0]}/lock`;
      const holder = await new Mutex(a, name).acquire();
      const waiter = new Mutex(b, name);
      const queued = waiting(waiter.key);
      const pending = waiter.lock();
      await within(10_000, queued, 'waiter queued');
      if (how === 'lease revoked') await client.leaseClient.leaseRevoke({ ID: b.leaseId });
      else await client.delete().key(waiter.key);
      await holder.release();
      await expect(within(10_000, pending, 'waiter')).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
      expect(waiter.held).toBe(false);
      expect(await keysUnder(client, `${name}/`)).toEqual([]);
      await b.close();
    },
  );
});

/** A key on `lease` at the head of `line`, and a key outside the line whose release reads that head. */
async function lineWithHead(client: Etcd3, line: string, lease: string) {
  const head = Buffer.from(`${line}k`);
  const other = Buffer.from(`${line.slice(0, -1)}-other`);
  const res = await txn(client, [], [op.put(head, '', lease), op.put(other, ''), op.range(head)]);
  // A head put again keeps its create revision: read it back.
  return { head, other, headRev: rangeAt(res, 2).kvs[0]!.createRevision, otherRev: res.revision };
}

/**
 * A release of `other`@`rev` (outside the line) whose Txn reads the line's
 * head, which it does because `waiter` waits on `other`: the hand-over's trigger.
 */
function release(client: Etcd3, other: Buffer, rev: bigint, line: string, waiter: HandoffSlot) {
  waiter.waitOn(other, rev);
  return releaseAndHandOver(client, other, rev, [cmp.create(other, '==', rev)], op.delete(other), Buffer.from(line));
}

describe('hand-over registrations (core/handoff.ts)', () => {
  const etcd = useCluster();
  const other = useCluster();

  it('serve a waiter once, and never after it closed or its key was re-created', async () => {
    const client = etcd().client();
    const lease = (await client.leaseClient.leaseGrant({ TTL: 30, ID: '0' })).ID;
    const line = 'reg/line/';
    let { head, other, headRev, otherRev } = await lineWithHead(client, line, lease);
    // Another waiter of this process, never the head.
    const bystander = new HandoffSlot(client, Buffer.from(`${line}zz`), headRev + 1000n, lease);

    const slot = new HandoffSlot(client, head, headRev, lease);
    const res = await release(client, other, otherRev, line, slot);
    expect(res.succeeded).toBe(true);
    expect(slot.revision).toBe(res.revision);
    // Served once: a second release that reads the same head does not touch the slot again.
    ({ other, otherRev } = await lineWithHead(client, line, lease));
    expect((await release(client, other, otherRev, line, slot)).succeeded).toBe(true);
    expect(slot.revision).toBe(res.revision);
    slot.close();

    // Closed: the waiter woke by itself, aborted or gave up.
    ({ other, otherRev, headRev } = await lineWithHead(client, line, lease));
    const closed = new HandoffSlot(client, head, headRev, lease);
    closed.close();
    expect((await release(client, other, otherRev, line, bystander)).succeeded).toBe(true);
    expect(closed.revision).toBeUndefined();

    // Re-created: the registration names the key's earlier create revision.
    const stale = new HandoffSlot(client, head, headRev, lease);
    await txn(client, [], [op.delete(head)]);
    ({ other, otherRev } = await lineWithHead(client, line, lease));
    expect((await release(client, other, otherRev, line, stale)).succeeded).toBe(true);
    expect(stale.revision).toBeUndefined();
    stale.close();
    expect(bystander.revision).toBeUndefined();
    bystander.close();
  });

  it('never serve a waiter of another cluster, even with the same key, create revision and lease', async () => {
    const [a, b] = [etcd().client(), other().client()];
    const line = 'x/line/';
    // The same lease ID on both clusters (a client may choose it), and the keys at the same revision.
    const lease = '7777777';
    for (const c of [a, b]) await c.leaseClient.leaseGrant({ TTL: 30, ID: lease });
    const revisions = async () => Promise.all([a, b].map(async (c) => (await range(c, 'x/none')).revision));
    for (let i = 0; i < 1000; i++) {
      const [ra, rb] = await revisions();
      if (ra === rb) break;
      await txn(ra! < rb! ? a : b, [], [op.put('x/pad', '')]);
    }
    const [onA, onB] = [await lineWithHead(a, line, lease), await lineWithHead(b, line, lease)];
    expect(onA.headRev).toBe(onB.headRev);
    expect(clusterOf(a)).toBeDefined();
    expect(clusterOf(a)).not.toBe(clusterOf(b));

    const slot = new HandoffSlot(a, onA.head, onA.headRev, lease);
    expect((await release(b, onB.other, onB.otherRev, line, slot)).succeeded).toBe(true);
    expect(slot.revision).toBeUndefined();
    // The same release on the waiter's own cluster does hand over.
    const res = await release(a, onA.other, onA.otherRev, line, slot);
    expect(slot.revision).toBe(res.revision);
    slot.close();
  });
});
