import type { Namespace } from 'etcd3';
import { afterAll, describe, expect, it } from 'vitest';
import { closeClient, createClient, Election, Session, WorkQueue, type Job } from '../src/index.js';
import { TcpProxy } from './fixtures/tcp-proxy.js';
import { keysUnder, stillPending, useCluster, waitForKey, waitForKeyGone, within } from './helpers.js';
import {
  beforeTxn,
  compactAll,
  deletesUnder,
  faultFor,
  putsUnder,
  requestCounts,
  tally,
  waitForCount,
  Collected,
} from './queue-helpers.js';

/*
 * WorkQueue under real network faults (see queue-network-faults.test.ts for
 * the method): a lost reply to add, claim, ack or retryDead, followed by an
 * outage longer than the session's TTL, a compaction, or etcd3's own silent
 * re-sends. "Delivered" means acked: every job is acked exactly once.
 */

const proxies: TcpProxy[] = [];
const clients: Namespace[] = [];
afterAll(async () => {
  await Promise.all(proxies.map((p) => p.close()));
  await Promise.all(clients.map((c) => closeClient(c)));
});

/** Claims and acks into `acked` until `stop` aborts; any other rejection fails the test. */
function work(wq: WorkQueue, acked: Collected, stop: AbortSignal): Promise<void> {
  return (async () => {
    for (;;) {
      let job: Job;
      try {
        job = await wq.claim({ signal: stop });
      } catch (err) {
        if (stop.aborted) return;
        throw err;
      }
      await job.ack();
      acked.push(job.value);
    }
  })();
}

describe('WorkQueue under network faults', () => {
  const etcd = useCluster();

  async function proxied(callTimeoutMs = 500): Promise<{ proxy: TcpProxy; client: Namespace }> {
    const proxy = await TcpProxy.start(etcd().endpoints[0]!);
    proxies.push(proxy);
    const client = createClient({ hosts: proxy.endpoint, callTimeoutMs });
    clients.push(client);
    return { proxy, client };
  }

  function direct(): Namespace {
    const client = createClient({ hosts: etcd().endpoints });
    clients.push(client);
    return client;
  }

  it('(a) a lost add reply while a worker drains: 0 lost, 0 duplicated (producer without a session)', async () => {
    const name = 'wq-a';
    const { proxy, client } = await proxied();
    const producer = new WorkQueue(client, name);
    await using session = await Session.create(direct(), { ttl: 10 });
    const worker = new WorkQueue(session, name);
    const acked = new Collected();
    const stop = new AbortController();
    const working = work(worker, acked, stop.signal);
    await producer.stats(); // the connection is up before replies are dropped
    const rounds = 6;
    for (let i = 0; i < rounds; i++) {
      const v = `v${i}`;
      const hook = beforeTxn(client, putsUnder(`${name}/jobs/`), () => proxy.dropReplies());
      const adding = producer.add(v);
      await acked.until((vs) => vs.includes(v), `worker acked ${v}`);
      proxy.restore();
      await within(20_000, adding, `add ${v} after the lost reply`);
      expect(hook.hits).toBe(1);
    }
    expect(await producer.stats()).toMatchObject({ jobs: 0, claimed: 0 });
    stop.abort();
    await working;
    expect([...tally(acked.values)]).toEqual(Array.from({ length: rounds }, (_, i) => [`v${i}`, 1]));
    await Promise.all([producer.close(), worker.close()]);
    expect(await keysUnder(etcd().client(), `${name}/`)).toEqual([]);
  });

  it('(b) a lost claim reply, then a cut past the TTL: the claim rejects, another acks the job once', async () => {
    const name = 'wq-b';
    const admin = etcd().client();
    const { proxy, client } = await proxied();
    const ttl = 2;
    const session = await Session.create(client, { ttl });
    const wq = new WorkQueue(session, name);
    const id = await new WorkQueue(admin, name).add('job');
    beforeTxn(client, putsUnder(`${name}/claims/`), () => proxy.dropReplies());
    const claiming = wq.claim();
    claiming.catch(() => undefined);
    await waitForKey(admin, `${name}/claims/${id}`); // the claim committed; its reply is lost
    proxy.cut();
    await faultFor(ttl * 1000 + 2000); // the worker's lease is gone in etcd, and its claim with it
    proxy.restore();
    await expect(within(20_000, claiming, 'claim after the outage')).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
    await using other = await Session.create(direct(), { ttl: 10 });
    const otherWq = new WorkQueue(other, name);
    const job = await within(10_000, otherWq.claim(), 'claim by another worker');
    expect(job).toMatchObject({ id, attempts: 2 });
    await job.ack();
    expect(await otherWq.stats()).toMatchObject({ jobs: 0, claimed: 0 });
    await otherWq.close();
    expect(await keysUnder(admin, `${name}/`)).toEqual([]);
  });

  it('(b) a lost ack reply, then a cut past the TTL: the ack resolves (its receipt proves it), once', async () => {
    const name = 'wq-b2';
    const admin = etcd().client();
    const { proxy, client } = await proxied();
    const ttl = 2;
    const session = await Session.create(client, { ttl });
    const wq = new WorkQueue(session, name);
    const id = await new WorkQueue(admin, name).add('job');
    const job = await wq.claim();
    await using other = await Session.create(direct(), { ttl: 10 });
    const stopNext = new AbortController();
    const next = new WorkQueue(other, name).claim({ signal: stopNext.signal });
    next.catch(() => undefined);
    await waitForCount(admin, `${name}/waiters/`, 1);
    beforeTxn(client, deletesUnder(`${name}/jobs/`), () => proxy.dropReplies());
    const acking = job.ack();
    await waitForKeyGone(admin, `${name}/jobs/${id}`);
    proxy.cut();
    await faultFor(ttl * 1000 + 2000);
    proxy.restore();
    await within(20_000, acking, 'ack after the outage');
    expect(await stillPending(next, 300)).toBe(true); // nobody else gets the acked job
    expect(session.expired).toBe(true);
    stopNext.abort();
    await expect(next).rejects.toMatchObject({ name: 'AbortError' });
    await wq.close();
    expect(await keysUnder(admin, `${name}/`)).toEqual([]);
  });

  it("(c) a lost reply, then a compaction: add, claim and ack settle from etcd's state, not history", async () => {
    const name = 'wq-c';
    const admin = etcd().client();
    const { proxy, client } = await proxied();
    await using session = await Session.create(client, { ttl: 30 });
    const wq = new WorkQueue(session, name);
    await wq.stats();

    beforeTxn(client, putsUnder(`${name}/jobs/`), () => proxy.dropReplies());
    const adding = wq.add('once');
    await waitForCount(admin, `${name}/jobs/`, 1);
    await compactAll(admin, `${name}-filler`);
    proxy.restore();
    const id = await within(20_000, adding, 'add after the compaction');

    beforeTxn(client, putsUnder(`${name}/claims/`), () => proxy.dropReplies());
    const claiming = wq.claim();
    await waitForKey(admin, `${name}/claims/${id}`);
    await compactAll(admin, `${name}-filler`);
    proxy.restore();
    const job = await within(20_000, claiming, 'claim after the compaction');
    expect(job).toMatchObject({ id, value: 'once', attempts: 1 });

    beforeTxn(client, deletesUnder(`${name}/jobs/`), () => proxy.dropReplies());
    const acking = job.ack();
    await waitForKeyGone(admin, `${name}/jobs/${id}`);
    await compactAll(admin, `${name}-filler`);
    proxy.restore();
    await within(20_000, acking, 'ack after the compaction');
    await wq.close();
    expect(await keysUnder(admin, `${name}/`)).toEqual([]);
  });

  it('(d) re-sends etcd3 makes on its own (default policies): add, claim, ack and retryDead once each', async () => {
    const name = 'wq-d';
    const cluster = etcd();
    const admin = cluster.client();
    const proxy = await TcpProxy.start(cluster.endpoints[0]!);
    proxies.push(proxy);
    const plain = cluster.client({ hosts: [proxy.endpoint] }); // new Etcd3(...): silent re-sends, no deadlines
    const url = cluster.members[0]!.clientUrl;
    await using session = await Session.create(plain, { ttl: 30 });
    const wq = new WorkQueue(session, name, { maxAttempts: 1 });
    await wq.stats();
    /**
     * Sends `call` with the reply of its matching Txn lost until `landed()` shows it committed; then
     * the link resets.
     */
    const withLostReply = async <T>(
      match: Parameters<typeof beforeTxn>[1],
      call: () => Promise<T>,
      landed: () => Promise<unknown>,
    ): Promise<T> => {
      const hook = beforeTxn(plain, match, () => proxy.dropReplies());
      const pending = call();
      await landed();
      const calls = hook.calls;
      const before = (await requestCounts(url)).txn;
      proxy.restore(); // resets the connection: etcd3 re-sends the Txn by itself
      const result = await within(20_000, pending, 'call after the reset');
      expect((await requestCounts(url)).txn - before - (hook.calls - calls)).toBeGreaterThan(0);
      return result;
    };
    const id = await withLostReply(
      putsUnder(`${name}/jobs/`),
      () => wq.add('job'),
      () => waitForCount(admin, `${name}/jobs/`, 1),
    );
    const job = await withLostReply(
      putsUnder(`${name}/claims/`),
      () => wq.claim(),
      () => waitForKey(admin, `${name}/claims/${id}`),
    );
    expect(job).toMatchObject({ id, attempts: 1 });
    await withLostReply(
      deletesUnder(`${name}/jobs/`),
      () => job.deadLetter(),
      () => waitForKey(admin, `${name}/dead/${id}`),
    );
    expect(
      await withLostReply(
        putsUnder(`${name}/jobs/`),
        () => wq.retryDead(id),
        () => waitForKey(admin, `${name}/jobs/${id}`),
      ),
    ).toBe(true);
    const again = await wq.claim();
    await withLostReply(
      deletesUnder(`${name}/jobs/`),
      () => again.ack(),
      () => waitForKeyGone(admin, `${name}/jobs/${id}`),
    );
    expect(await wq.stats()).toEqual({ jobs: 0, claimed: 0, dead: 0, waiting: 0 });
    await wq.close();
    expect(await keysUnder(admin, `${name}/`)).toEqual([]);
  });
});

describe('WorkQueue acks, guards and producers', () => {
  const etcd = useCluster();

  it('an ack after losing the claim rejects, even once another worker claimed and acked the job', async () => {
    const admin = etcd().client();
    await using a = await Session.create(etcd().client(), { ttl: 10 });
    await using b = await Session.create(etcd().client(), { ttl: 10 });
    const wa = new WorkQueue(a, 'lostack');
    const wb = new WorkQueue(b, 'lostack');
    await using producer = new WorkQueue(admin, 'lostack');
    const id = await producer.add('job');
    const mine = await wa.claim();
    // An operator (or etcd bug #15247) deletes the claim; A's session is alive and notices nothing.
    await admin.delete().key(`lostack/claims/${id}`);
    const theirs = await within(10_000, wb.claim(), 'claim by B');
    await theirs.ack();
    // Claim and job are both gone now: that is no proof that A's ack landed.
    await expect(mine.ack()).rejects.toMatchObject({ code: 'LOCK_NOT_HELD' });
    expect(mine.done).toBe(true);
    await Promise.all([wa.close(), wb.close(), producer.close()]);
    expect(await keysUnder(admin, 'lostack/')).toEqual([]);
  });

  it('add, ack, retryDead guarded by a deposed leader write nothing; a failed ack guard keeps the claim', async () => {
    const admin = etcd().client();
    const s1 = await Session.create(admin, { ttl: 10 });
    const e1 = new Election(s1, 'wq-guard-leader');
    await e1.campaign('old');
    const guard = e1.ifLeader();
    await using worker = await Session.create(etcd().client(), { ttl: 10 });
    const wq = new WorkQueue(worker, 'wqg', { maxAttempts: 1 });
    const producer = new WorkQueue(etcd().client(), 'wqg');
    const id = await producer.add('first', { guard });
    const job = await wq.claim();
    await admin.leaseClient.leaseRevoke({ ID: s1.leaseId }); // deposed
    await using s2 = await Session.create(admin, { ttl: 10 });
    await new Election(s2, 'wq-guard-leader').campaign('new');
    await expect(producer.add('stale', { guard })).rejects.toMatchObject({ code: 'NOT_LEADER' });
    await expect(job.ack({ guard })).rejects.toMatchObject({ code: 'NOT_LEADER' });
    expect(job.done).toBe(false);
    expect(await producer.stats()).toMatchObject({ jobs: 1, claimed: 1 });
    await job.deadLetter(); // unguarded: the claim is still ours
    await expect(producer.retryDead(id, { guard })).rejects.toMatchObject({ code: 'NOT_LEADER' });
    expect(await producer.deadLetters()).toHaveLength(1);
    expect(await producer.retryDead(id)).toBe(true);
    await (await wq.claim()).ack();
    await Promise.all([wq.close(), producer.close()]);
    expect(await keysUnder(admin, 'wqg/')).toEqual([]);
  });

  it('producers need no session; only claim does; calls on a closed session reject with SESSION_EXPIRED', async () => {
    const client = etcd().client();
    const producer = new WorkQueue(client, 'nosess', { maxAttempts: 1 });
    expect(producer.session).toBeUndefined();
    const id = await producer.add('job');
    expect(await producer.stats()).toEqual({ jobs: 1, claimed: 0, dead: 0, waiting: 0 });
    expect(await producer.deadLetters()).toEqual([]);
    expect(await producer.retryDead(id)).toBe(false);
    await expect(producer.claim()).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', argument: 'session' });
    const closed = await Session.create(client, { ttl: 10 });
    const old = new WorkQueue(closed, 'nosess');
    await closed.close();
    await expect(old.add('late')).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
    await expect(old.stats()).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
    await expect(old.deadLetters()).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
    await expect(old.retryDead(id)).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
    await expect(old.claim()).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
    expect(await producer.stats()).toMatchObject({ jobs: 1 });
    await using worker = await Session.create(client, { ttl: 10 });
    await using wq = new WorkQueue(worker, 'nosess');
    await (await wq.claim()).ack();
    await Promise.all([producer.close(), wq.close()]);
    expect(await keysUnder(client, 'nosess/')).toEqual([]);
  });
});
