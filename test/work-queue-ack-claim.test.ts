import { describe, expect, it } from 'vitest';
import { createClient, isRecipeError, Session, WorkQueue, type Job } from '../src/index.js';
import { keysUnder, rejectsInvalid, useCluster, useProxies, waitForKeyGone, within } from './helpers.js';
import {
  beforeTxn,
  Collected,
  deletesUnder,
  faultFor,
  requestCounts,
  tally,
  waitForCount,
  waitForPrefixEmpty,
} from './queue-helpers.js';

/*
 * claim({ ack }): the worker's loop in one request less. The ack of the last
 * job carries the claimer's join of the line (docs/work-queue.md), so it must
 * be as proven as a plain ack, and leave no waiter key behind when the claim
 * that follows fails or is aborted.
 */

/** Resolves once `job` ended (acked, released or lost): its signal aborts then. */
function ended(job: Job): Promise<void> {
  const { signal } = job;
  return signal.aborted
    ? Promise.resolve()
    : new Promise((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
}

/** Takes job after job with claim({ ack: last }) into `acked`, until `stop` aborts. */
function loop(wq: WorkQueue, acked: Collected, stop: AbortSignal): Promise<void> {
  return (async () => {
    let last: Job | undefined;
    for (;;) {
      try {
        const job = await wq.claim({ signal: stop, ack: last });
        if (last) acked.push(last.value);
        last = job;
      } catch (err) {
        if (!stop.aborted) throw err;
        // Aborted while waiting: the ack may have landed first.
        if (last?.done) acked.push(last.value);
        else await last?.release();
        return;
      }
    }
  })();
}

describe('WorkQueue claim({ ack })', () => {
  const etcd = useCluster();
  const { proxy, plainViaProxy, closeAfter } = useProxies(etcd);

  it('acks the job and claims the next in one request fewer than ack() then claim()', async () => {
    const name = 'ac-count';
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    // Added by another object, closed before counting: the adds' spent receipts would otherwise start
    // wq's idle flush timer (a Txn 2 s after the first add), which could land inside a count below.
    const producer = new WorkQueue(session, name);
    for (let i = 0; i < 6; i++) await producer.add(`j${i}`);
    await producer.close();
    const wq = new WorkQueue(session, name);
    const url = etcd().members[0]!.clientUrl;
    const kv = async () => {
      const c = await requestCounts(url);
      return c.txn + c.range + c.put + c.del;
    };
    let job = await wq.claim();
    const taken = [job.value];
    let before = await kv();
    for (let i = 0; i < 2; i++) {
      await job.ack();
      job = await wq.claim();
      taken.push(job.value);
    }
    const separate = (await kv()) - before;
    before = await kv();
    for (let i = 0; i < 2; i++) {
      const last = job;
      job = await wq.claim({ ack: last });
      expect(last.done).toBe(true);
      taken.push(job.value);
    }
    const together = (await kv()) - before;
    expect({ separate, together }).toEqual({ separate: 6, together: 4 });
    const last = await wq.claim({ ack: job });
    taken.push(last.value);
    expect(taken).toEqual(['j0', 'j1', 'j2', 'j3', 'j4', 'j5']);
    expect(await wq.stats()).toMatchObject({ jobs: 1, claimed: 1, waiting: 0 });
    await last.ack();
    await wq.close();
    expect(await keysUnder(client, `${name}/`)).toEqual([]);
  });

  it('4 workers looping on claim({ ack }) ack every job exactly once, and leave no key', async () => {
    const name = 'ac-loop';
    const admin = etcd().client();
    const producer = new WorkQueue(admin, name);
    const stop = new AbortController();
    const acked = new Collected();
    const sessions = await Promise.all(
      [0, 1, 2, 3].map(async () => Session.create(closeAfter(createClient({ hosts: etcd().endpoints })), { ttl: 10 })),
    );
    const workers = sessions.map((s) => new WorkQueue(s, name));
    const loops = workers.map((wq) => loop(wq, acked, stop.signal));
    const n = 60;
    for (let i = 0; i < n; i++) await producer.add(`v${i}`);
    // Only an ack deletes a job: once none is left, every job was acked and every worker waits in line.
    await waitForPrefixEmpty(admin, `${name}/jobs/`);
    stop.abort();
    await within(20_000, Promise.all(loops), 'the loops end');
    expect([...tally(acked.values)].sort()).toEqual(Array.from({ length: n }, (_, i) => [`v${i}`, 1]).sort());
    await Promise.all(workers.map((w) => w.close()));
    await Promise.all(sessions.map((s) => s.close()));
    await producer.close();
    expect(await keysUnder(admin, `${name}/`)).toEqual([]);
  });

  it('a lost reply to the ack that carries the join: proven by its receipt, the next job is claimed once', async () => {
    const name = 'ac-lost';
    const admin = etcd().client();
    const p = await proxy();
    const client = closeAfter(createClient({ hosts: p.endpoint, callTimeoutMs: 500 }));
    await using session = await Session.create(client, { ttl: 10 });
    const wq = new WorkQueue(session, name);
    const producer = new WorkQueue(admin, name);
    const first = await producer.add('first');
    await producer.add('second');
    const job = await wq.claim();
    expect(job.value).toBe('first');
    const hook = beforeTxn(client, deletesUnder(`${name}/jobs/`), () => p.dropReplies());
    const claiming = wq.claim({ ack: job });
    await waitForKeyGone(admin, `${name}/jobs/${first}`); // the ack committed; its reply is lost
    p.restore();
    const next = await within(20_000, claiming, 'claim after the lost reply');
    expect(hook.hits).toBe(1);
    expect(job.done).toBe(true);
    expect(next.value).toBe('second');
    expect(await wq.stats()).toMatchObject({ jobs: 1, claimed: 1, waiting: 0 });
    await next.ack();
    await Promise.all([wq.close(), producer.close()]);
    expect(await keysUnder(admin, `${name}/`)).toEqual([]);
  });

  it('a lost reply, then a cut past the TTL: the ack landed, the claim rejects, no waiter key is left', async () => {
    const name = 'ac-ttl';
    const admin = etcd().client();
    const p = await proxy();
    const client = closeAfter(createClient({ hosts: p.endpoint, callTimeoutMs: 500 }));
    const ttl = 2;
    const session = await Session.create(client, { ttl });
    const wq = new WorkQueue(session, name);
    const id = await new WorkQueue(admin, name).add('job');
    const job = await wq.claim();
    beforeTxn(client, deletesUnder(`${name}/jobs/`), () => p.dropReplies());
    const claiming = wq.claim({ ack: job });
    claiming.catch(() => undefined);
    await waitForKeyGone(admin, `${name}/jobs/${id}`);
    p.cut();
    await faultFor(ttl * 1000 + 2000); // the lease, and the waiter key the ack wrote, are gone
    p.restore();
    await expect(within(20_000, claiming, 'claim after the outage')).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
    expect(job.done).toBe(true);
    await wq.close();
    expect(await keysUnder(admin, `${name}/`)).toEqual([]);
  });

  it('an ack that cannot land (claim lost): claim rejects LOCK_NOT_HELD, claims nothing, joins nothing', async () => {
    const name = 'ac-lost-claim';
    const admin = etcd().client();
    await using session = await Session.create(admin, { ttl: 10 });
    const wq = new WorkQueue(session, name);
    const id = await wq.add('a');
    await wq.add('b');
    const job = await wq.claim();
    await admin.delete().key(`${name}/claims/${id}`); // an operator frees the job
    const err = await wq.claim({ ack: job }).catch((e: unknown) => e);
    expect(isRecipeError(err, 'LOCK_NOT_HELD')).toBe(true);
    expect(job.done).toBe(true);
    expect(await wq.stats()).toEqual({ jobs: 2, claimed: 0, dead: 0, waiting: 0 });
    const again = await wq.claim();
    expect(again).toMatchObject({ id, attempts: 2 });
  });

  it('the session lost before the ack: claim rejects, the job stays for another worker', async () => {
    const name = 'ac-revoked';
    const admin = etcd().client();
    const session = await Session.create(admin, { ttl: 10 });
    const wq = new WorkQueue(session, name);
    const id = await wq.add('a');
    const job = await wq.claim();
    await admin.leaseClient.leaseRevoke({ ID: session.leaseId });
    const err = await wq.claim({ ack: job }).catch((e: unknown) => e);
    expect(isRecipeError(err, 'LOCK_NOT_HELD') || isRecipeError(err, 'SESSION_EXPIRED')).toBe(true);
    await using other = await Session.create(admin, { ttl: 10 });
    const taken = await within(10_000, new WorkQueue(other, name).claim(), 'claim by another worker');
    expect(taken).toMatchObject({ id, attempts: 2 });
    expect(await keysUnder(admin, `${name}/waiters/`)).toEqual([]);
  });

  it('rejects an ack that is not a job of this object before writing; an acked job is fine', async () => {
    const name = 'ac-bad';
    const admin = etcd().client();
    await using session = await Session.create(admin, { ttl: 10 });
    const wq = new WorkQueue(session, name);
    const other = new WorkQueue(session, name);
    await wq.add('a');
    await wq.add('b');
    const job = await wq.claim();
    await rejectsInvalid(() => other.claim({ ack: job }), 'options.ack');
    await rejectsInvalid(() => wq.claim({ ack: {} as Job }), 'options.ack');
    expect(job.done).toBe(false);
    expect(await wq.stats()).toMatchObject({ jobs: 2, claimed: 1, waiting: 0 });
    await job.ack();
    const next = await within(10_000, wq.claim({ ack: job }), 'claim after a plain ack');
    expect(next.value).toBe('b');
    const aborting = new AbortController();
    const waiting = wq.claim({ ack: next, signal: aborting.signal });
    waiting.catch(() => undefined);
    // The job's signal ends once this process has the ack's reply (etcd may show the waiter key sooner).
    await within(10_000, ended(next), 'the ack');
    expect(next.done).toBe(true);
    expect(await keysUnder(admin, `${name}/waiters/`)).toHaveLength(1);
    aborting.abort();
    await expect(waiting).rejects.toMatchObject({ name: 'AbortError' });
    expect(await keysUnder(admin, `${name}/`)).toEqual([expect.stringMatching(/\/receipts\//)]);
  });

  // Where it can go wrong: the same job acked by two claims at once, a job that is no longer ours to ack,
  // aborts at each step, the session lost while waiting after the ack, etcd3's own silent re-send.

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
    // Deletes of the carried waiter key: sent while the ack may still land, one could reach etcd with the
    // held ack and be applied first, and the late ack would then create the key for good.
    const cleanups = beforeTxn(client, deletesUnder(`${name}/waiters/`), () => undefined, 100);
    const claiming = wq.claim({ ack: job, signal: stop.signal }).catch((e: unknown) => e);
    await within(10_000, sending, 'the ack is sent');
    stop.abort();
    const err = await within(15_000, claiming, 'claim after the abort');
    expect(isRecipeError(err, 'OUTCOME_UNKNOWN') || err === stop.signal.reason).toBe(true);
    expect(job.done).toBe(true); // it may have landed: not ours to ack again
    expect(cleanups.hits).toBe(0); // none until the ack's fate is decided (its receipt voided or found)
    p.restore(); // the held ack (and the voiding that followed it) reach etcd now, after the claim gave up
    await within(15_000, wq.stats(), 'a read behind them on the same client');
    // Whatever became of the ack, a waiter key it created is deleted, not left at the head of the line.
    await waitForPrefixEmpty(admin, `${name}/waiters/`, 15_000);
    const acked = (await admin.get(`${name}/jobs/${id}`).string()) === null;
    expect(await wq.stats()).toMatchObject(acked ? { jobs: 0, claimed: 0 } : { jobs: 1, claimed: 1 });
  });
});
