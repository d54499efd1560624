import { describe, expect, it } from 'vitest';
import { Barrier, Session } from '../src/index.js';
import { keysUnder, rejectsBadNames, rejectsInvalid, stillPending, useCluster, within } from './helpers.js';

describe('Barrier', () => {
  const etcd = useCluster();

  it("uses Go's layout: exactly the key, empty value, no lease; hold is create-if-absent", async () => {
    const client = etcd().client();
    const b = new Barrier(client, 'layout/gate');
    expect(await b.isHeld()).toBe(false);
    expect(await b.hold()).toBe(true);
    const kvs = (await client.getAll().prefix('layout/').exec()).kvs;
    expect(kvs.map((kv) => kv.key.toString())).toEqual(['layout/gate']);
    expect(kvs[0]!.value.length).toBe(0);
    expect(kvs[0]!.lease).toBe('0');
    // Held already: by this object, or by anyone else.
    expect(await b.hold()).toBe(false);
    expect(await new Barrier(etcd().client(), 'layout/gate').hold()).toBe(false);
    expect(await b.isHeld()).toBe(true);
    // Anyone may release; release reports whether it was held.
    expect(await new Barrier(etcd().client(), 'layout/gate').release()).toBe(true);
    expect(await b.release()).toBe(false);
    expect(await keysUnder(client, 'layout/')).toEqual([]);
  });

  it('wait returns at once when not held, and every waiter passes when the barrier is released', async () => {
    const client = etcd().client();
    const b = new Barrier(client, 'wait/gate');
    await within(5000, b.wait(), 'wait on a free barrier');
    expect(await b.hold()).toBe(true);
    const waiters = Array.from({ length: 4 }, () => new Barrier(etcd().client(), 'wait/gate').wait());
    expect(await stillPending(Promise.race(waiters), 300)).toBe(true);
    // Keys that merely share the prefix are not the barrier (Go 3.4 read `key` as a prefix).
    await client.put('wait/gate2').value('x');
    await client.delete().key('wait/gate2');
    await client.put('wait/gate/child').value('x');
    await client.delete().key('wait/gate/child');
    expect(await stillPending(Promise.race(waiters), 200)).toBe(true);
    expect(await b.release()).toBe(true);
    await within(10_000, Promise.all(waiters), 'waiters after release');
    expect(await keysUnder(client, 'wait/')).toEqual([]);
  });

  it('a waiter passes once the hold it saw is released, even if the barrier is held again at once', async () => {
    const client = etcd().client();
    const b = new Barrier(client, 'rehold/gate');
    await b.hold();
    const early = new Barrier(etcd().client(), 'rehold/gate').wait();
    expect(await stillPending(early, 300)).toBe(true);
    // Release and hold again back to back: the key is never absent when the waiter reads.
    expect(await b.release()).toBe(true);
    expect(await b.hold()).toBe(true);
    await within(10_000, early, 'waiter of the first hold');
    // A waiter that arrives during the second hold waits for that one.
    const late = new Barrier(etcd().client(), 'rehold/gate').wait();
    expect(await stillPending(late, 300)).toBe(true);
    await b.release();
    await within(10_000, late, 'waiter of the second hold');
  });

  it("a hold attached to a session opens the barrier when the holder's lease ends", async () => {
    const client = etcd().client();
    const session = await Session.create(etcd().client(), { ttl: 10 });
    const b = new Barrier(client, 'session/gate');
    expect(await b.hold({ session })).toBe(true);
    const kv = (await client.getAll().prefix('session/').exec()).kvs;
    expect(kv.map((k) => k.key.toString())).toEqual(['session/gate']);
    expect(kv[0]!.lease).toBe(session.leaseId);
    expect(kv[0]!.value.length).toBe(0);
    const waiting = new Barrier(etcd().client(), 'session/gate').wait();
    expect(await stillPending(waiting, 300)).toBe(true);
    // The holder crashes: its lease expires (revoking it is what etcd does at expiry).
    await client.leaseClient.leaseRevoke({ ID: session.leaseId });
    await within(10_000, waiting, "waiter after the holder's lease ended");
    expect(await b.isHeld()).toBe(false);
    // A dead session cannot hold, whether it knows it yet or not.
    await expect(b.hold({ session })).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
    await session.close();
    await expect(b.hold({ session })).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
    expect(await keysUnder(client, 'session/')).toEqual([]);
  });

  it("an aborted wait rejects with the signal's reason; a timeout signal bounds the wait", async () => {
    const client = etcd().client();
    const b = new Barrier(client, 'abort/gate');
    await b.hold();
    const controller = new AbortController();
    const pending = new Barrier(etcd().client(), 'abort/gate').wait({ signal: controller.signal });
    expect(await stillPending(pending, 200)).toBe(true);
    const reason = new Error('caller gave up');
    controller.abort(reason);
    await expect(pending).rejects.toBe(reason);
    await expect(b.wait({ signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
    const timedOut = await b.wait({ signal: AbortSignal.timeout(200) }).catch((e: unknown) => e);
    expect((timedOut as Error).name).toBe('TimeoutError');
    // Waiting wrote nothing; the barrier is still held and still works.
    expect(await keysUnder(client, 'abort/')).toEqual(['abort/gate']);
    const waiting = b.wait();
    await b.release();
    await within(10_000, waiting, 'wait after the aborted ones');
  });

  it('an aborted hold leaves no key behind, even when its Txn lands after the abort', async () => {
    const cluster = etcd();
    const client = cluster.client();
    const b = new Barrier(client, 'abort-hold/gate');
    const reason = new Error('gave up');
    await expect(b.hold({ signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
    expect(await keysUnder(client, 'abort-hold/')).toEqual([]);

    // Freeze etcd so the create is in flight when the caller aborts; it lands once etcd resumes.
    const watcher = await cluster.client().watch().key('abort-hold/gate').create();
    const events: string[] = [];
    const deleted = new Promise<void>((resolve) => {
      watcher.on('put', () => events.push('put'));
      watcher.on('delete', () => {
        events.push('delete');
        resolve();
      });
    });
    try {
      await b.isHeld(); // the connection is up before etcd freezes
      cluster.members[0]!.pause();
      const controller = new AbortController();
      const holding = b.hold({ signal: controller.signal }); // its Txn is sent before hold() returns
      controller.abort(reason);
      cluster.members[0]!.resume();
      await expect(within(10_000, holding)).rejects.toBe(reason);
      // By the time hold() rejects, its write was either voided (it can never land) or it landed and was
      // taken back: no key either way, and no late put after this point.
      expect(await b.isHeld()).toBe(false);
      if (events.length) await within(10_000, deleted, 'the late hold to be removed');
      expect([[], ['put', 'delete']]).toContainEqual(events);
    } finally {
      if (cluster.members[0]!.state === 'paused') cluster.members[0]!.resume();
      await watcher.cancel();
    }
    expect(await b.isHeld()).toBe(false);
  });

  it('rejects bad input with INVALID_ARGUMENT before writing anything', async () => {
    const client = etcd().client();
    const before = await keysUnder(client);
    const bad = rejectsInvalid;
    await rejectsBadNames((name) => new Barrier(client, name));
    await bad(() => new Barrier({} as never, 'bad/gate'));
    await bad(() => new Barrier(undefined as never, 'bad/gate'));
    const b = new Barrier(client, 'bad/gate');
    await bad(() => b.hold(null as never));
    await bad(() => b.hold({ signal: 'soon' as never }));
    await bad(() => b.hold({ session: {} as never }));
    await bad(() => b.hold({ session: 'lease' as never }));
    await bad(() => b.release({ signal: 1 as never }));
    await bad(() => b.wait(42 as never));
    await bad(() => b.wait({ signal: {} as never }));
    await bad(() => b.isHeld([] as never));
    expect(await keysUnder(client)).toEqual(before);
  });
});
