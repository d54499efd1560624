import type { Namespace } from 'etcd3';
import { describe, expect, it } from 'vitest';
import { Mutex, Queue, Semaphore, Session } from '../src/index.js';
import { stillPending, useCluster, waitForPrefixEmpty, within } from './helpers.js';
import { deletesUnder, putsUnder, type RawTxn } from './queue-helpers.js';

/*
 * A join's create whose reply never comes: a frozen peer holds it, the call's
 * deadline passes and the caller gives up, its cleanup deletes a key that is
 * not there yet, and then the held create lands. Here the test is that peer:
 * it keeps the library's own create Txn, fails the attempt as its deadline
 * would, and hands the Txn to etcd once the cleanup's delete is done.
 */

interface Held {
  /** Resolves with the create Txn once the library sent it (and gave up on it). */
  readonly create: Promise<RawTxn>;
  /** Resolves once a delete under the same prefix came back: the cleanup is done. */
  readonly cleaned: Promise<void>;
}

function holdCreate(client: Namespace, prefix: string, stop: AbortController): Held {
  const kv = client.kv as unknown as { txn: (req: unknown, options?: unknown) => Promise<unknown> };
  const real = kv.txn.bind(kv);
  let held!: (req: RawTxn) => void;
  let cleaned!: () => void;
  const state = {
    create: new Promise<RawTxn>((r) => {
      held = r;
    }),
    cleaned: new Promise<void>((r) => {
      cleaned = r;
    }),
  };
  let holding = true;
  kv.txn = async (req: unknown, options?: unknown) => {
    if (holding && putsUnder(prefix)(req as RawTxn)) {
      holding = false;
      held(req as RawTxn);
      stop.abort(); // the caller gives up while the create is held
      throw new Error('Deadline exceeded (the request is held by a frozen peer)');
    }
    const res = await real(req, options);
    if (deletesUnder(prefix)(req as RawTxn)) cleaned();
    return res;
  };
  return state;
}

describe('a join whose create lands after the caller gave up and cleaned up', () => {
  const etcd = useCluster();

  it('Semaphore: the late key (a group of 2 permits) is deleted; the permits stay free', async () => {
    const name = 'late/sem';
    const admin = etcd().client();
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 30 });
    await (await new Semaphore(session, name, 2).acquire()).release(); // the permit count is stored
    const stop = new AbortController();
    const held = holdCreate(client, `${name}/queue/`, stop);
    const acquiring = new Semaphore(session, name, 2).acquire({ permits: 2, signal: stop.signal });
    await expect(within(10_000, acquiring, 'the aborted acquire')).rejects.toMatchObject({ name: 'AbortError' });
    await within(10_000, held.cleaned, 'the cleanup delete');
    const late = await admin.kv.txn((await held.create) as never);
    expect(late.succeeded).toBe(true); // the held create lands, after the cleanup
    // A phantom entry on a live session would take both permits until that session ends.
    await waitForPrefixEmpty(admin, `${name}/queue/`, 10_000);
    // A second held copy (a retry) lands once the first is gone: deleted too.
    expect((await admin.kv.txn((await held.create) as never)).succeeded).toBe(true);
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
    const stop = new AbortController();
    const held = holdCreate(client, `${name}/`, stop);
    const acquiring = new Mutex(session, name).acquire({ signal: stop.signal });
    await expect(within(10_000, acquiring, 'the aborted acquire')).rejects.toMatchObject({ name: 'AbortError' });
    await within(10_000, held.cleaned, 'the cleanup delete');
    expect((await admin.kv.txn((await held.create) as never)).succeeded).toBe(true);
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

  it('Queue: the late waiter key is deleted; a consumer in line behind it gets the next item', async () => {
    const name = 'late-q';
    const admin = etcd().client();
    const client = etcd().client();
    const q = new Queue(client, name, { idleMs: 60_000 }); // its lease outlives the test, as a busy consumer's does
    const stop = new AbortController();
    const held = holdCreate(client, `__${name}/waiters/`, stop);
    const dequeuing = q.dequeue({ signal: stop.signal });
    await expect(within(10_000, dequeuing, 'the aborted dequeue')).rejects.toMatchObject({ name: 'AbortError' });
    await within(10_000, held.cleaned, 'the cleanup delete');
    const late = await admin.kv.txn((await held.create) as never);
    expect(late.succeeded).toBe(true);
    // A phantom waiter at the head of the line would keep the first item from everyone behind it.
    await waitForPrefixEmpty(admin, `__${name}/waiters/`, 5000);
    const other = new Queue(admin, name);
    const taking = other.dequeue();
    await new Queue(admin, name).enqueue('x');
    expect(await within(10_000, taking, 'the item')).toBe('x');
    await Promise.all([q.close(), other.close()]);
  });
});
