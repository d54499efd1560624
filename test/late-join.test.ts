import type { Namespace } from 'etcd3';
import { describe, expect, it } from 'vitest';
import { Election, Mutex, Queue, Semaphore, Session } from '../src/index.js';
import { stillPending, useCluster, waitForPrefixEmpty, within } from './helpers.js';
import { afterTxn, beforeTxn, deletesUnder, putsUnder, type RawTxn } from './queue-helpers.js';

/*
 * A join's create whose reply never comes: a frozen peer holds it, the call's
 * deadline passes and the caller gives up, its cleanup deletes a key that is
 * not there yet, and then the held create lands. Here the test is that peer:
 * it keeps the library's own create Txn, fails the attempt as its deadline
 * would, and hands the Txn to etcd once the cleanup's delete is done.
 */

/**
 * Holds the first create under `prefix` as a frozen peer would: the attempt fails as its deadline would
 * and the caller gives up. Runs `join(signal)` through that, waits until it rejected and its cleanup's
 * delete under `prefix` came back, then lets the held create land (`land()`, as often as asked).
 */
async function lateCreate(
  client: Namespace,
  admin: Namespace,
  prefix: string,
  join: (signal: AbortSignal) => Promise<unknown>,
): Promise<{ land: () => Promise<void> }> {
  const stop = new AbortController();
  const cleaned = afterTxn(client, deletesUnder(prefix));
  let held!: (req: RawTxn) => void;
  const create = new Promise<RawTxn>((r) => {
    held = r;
  });
  beforeTxn(client, putsUnder(prefix), (req) => {
    held(req);
    stop.abort();
    throw new Error('Deadline exceeded (the request is held by a frozen peer)');
  });
  await expect(within(10_000, join(stop.signal), 'the aborted join')).rejects.toMatchObject({ name: 'AbortError' });
  await within(10_000, cleaned, 'the cleanup delete');
  return {
    land: async () => {
      expect((await admin.kv.txn((await create) as never)).succeeded).toBe(true);
    },
  };
}

describe('a join whose create lands after the caller gave up and cleaned up', () => {
  const etcd = useCluster();

  it('Semaphore: the late key (a group of 2 permits) is deleted; the permits stay free', async () => {
    const name = 'late/sem';
    const admin = etcd().client();
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 30 });
    await (await new Semaphore(session, name, 2).acquire()).release(); // the permit count is stored
    const late = await lateCreate(client, admin, `${name}/queue/`, (signal) =>
      new Semaphore(session, name, 2).acquire({ permits: 2, signal }),
    );
    await late.land();
    // A phantom entry on a live session would take both permits until that session ends.
    await waitForPrefixEmpty(admin, `${name}/queue/`, 10_000);
    // A second held copy (a retry) lands once the first is gone: deleted too.
    await late.land();
    await waitForPrefixEmpty(admin, `${name}/queue/`, 10_000);
    await using other = await Session.create(admin, { ttl: 10 });
    const h = await within(10_000, new Semaphore(other, name, 2).acquire({ permits: 2 }), 'both permits');
    await h.release();
  });

  it('Mutex: the late <name>/<lease> key is deleted, and a later acquire of the same session is not', async () => {
    const name = 'late/mutex';
    const admin = etcd().client();
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 30 });
    await (
      await lateCreate(client, admin, `${name}/`, (signal) => new Mutex(session, name).acquire({ signal }))
    ).land();
    // Go's layout: the key is the session's own; left there, it would hold the lock for nobody.
    await waitForPrefixEmpty(admin, `${name}/`, 10_000);
    await using other = await Session.create(admin, { ttl: 10 });
    await (await within(10_000, new Mutex(other, name).acquire(), 'the lock')).release();
    // The same session's next acquire creates the same name: the watch still standing by leaves it alone.
    const h = await within(10_000, new Mutex(session, name).acquire(), 'the same session again');
    const lost = new Promise((r) => h.signal.addEventListener('abort', r, { once: true }));
    expect(await stillPending(lost, 500)).toBe(true);
    await h.release();
  });

  it('Election: the late campaign key is deleted; the next term of the same session proclaims unhurt', async () => {
    const name = 'late/election';
    const admin = etcd().client();
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 30 });
    const late = await lateCreate(client, admin, `${name}/`, (signal) =>
      new Election(session, name).campaign('a', { signal }),
    );
    await late.land();
    // Left there, it would make this session the leader of a campaign nobody runs.
    await waitForPrefixEmpty(admin, `${name}/`, 10_000);
    // A term of the same session writes the same key, and proclaims put it again: none of it is a late copy.
    const e = new Election(session, name);
    await within(10_000, e.campaign('b'), 'the next term');
    for (const v of ['c', 'd', 'e']) await e.proclaim(v);
    expect(await admin.get(`${name}/${session.leaseHex}`).string()).toBe('e');
    expect(e.isLeader).toBe(true);
    await e.resign();
  });

  it('Queue: the late waiter key is deleted; a consumer in line behind it gets the next item', async () => {
    const name = 'late-q';
    const admin = etcd().client();
    const client = etcd().client();
    const q = new Queue(client, name, { idleMs: 60_000 }); // its lease outlives the test, as a busy consumer's does
    await (await lateCreate(client, admin, `__${name}/waiters/`, (signal) => q.dequeue({ signal }))).land();
    // A phantom waiter at the head of the line would keep the first item from everyone behind it.
    await waitForPrefixEmpty(admin, `__${name}/waiters/`, 5000);
    const other = new Queue(admin, name);
    const taking = other.dequeue();
    await new Queue(admin, name).enqueue('x');
    expect(await within(10_000, taking, 'the item')).toBe('x');
    await Promise.all([q.close(), other.close()]);
  });
});
