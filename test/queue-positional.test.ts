import { describe, expect, it } from 'vitest';
import { PriorityQueue, Queue, Session, WorkQueue } from '../src/index.js';
import { keysUnder, stillPending, useCluster, within } from './helpers.js';
import { waitForCount } from './queue-helpers.js';

/*
 * Positional claims (core/queue-line-state.ts claimableInLine): a waiter with
 * k waiters ahead takes the k-th candidate. These tests put waiters where a
 * read cannot see their candidate, or where their count of waiters ahead is
 * stale, and check that no item is taken out of order or left while a
 * waiter could take it.
 */

describe('positional claims in the consumer line', () => {
  const etcd = useCluster();

  it('a waiter with k waiters ahead takes the k-th item: those behind a stalled head are served', async () => {
    const name = 'pos-kth';
    const admin = etcd().client();
    const producer = new Queue(admin, name);
    // The head of the line is a consumer that stalled (a paused process keeps its lease): its waiter key stays.
    const stalled = await Session.create(admin, { ttl: 30 });
    await admin.put(`__${name}/waiters/stalled`).value('').lease(stalled.leaseId);
    const consumers = [new Queue(admin, name), new Queue(admin, name), new Queue(admin, name)];
    const taking: Promise<string>[] = [];
    for (const [i, q] of consumers.entries()) {
      taking.push(q.dequeue());
      await waitForCount(admin, `__${name}/waiters/`, i + 2); // in line in this order, behind the stalled head
    }
    for (let i = 0; i < 4; i++) await producer.enqueue(`v${i}`);
    // Each takes the item at its place; the oldest stays the stalled head's. Surplus-only waiters would all wait.
    expect(await within(10_000, Promise.all(taking), 'the waiters behind the head')).toEqual(['v1', 'v2', 'v3']);
    expect(await producer.size()).toBe(1);
    await stalled.close();
    expect(await within(10_000, producer.dequeue(), 'the head item')).toBe('v0');
    await Promise.all([producer, ...consumers].map((q) => q.close()));
    expect(await keysUnder(admin, `__${name}/`)).toEqual([]);
  });

  it('a waiter past the read page never takes a lower priority put after it while higher ones wait', async () => {
    const name = 'pos-page';
    const admin = etcd().client();
    const pq = new PriorityQueue(admin, name);
    // 16 consumers stalled in line (a paused process keeps its lease): waiter keys on a live lease.
    const stalled = await Session.create(admin, { ttl: 30 });
    for (let i = 0; i < 16; i++) {
      await admin
        .put(`__${name}/waiters/stalled-${String(i).padStart(2, '0')}`)
        .value('')
        .lease(stalled.leaseId);
    }
    // More items of priority 1 than a read's page (16) holds.
    for (let i = 0; i < 18; i++) await pq.enqueue(`p1-${i}`, 1);
    // Place 16 in line: its read shows the 16 first items (all the stalled ones'), with more beyond.
    const taking = pq.dequeue();
    await waitForCount(admin, `__${name}/waiters/`, 17);
    await pq.enqueue('p9', 9);
    // The item after the page it read is not the 17th by priority: it must not take it.
    expect(await stillPending(taking, 1500)).toBe(true);
    await stalled.close(); // the stalled consumers' lease ends: the waiter is now the head
    expect(await within(10_000, taking, 'dequeue once at the head')).toBe('p1-0');
    const rest: string[] = [];
    for (let i = 0; i < 18; i++) rest.push(await within(10_000, pq.dequeue(), 'drain'));
    expect(rest).toEqual([...Array.from({ length: 17 }, (_, i) => `p1-${i + 1}`), 'p9']);
    await pq.close();
    expect(await keysUnder(admin, `__${name}/waiters/`)).toEqual([]);
  });

  it('the same for WorkQueue: past the page, a priority 1 job, not the 9 added after', async () => {
    const name = 'pos-page-wq';
    const admin = etcd().client();
    const producer = new WorkQueue(admin, name);
    const stalled = await Session.create(admin, { ttl: 30 });
    for (let i = 0; i < 16; i++) {
      await admin
        .put(`${name}/waiters/stalled-${String(i).padStart(2, '0')}`)
        .value('')
        .lease(stalled.leaseId);
    }
    for (let i = 0; i < 18; i++) await producer.add(`p1-${i}`, { priority: 1 });
    await using session = await Session.create(admin, { ttl: 10 });
    const wq = new WorkQueue(session, name);
    const claiming = wq.claim();
    await waitForCount(admin, `${name}/waiters/`, 17);
    await producer.add('p9', { priority: 9 });
    expect(await stillPending(claiming, 1500)).toBe(true);
    await stalled.close();
    const job = await within(10_000, claiming, 'claim once at the head');
    expect(job.value).toBe('p1-0');
    await job.ack();
    await Promise.all([wq.close(), producer.close()]);
  });

  it('a line longer than the names a read returns: waiters deep in line that left do not strand an item', async () => {
    const name = 'pos-long';
    const admin = etcd().client();
    const q = new Queue(admin, name);
    const n = 70;
    const aborts = Array.from({ length: n }, () => new AbortController());
    const takes: Promise<string>[] = [];
    // One at a time, so that the order in line is the order of `takes`.
    for (let i = 0; i < n; i++) {
      takes.push(q.dequeue({ signal: aborts[i]!.signal }));
      await waitForCount(admin, `__${name}/waiters/`, i + 1);
    }
    // The last waiter read the names of the 65 oldest only; four between them and it leave.
    const left = [65, 66, 67, 68];
    for (const i of left) aborts[i]!.abort();
    await Promise.allSettled(left.map((i) => takes[i]));
    const stay = takes.filter((_, i) => !left.includes(i));
    const items = Array.from({ length: stay.length }, (_, i) => `v${i}`);
    for (const v of items) await q.enqueue(v);
    const got = await within(20_000, Promise.all(stay), 'every waiter that stayed gets an item');
    expect([...got].sort()).toEqual([...items].sort());
    await q.close();
    expect(await keysUnder(admin, `__${name}/waiters/`)).toEqual([]);
    expect(await keysUnder(admin, `${name}/`)).toEqual([]);
  });
});
