import { describe, expect, it } from 'vitest';
import { createClient, isRecipeError, Session, WorkQueue } from '../src/index.js';
import { keysUnder, useCluster, useProxies, waitForKeyGone, within } from './helpers.js';
import { beforeTxn, deletesUnder, waitForCount, waitForPrefixEmpty } from './queue-helpers.js';

/*
 * claim({ ack }) where it can go wrong: the same job acked by two claims at
 * once, a job that is no longer ours to ack, an abort before anything is
 * sent, the session lost while waiting after the ack, and etcd3's own
 * silent re-send of the ack that carries the join.
 */

describe('WorkQueue claim({ ack }) under review', () => {
  const etcd = useCluster();
  const { proxy, plainViaProxy, closeAfter } = useProxies(etcd);

  it('two claims acking the same job at once: one ack, both wait in line, each gets its own job', async () => {
    const name = 'ar-twice';
    const admin = etcd().client();
    await using session = await Session.create(admin, { ttl: 10 });
    const wq = new WorkQueue(session, name);
    await wq.add('first');
    const job = await wq.claim();
    const a = wq.claim({ ack: job });
    const b = wq.claim({ ack: job });
    // Both are in line, each with a waiter key of its own (not one sharing the other's join).
    await waitForCount(admin, `${name}/waiters/`, 2, 10_000);
    expect(job.done).toBe(true);
    expect(await wq.stats()).toMatchObject({ jobs: 0, claimed: 0, waiting: 2 });
    await wq.add('x');
    await wq.add('y');
    const got = await within(10_000, Promise.all([a, b]), 'both claims');
    expect(got.map((j) => j.value).sort()).toEqual(['x', 'y']);
    await Promise.all(got.map((j) => j.ack()));
    await wq.close();
    expect(await keysUnder(admin, `${name}/`)).toEqual([]);
  });

  it('a job released or dead-lettered first: LOCK_NOT_HELD, nothing claimed or joined, the job unharmed', async () => {
    const name = 'ar-ended';
    const admin = etcd().client();
    await using session = await Session.create(admin, { ttl: 10 });
    const wq = new WorkQueue(session, name);
    const a = await wq.add('a');
    await wq.add('b');
    const released = await wq.claim();
    await released.release();
    const err = await wq.claim({ ack: released }).catch((e: unknown) => e);
    expect(isRecipeError(err, 'LOCK_NOT_HELD')).toBe(true);
    expect(await wq.stats()).toEqual({ jobs: 2, claimed: 0, dead: 0, waiting: 0 });
    const again = await wq.claim();
    expect(again).toMatchObject({ id: a, attempts: 2 });
    await again.deadLetter();
    const err2 = await wq.claim({ ack: again }).catch((e: unknown) => e);
    expect(isRecipeError(err2, 'LOCK_NOT_HELD')).toBe(true);
    expect(await wq.stats()).toEqual({ jobs: 1, claimed: 0, dead: 1, waiting: 0 });
    await wq.close();
  });

  it('an abort before the ack is sent: rejects with the reason, writes nothing, the job is still ours', async () => {
    const name = 'ar-pre-abort';
    const admin = etcd().client();
    await using session = await Session.create(admin, { ttl: 10 });
    const wq = new WorkQueue(session, name);
    await wq.add('a');
    await wq.add('b');
    const job = await wq.claim();
    const reason = new Error('stop');
    await expect(wq.claim({ ack: job, signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
    expect(job.done).toBe(false);
    expect(job.signal.aborted).toBe(false);
    expect(await wq.stats()).toEqual({ jobs: 2, claimed: 1, dead: 0, waiting: 0 });
    const next = await within(10_000, wq.claim({ ack: job }), 'claim with the ack after all');
    expect(next.value).toBe('b');
    expect(job.done).toBe(true);
    await next.ack();
    await wq.close();
    expect(await keysUnder(admin, `${name}/`)).toEqual([]);
  });

  it('the lease lost while waiting after the ack: SESSION_EXPIRED, the ack stands, no waiter key', async () => {
    const name = 'ar-lost-wait';
    const admin = etcd().client();
    const session = await Session.create(admin, { ttl: 10 });
    const wq = new WorkQueue(session, name);
    await wq.add('a');
    const job = await wq.claim();
    const waiting = wq.claim({ ack: job });
    waiting.catch(() => undefined);
    await waitForCount(admin, `${name}/waiters/`, 1);
    await admin.leaseClient.leaseRevoke({ ID: session.leaseId });
    const err = await within(10_000, waiting, 'claim after the revoke').catch((e: unknown) => e);
    expect(isRecipeError(err, 'SESSION_EXPIRED')).toBe(true);
    expect(job.done).toBe(true);
    expect(await new WorkQueue(admin, name).stats()).toEqual({ jobs: 0, claimed: 0, dead: 0, waiting: 0 });
    await wq.close();
  });

  it("etcd3's silent re-send of the ack that carries the join: acked once, in line once, next claimed", async () => {
    const name = 'ar-resend';
    const admin = etcd().client();
    const { proxy, client: plain } = await plainViaProxy();
    await using session = await Session.create(plain, { ttl: 30 });
    const wq = new WorkQueue(session, name);
    const first = await wq.add('first');
    const job = await wq.claim();
    const hook = beforeTxn(plain, deletesUnder(`${name}/jobs/`), () => proxy.dropReplies());
    const claiming = wq.claim({ ack: job });
    await waitForKeyGone(admin, `${name}/jobs/${first}`); // the ack (and the join) committed; the reply is lost
    proxy.restore(); // resets the connection: etcd3 re-sends the Txn by itself
    await waitForCount(admin, `${name}/waiters/`, 1);
    await new WorkQueue(admin, name).add('second');
    const next = await within(20_000, claiming, 'claim after the re-send');
    expect(hook.hits).toBe(1);
    expect(job.done).toBe(true);
    expect(next.value).toBe('second');
    expect(await wq.stats()).toMatchObject({ jobs: 1, claimed: 1, waiting: 0 });
    await next.ack();
    await wq.close();
    expect(await keysUnder(admin, `${name}/`)).toEqual([]);
  });

  it('an abort as the ack goes out: it lands all the same, claim rejects with the reason, no waiter key', async () => {
    const name = 'ar-abort-send';
    const admin = etcd().client();
    const client = closeAfter(createClient({ hosts: etcd().endpoints }));
    await using session = await Session.create(client, { ttl: 10 });
    const wq = new WorkQueue(session, name);
    await wq.add('a');
    const job = await wq.claim();
    const stop = new AbortController();
    const hook = beforeTxn(client, deletesUnder(`${name}/jobs/`), () => stop.abort());
    const err = await within(10_000, wq.claim({ ack: job, signal: stop.signal }), 'claim').catch((e: unknown) => e);
    expect(hook.hits).toBe(1);
    expect(err).toBe(stop.signal.reason);
    expect(job.done).toBe(true);
    expect(await wq.stats()).toEqual({ jobs: 0, claimed: 0, dead: 0, waiting: 0 });
    await wq.close();
    expect(await keysUnder(admin, `${name}/`)).toEqual([]);
  });

  it('an abort while the ack is held up and etcd unreachable: once it lands late, no waiter key stays', async () => {
    const name = 'ar-abort-frozen';
    const admin = etcd().client();
    const p = await proxy();
    const client = closeAfter(createClient({ hosts: p.endpoint, callTimeoutMs: 500 }));
    await using session = await Session.create(client, { ttl: 10 });
    const wq = new WorkQueue(session, name);
    const id = await wq.add('a');
    const job = await wq.claim();
    const stop = new AbortController();
    let sent!: () => void;
    const sending = new Promise<void>((r) => {
      sent = r;
    });
    beforeTxn(client, deletesUnder(`${name}/jobs/`), () => {
      p.blackhole(); // the ack is held in the kernel's buffers, as by a frozen peer
      sent();
    });
    const claiming = wq.claim({ ack: job, signal: stop.signal }).catch((e: unknown) => e);
    await within(10_000, sending, 'the ack is sent');
    stop.abort();
    const err = await within(15_000, claiming, 'claim after the abort');
    expect(isRecipeError(err, 'OUTCOME_UNKNOWN') || err === stop.signal.reason).toBe(true);
    expect(job.done).toBe(true); // it may have landed: not ours to ack again
    p.restore(); // the held ack (and the voiding that followed it) reach etcd now, after the claim gave up
    await within(15_000, wq.stats(), 'a read behind them on the same client');
    // Whatever became of the ack, a waiter key it created is deleted, not left at the head of the line.
    await waitForPrefixEmpty(admin, `${name}/waiters/`, 15_000);
    const acked = (await admin.get(`${name}/jobs/${id}`).string()) === null;
    expect(await wq.stats()).toMatchObject(acked ? { jobs: 0, claimed: 0 } : { jobs: 1, claimed: 1 });
  });
});
