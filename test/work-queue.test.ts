import { describe, expect, it } from 'vitest';
import { closeClient, createClient, isRecipeError, Session, WorkQueue, type Job } from '../src/index.js';
import { requestCounts, requestsBetween } from '../src/testing/index.js';
import { keysUnder, stillPending, useCluster, within } from './helpers.js';
import { tally, waitForCount } from './queue-helpers.js';

/** Resolves with the abort reason once `signal` aborts (bounded). */
function aborted(signal: AbortSignal, ms = 10_000): Promise<unknown> {
  return within(
    ms,
    new Promise((resolve) => {
      if (signal.aborted) resolve(signal.reason);
      else signal.addEventListener('abort', () => resolve(signal.reason), { once: true });
    }),
    'job signal',
  );
}

describe('WorkQueue', () => {
  const etcd = useCluster();

  it('writes jobs, claims on the session lease and attempt counters; ack removes all of them in one Txn', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const wq = new WorkQueue(session, 'lay');
    const id = await wq.add('payload');
    expect(id).toMatch(/^00100-[0-9]{19}$/);
    const job = (await client.getAll().prefix('lay/jobs/').exec()).kvs;
    expect(job.map((kv) => [kv.key.toString(), kv.value.toString(), kv.lease])).toEqual([
      [`lay/jobs/${id}`, 'payload', '0'],
    ]);
    const claimed = await wq.claim();
    expect(claimed).toMatchObject({
      id,
      value: 'payload',
      attempts: 1,
      priority: 100,
      key: `lay/claims/${id}`,
      done: false,
    });
    expect(claimed.buffer).toEqual(Buffer.from('payload'));
    const claim = (await client.getAll().prefix('lay/claims/').exec()).kvs[0]!;
    expect(claim.lease).toBe(session.leaseId);
    expect(claimed.fencingToken).toBe(BigInt(claim.create_revision));
    expect((await client.getAll().prefix('lay/attempts/').exec()).kvs[0]!.lease).toBe('0');
    expect(await wq.stats()).toEqual({ jobs: 1, claimed: 1, dead: 0, waiting: 0 });
    await claimed.ack();
    expect(claimed.done).toBe(true);
    expect(isRecipeError(claimed.signal.reason, 'LOCK_NOT_HELD')).toBe(true);
    // What is left is the ack's spent receipt, deleted by the next write or by close().
    expect(await keysUnder(client, 'lay/')).toEqual([expect.stringMatching(/^lay\/receipts\/[0-9]{19}$/)]);
    await claimed.ack(); // idempotent
    await claimed.release(); // a no-op after ack
    await wq.close();
    expect(await keysUnder(client, 'lay/')).toEqual([]);
  });

  it('claims lower priorities first, oldest first within a priority; skips claimed jobs', async () => {
    await using session = await Session.create(etcd().client(), { ttl: 10 });
    const wq = new WorkQueue(session, 'order');
    for (const [v, p] of [
      ['a', 5],
      ['b', undefined],
      ['c', 0],
      ['d', 5],
      ['e', undefined],
    ] as const)
      await wq.add(v, { priority: p });
    const jobs: Job[] = [];
    for (let i = 0; i < 5; i++) jobs.push(await wq.claim());
    expect(jobs.map((j) => j.value)).toEqual(['c', 'a', 'd', 'b', 'e']);
    expect(jobs.map((j) => j.priority)).toEqual([0, 5, 5, 100, 100]);
    for (let i = 1; i < jobs.length; i++) expect(jobs[i]!.fencingToken > jobs[i - 1]!.fencingToken).toBe(true);
    await jobs[1]!.release();
    const again = await wq.claim();
    expect(again.value).toBe('a');
    expect(again.attempts).toBe(2);
    expect(again.fencingToken > jobs[4]!.fencingToken).toBe(true);
    await Promise.all([again, ...jobs.filter((j) => j !== jobs[1])].map((j) => j.ack()));
    await wq.close();
    expect(await keysUnder(etcd().client(), 'order/')).toEqual([]);
  });

  it('skips many claimed jobs; a job released behind them, or of a lower priority number, goes first', async () => {
    const client = etcd().client();
    await using holderSession = await Session.create(client, { ttl: 10 });
    await using session = await Session.create(etcd().client(), { ttl: 10 });
    const holder = new WorkQueue(holderSession, 'cursor');
    const worker = new WorkQueue(session, 'cursor');
    for (let i = 0; i < 40; i++) await holder.add(`held-${i}`);
    const held: Job[] = [];
    for (let i = 0; i < 40; i++) held.push(await holder.claim());
    for (const v of ['a', 'b', 'c']) await holder.add(v);
    const take = async () => {
      const job = await worker.claim();
      await job.ack();
      return job.value;
    };
    expect(await take()).toBe('a');
    await held[5]!.release(); // now behind the first free job the worker saw
    expect(await take()).toBe('held-5');
    await holder.add('urgent', { priority: 0 });
    expect(await take()).toBe('urgent');
    expect([await take(), await take()]).toEqual(['b', 'c']);
    expect(await worker.stats()).toMatchObject({ jobs: 39, claimed: 39 });
    await Promise.all(held.map((j) => j.release()));
    await holder.close();
    await worker.close();
  });

  it('a worker whose session is lost cannot ack; the job goes to the next worker, fenced', async () => {
    const client = etcd().client();
    const a = await Session.create(client, { ttl: 3 }); // keepalives every second: it learns of the revoke soon
    await using b = await Session.create(etcd().client(), { ttl: 10 });
    const wa = new WorkQueue(a, 'lost');
    const wb = new WorkQueue(b, 'lost');
    await wa.add('job');
    const job = await wa.claim();
    const next = wb.claim();
    await waitForCount(client, 'lost/waiters/', 1);
    expect(await stillPending(next, 200)).toBe(true);
    // The worker's lease disappears (it was paused past its TTL, or an operator revoked it).
    await client.leaseClient.leaseRevoke({ ID: a.leaseId });
    expect(isRecipeError(await aborted(job.signal), 'SESSION_EXPIRED')).toBe(true);
    const taken = await within(10_000, next, 'claim after the lease was lost');
    expect(taken).toMatchObject({ id: job.id, attempts: 2 });
    expect(taken.fencingToken > job.fencingToken).toBe(true);
    await expect(job.ack()).rejects.toMatchObject({ code: 'LOCK_NOT_HELD' });
    expect(() => job.ifOwner()).toThrow(expect.objectContaining({ code: 'LOCK_NOT_HELD' }));
    // A write fenced by the stale claim cannot land; the current claimer's can.
    const stale = await client
      .if(`lost/claims/${job.id}`, 'Create', '==', job.fencingToken.toString())
      .then(client.put('lost/out').value('stale'))
      .commit();
    expect(stale.succeeded).toBe(false);
    expect((await taken.ifOwner().then(client.put('lost/out').value('fresh')).commit()).succeeded).toBe(true);
    await taken.ack();
    await Promise.all([wa.close(), wb.close()]);
    expect(await keysUnder(client, 'lost/')).toEqual(['lost/out']);
  });

  it('one new job wakes one waiting claimer; a released job goes to the next', async () => {
    const client = etcd().client();
    const sessions = await Promise.all(Array.from({ length: 3 }, () => Session.create(etcd().client(), { ttl: 10 })));
    const queues = sessions.map((s) => new WorkQueue(s, 'wake'));
    const claims = [];
    for (let i = 0; i < 3; i++) {
      claims.push(queues[i]!.claim());
      await waitForCount(client, 'wake/waiters/', i + 1);
    }
    await queues[0]!.add('one');
    const first = await within(5000, claims[0]!);
    expect(first.value).toBe('one');
    expect(await stillPending(Promise.race(claims.slice(1)), 300)).toBe(true);
    await first.release();
    const second = await within(5000, claims[1]!);
    expect(second).toMatchObject({ value: 'one', attempts: 2 });
    expect(await stillPending(claims[2]!, 200)).toBe(true);
    await second.ack();
    await queues[0]!.add('two');
    expect((await within(5000, claims[2]!)).value).toBe('two');
    await Promise.all(sessions.map((s) => s.close()));
  });

  it('a waiting claimer is not sent the attempt records that every claim and ack writes', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const wq = new WorkQueue(session, 'scope');
    const producer = new WorkQueue(client, 'scope');
    const claim = wq.claim();
    // Its watch is open before its waiter key is written.
    await waitForCount(client, 'scope/waiters/', 1);
    const url = etcd().members[0]!.metricsUrl;
    const before = await requestCounts(url);
    // The attempt records of 25 jobs that other consumers claim and ack: a put and a delete each.
    for (let i = 0; i < 25; i++) {
      await client.put(`scope/attempts/00100-${i}`).value('other');
      await client.delete().key(`scope/attempts/00100-${i}`);
    }
    await producer.add('one');
    const job = await within(5000, claim);
    // What etcd sent by the time the claimer had its job (the add, on the same stream after the 50 writes):
    // the job and its receipt; the claim's own events may follow.
    const sent = requestsBetween(before, await requestCounts(url)).watchEvents;
    expect(sent).toBeGreaterThan(0); // the job's put at least: the count is real
    expect(sent).toBeLessThan(10);
    await job.ack();
    await producer.close();
  });

  it('claimers in one process share one feed; closing the client it runs on does not stall the others', async () => {
    const cluster = etcd();
    const closing = createClient({ hosts: cluster.endpoints });
    const sessions = await Promise.all([closing, cluster.client()].map((c) => Session.create(c, { ttl: 10 })));
    const [first, second] = sessions.map((s) => new WorkQueue(s, 'feed'));
    const admin = cluster.client();
    const producer = new WorkQueue(admin, 'feed');
    // The first claimer opens the process's feed on its client; the second waits behind it on the same feed.
    const firstClaim = first!.claim();
    await waitForCount(admin, 'feed/waiters/', 1);
    const waiting = second!.claim();
    await waitForCount(admin, 'feed/waiters/', 2);
    await producer.add('one');
    expect((await within(5000, firstClaim, 'the first claim')).value).toBe('one');
    // The second is now the head, on a feed that runs on the first's client: close that client.
    await closeClient(closing);
    await producer.add('two');
    const job = await within(5000, waiting, 'the second claim');
    expect(job.value).toBe('two');
    await job.ack();
    await sessions[1]!.close();
  });

  it('dead-letters a job claimed maxAttempts times without an ack; it can be retried', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const wq = new WorkQueue(session, 'dlq', { maxAttempts: 2 });
    const id = await wq.add('poison');
    for (let i = 1; i <= 2; i++) {
      const job = await wq.claim();
      expect(job.attempts).toBe(i);
      await job.release();
    }
    await expect(wq.claim({ signal: AbortSignal.timeout(300) })).rejects.toMatchObject({ name: 'TimeoutError' });
    expect(await wq.deadLetters()).toEqual([{ id, value: 'poison', buffer: Buffer.from('poison') }]);
    await wq.close();
    expect(await keysUnder(client, 'dlq/')).toEqual([`dlq/dead/${id}`]);
    expect(await wq.retryDead(id)).toBe(true);
    expect(await wq.retryDead(id)).toBe(false);
    const again = await wq.claim();
    expect(again).toMatchObject({ id, attempts: 1 });
    await again.deadLetter(); // a poison job sent to the dead letters explicitly
    expect(await wq.stats()).toEqual({ jobs: 0, claimed: 0, dead: 1, waiting: 0 });
    await wq.close();
    expect(await keysUnder(client, 'dlq/')).toEqual([`dlq/dead/${id}`]);
  });

  it('M workers on their own connections: every job acked exactly once', async () => {
    const client = etcd().client();
    await using producer = await Session.create(client, { ttl: 10 });
    const sessions = await Promise.all(Array.from({ length: 4 }, () => Session.create(etcd().client(), { ttl: 10 })));
    const total = 80;
    const done: string[] = [];
    const stop = new AbortController();
    const workers = sessions.map(async (s) => {
      await using wq = new WorkQueue(s, 'many');
      for (;;) {
        const job = await wq.claim({ signal: stop.signal }).catch(() => undefined);
        if (!job) return;
        expect(job.attempts).toBe(1);
        await job.ack();
        done.push(job.value);
        if (done.length === total) stop.abort();
      }
    });
    const wq = new WorkQueue(producer, 'many');
    for (let i = 0; i < total; i++) await wq.add(`j${i}`, { priority: i % 4 });
    await within(30_000, Promise.all(workers), 'workers');
    await wq.close();
    const counts = tally(done);
    expect(counts.size).toBe(total);
    expect([...counts.values()].every((n) => n === 1)).toBe(true);
    expect(await keysUnder(client, 'many/')).toEqual([]);
    await Promise.all(sessions.map((s) => s.close()));
  });

  it('an ack refused by its guard keeps the claim: its signal stays live and still reports a later loss', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const wq = new WorkQueue(session, 'refused');
    await wq.add('job');
    const job = await wq.claim();
    const guard = [{ key: 'refused-flag', target: 'Value' as const, result: '==' as const, value: 'go' }];
    await expect(job.ack({ guard })).rejects.toBeInstanceOf(Error);
    expect(job.done).toBe(false);
    const signal = job.signal;
    expect(signal.aborted).toBe(false);
    expect(await keysUnder(client, 'refused/claims/')).toEqual([job.key]);
    await client.delete().key(job.key); // someone else deletes our claim
    expect(await aborted(signal)).toMatchObject({ code: 'LOCK_NOT_HELD' });
    expect(job.done).toBe(true);
    await expect(job.ack()).rejects.toMatchObject({ code: 'LOCK_NOT_HELD' });
    await wq.close();
  });

  it("an aborted claim rejects with the signal's reason and leaves no key", async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const wq = new WorkQueue(session, 'abort');
    const controller = new AbortController();
    const pending = wq.claim({ signal: controller.signal });
    await waitForCount(client, 'abort/waiters/', 1);
    const reason = new Error('shutting down');
    controller.abort(reason);
    await expect(pending).rejects.toBe(reason);
    await expect(wq.claim({ signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
    expect(await keysUnder(client, 'abort/')).toEqual([]);
    // A claim on an expired session rejects.
    const gone = await Session.create(client, { ttl: 10 });
    await gone.close();
    await expect(new WorkQueue(gone, 'abort').claim()).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
  });

  it('rejects bad input before writing anything', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const bad = (fn: () => unknown) => expect(fn).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    bad(() => new WorkQueue({} as never, 'x'));
    bad(() => new WorkQueue(undefined as never, 'x'));
    bad(() => new WorkQueue(session, ''));
    bad(() => new WorkQueue(session, 'x', { maxAttempts: 0 }));
    bad(() => new WorkQueue(session, 'x', { maxAttempts: 2.5 }));
    const wq = new WorkQueue(session, 'badin');
    await expect(wq.add(5 as never)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', argument: 'value' });
    for (const priority of [-1, 65536, 0.5, '1']) {
      await expect(wq.add('v', { priority: priority as never })).rejects.toMatchObject({
        code: 'INVALID_ARGUMENT',
        argument: 'options.priority',
      });
    }
    await expect(wq.add('v', 7 as never)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', argument: 'options' });
    await expect(wq.claim({ signal: 1 as never })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      argument: 'options.signal',
    });
    await expect(wq.retryDead('../x')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', argument: 'id' });
    await expect(wq.deadLetters(0)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', argument: 'limit' });
    await expect(wq.add('v', { guard: 'leader' as never })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      argument: 'options.guard',
    });
    await expect(
      wq.add('v', { guard: [{ key: 'k', target: 'Create', result: '==', value: 1 }] as never }),
    ).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', argument: 'options.guard[0].value' });
    await expect(wq.retryDead('00100-1', { signal: 'x' as never })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      argument: 'options.signal',
    });
    expect(await keysUnder(client, 'badin')).toEqual([]);
  });
});
