import type { Namespace } from 'etcd3';
import { describe, expect, it } from 'vitest';
import {
  discoverRecipes,
  Election,
  formatStatus,
  inspectElection,
  inspectionJSON,
  inspectLock,
  inspectQueue,
  inspectRWMutex,
  inspectSemaphore,
  inspectServices,
  inspectStatus,
  inspectWorkQueue,
  watchStatus,
  isRecipeError,
  Mutex,
  PriorityQueue,
  Queue,
  RWMutex,
  Semaphore,
  ServiceRegistry,
  Session,
  WorkQueue,
} from '../src/index.js';
import { requestCounts, requestsBetween } from '../src/testing/index.js';
import { etcdctl } from './fixtures/etcdctl.js';
import { stillPending, useCluster, waitForKey, waitForKeyCount, waitForPrefixEmpty, within } from './helpers.js';

/** What etcd holds under `prefix`, oldest create revision first, read with etcd3's own API (not ours). */
async function heldByEtcd(client: Namespace, prefix: string) {
  const res = await client.getAll().prefix(prefix).sort('Create', 'Ascend').exec();
  return res.kvs.map((kv) => ({
    key: kv.key.toString(),
    value: kv.value.toString(),
    lease: kv.lease,
    createRevision: BigInt(kv.create_revision),
  }));
}

describe('inspection', () => {
  const etcd = useCluster();

  it('a lock shared by an etcdctl lock holder and our Mutex waiters', async () => {
    const cluster = etcd();
    const client = cluster.client();
    const ctl = etcdctl(cluster.endpoints[0]!, 'lock', ['--ttl', '60', 'insp/shared']);
    try {
      const [ctlKey] = await ctl.waitLines(1);
      expect(ctlKey).toMatch(/^insp\/shared\/[0-9a-f]+$/);
      await using s1 = await Session.create(client, { ttl: 30 });
      await using s2 = await Session.create(client, { ttl: 40 });
      const a = new Mutex(s1, 'insp/shared');
      const b = new Mutex(s2, 'insp/shared');
      const aLocking = a.lock();
      aLocking.catch(() => undefined); // awaited below; a failed assertion must not leave it unhandled
      await waitForKey(client, a.key);
      const bLocking = b.lock();
      bLocking.catch(() => undefined);
      await waitForKey(client, b.key);

      const seen = await inspectLock(client, 'insp/shared');
      const held = await heldByEtcd(client, 'insp/shared/');
      expect(held.map((h) => h.key)).toEqual([ctlKey, a.key, b.key]);
      expect(seen.holders.map((k) => k.key)).toEqual([ctlKey]);
      expect(seen.waiters.map((k) => k.key)).toEqual([a.key, b.key]);
      expect(seen.total).toBe(3);
      expect(seen.truncated).toBe(false);
      expect(seen.revision >= held[2]!.createRevision).toBe(true);
      for (const [i, k] of [...seen.holders, ...seen.waiters].entries()) {
        expect(k.lease).toBe(held[i]!.lease);
        expect(k.createRevision).toBe(held[i]!.createRevision);
        // Go's layout: the key ends with its lease's hex.
        expect(k.key.endsWith(`/${k.leaseHex}`)).toBe(true);
        expect(k.leaseHex).toBe(BigInt(k.lease).toString(16));
      }
      // TTLs: etcdctl's session is 60 s, ours 30 s and 40 s.
      expect(seen.holders[0]!.leaseTtl).toBeGreaterThan(40);
      expect(seen.holders[0]!.leaseTtl).toBeLessThanOrEqual(60);
      expect(seen.waiters[0]!.leaseTtl).toBeGreaterThan(10);
      expect(seen.waiters[0]!.leaseTtl).toBeLessThanOrEqual(30);
      expect(seen.waiters[1]!.leaseTtl).toBeLessThanOrEqual(40);
      expect(seen.waiters[0]!.lease).toBe(s1.leaseId);
      expect(await stillPending(aLocking, 100)).toBe(true);

      // etcdctl unlocks: our first waiter holds and inspection follows.
      ctl.stop();
      await within(15_000, aLocking, 'first waiter after etcdctl unlocked');
      const after = await inspectLock(client, 'insp/shared');
      expect(after.holders.map((k) => k.key)).toEqual([a.key]);
      expect(after.holders[0]!.createRevision).toBe(a.fencingToken);
      expect(after.waiters.map((k) => k.key)).toEqual([b.key]);
      await a.unlock();
      await within(15_000, bLocking, 'second waiter');
      await b.unlock();
      expect(await inspectLock(client, 'insp/shared')).toMatchObject({ holders: [], waiters: [], total: 0 });
    } finally {
      ctl.stop();
    }
  });

  it('an election shared by etcdctl elect and our candidates', async () => {
    const cluster = etcd();
    const client = cluster.client();
    const ctl = etcdctl(cluster.endpoints[0]!, 'elect', ['insp/election', 'ctl-value']);
    try {
      const [ctlKey, ctlValue] = await ctl.waitLines(2);
      expect(ctlValue).toBe('ctl-value');
      await using s1 = await Session.create(client, { ttl: 30 });
      await using s2 = await Session.create(client, { ttl: 30 });
      const a = new Election(s1, 'insp/election');
      const b = new Election(s2, 'insp/election');
      const aCampaign = a.campaign('node-a');
      aCampaign.catch(() => undefined);
      await waitForKey(client, a.key);
      const bCampaign = b.campaign('node-b');
      bCampaign.catch(() => undefined);
      await waitForKey(client, b.key);

      const seen = await inspectElection(client, 'insp/election');
      const held = await heldByEtcd(client, 'insp/election/');
      expect(seen.leader).toMatchObject({
        key: ctlKey,
        value: 'ctl-value',
        lease: held[0]!.lease,
        createRevision: held[0]!.createRevision,
      });
      expect(seen.candidates.map((c) => [c.key, c.value])).toEqual([
        [a.key, 'node-a'],
        [b.key, 'node-b'],
      ]);
      expect(seen.candidates.map((c) => c.lease)).toEqual([s1.leaseId, s2.leaseId]);
      expect(seen.leader!.leaseTtl).toBeGreaterThan(30);
      for (const c of seen.candidates) expect(c.leaseTtl).toBeLessThanOrEqual(30);

      ctl.stop();
      await within(15_000, aCampaign, 'our campaign after etcdctl resigned');
      const after = await inspectElection(client, 'insp/election');
      expect(after.leader).toMatchObject({ key: a.key, value: 'node-a', createRevision: a.revision });
      expect(after.candidates.map((c) => c.key)).toEqual([b.key]);
      await a.resign();
      await within(15_000, bCampaign, 'second campaign');
      await b.resign();
      expect((await inspectElection(client, 'insp/election')).leader).toBeUndefined();
    } finally {
      ctl.stop();
    }
  });

  it('a semaphore and a read-write lock: holders and the line behind them', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 30 });
    const sem = new Semaphore(session, 'insp/sem', 2);
    const p1 = await sem.acquire();
    const p2 = await sem.acquire();
    const ac = new AbortController();
    const p3 = sem.acquire({ signal: ac.signal });
    await waitForKeyCount(client, 'insp/sem/queue/', 3);
    const s = await inspectSemaphore(client, 'insp/sem');
    expect(s.permits).toBe(2);
    expect(s.holders.map((k) => k.key)).toEqual([p1.key, p2.key]);
    expect(s.waiters).toHaveLength(1);
    expect(s.waiters[0]!.lease).toBe(session.leaseId);
    expect((await heldByEtcd(client, 'insp/sem/queue/')).map((h) => h.key)).toEqual(
      [...s.holders, ...s.waiters].map((k) => k.key),
    );
    ac.abort();
    expect((await Promise.allSettled([p3]))[0]!.status).toBe('rejected');
    await p1.release();
    await p2.release();

    const rw = new RWMutex(session, 'insp/rw');
    const r1 = await rw.acquireRead();
    const wac = new AbortController();
    const w = rw.acquireWrite({ signal: wac.signal });
    await waitForKeyCount(client, 'insp/rw/write/', 1);
    const r2 = rw.acquireRead({ signal: wac.signal });
    await waitForKeyCount(client, 'insp/rw/read/', 2);
    const i = await inspectRWMutex(client, 'insp/rw');
    expect(i.holders.map((k) => [k.key, k.mode])).toEqual([[r1.key, 'read']]);
    expect(i.waiters.map((k) => k.mode)).toEqual(['write', 'read']);
    expect(i.total).toBe(3);
    wac.abort();
    expect((await Promise.allSettled([w, r2])).map((r) => r.status)).toEqual(['rejected', 'rejected']);
    await r1.release();
  });

  it('queues and priority queues: depth, head and its age', async () => {
    const client = etcd().client();
    const q = new Queue(client, 'insp/q');
    const k1 = await q.enqueue('first');
    await q.enqueue('second');
    await q.enqueue('third');
    const i = await inspectQueue(client, 'insp/q');
    expect(i).toMatchObject({ kind: 'queue', depth: 3, waitingConsumers: 0 });
    const raw = await client.get(k1).exec();
    expect(i.head).toMatchObject({
      key: k1,
      value: 'first',
      modRevision: BigInt(raw.kvs[0]!.mod_revision),
      priority: undefined,
    });
    expect(i.head!.ageRevisions).toBe(i.revision - i.head!.modRevision);
    expect(i.head!.ageRevisions >= 2n).toBe(true);
    expect(await q.dequeue()).toBe('first');
    expect((await inspectQueue(client, 'insp/q')).depth).toBe(2);
    await q.close();

    const pq = new PriorityQueue(client, 'insp/pq');
    await pq.enqueue('low', 9);
    const urgent = await pq.enqueue('urgent', 1);
    const p = await inspectQueue(client, 'insp/pq');
    expect(p).toMatchObject({ kind: 'priority-queue', depth: 2, head: { key: urgent, value: 'urgent', priority: 1 } });
    expect(await pq.dequeue()).toBe('urgent');
    await pq.close();
    expect((await inspectQueue(client, 'insp/empty')).head).toBeUndefined();
  });

  it('a work queue: pending, claimed (by which lease, attempts) and dead jobs', async () => {
    const client = etcd().client();
    await using producer = await Session.create(client, { ttl: 30 });
    await using worker = await Session.create(client, { ttl: 20 });
    const wq = new WorkQueue(producer, 'insp/wq');
    const mine = new WorkQueue(worker, 'insp/wq');
    const urgent = await wq.add('urgent', { priority: 1 });
    const retried = await wq.add('retried', { priority: 2 });
    const poison = await wq.add('poison', { priority: 3 });
    const plain = await wq.add('plain');
    const job = await mine.claim();
    expect(job.id).toBe(urgent);
    const r1 = await mine.claim();
    expect(r1.id).toBe(retried);
    await r1.release();
    const r2 = await mine.claim();
    expect(r2.id).toBe(retried);
    // Held, so the next claim skips it.
    const pz = await mine.claim();
    expect(pz.id).toBe(poison);
    await pz.deadLetter();
    await r2.release();

    const i = await inspectWorkQueue(client, 'insp/wq');
    expect(i.claimed.map((j) => [j.id, j.value, j.attempts, j.claim.lease])).toEqual([
      [urgent, 'urgent', 1, worker.leaseId],
    ]);
    expect(i.claimed[0]!.claim.createRevision).toBe(job.fencingToken);
    expect(i.claimed[0]!.claim.leaseTtl).toBeLessThanOrEqual(20);
    expect(i.pending.map((j) => [j.id, j.value, j.attempts, j.priority])).toEqual([
      [retried, 'retried', 2, 2],
      [plain, 'plain', 0, 100],
    ]);
    expect(i.dead.map((j) => [j.id, j.value])).toEqual([[poison, 'poison']]);
    expect(i.counts).toEqual({ jobs: 3, pending: 2, claimed: 1, dead: 1, waiting: 0 });
    expect(i.pending[0]!.ageRevisions).toBe(i.revision - i.pending[0]!.createRevision);
    await job.ack();
    expect((await inspectWorkQueue(client, 'insp/wq')).counts).toMatchObject({ jobs: 2, claimed: 0 });
    // Their spent receipts go now, not by an idle flush (a Txn 2 s later) inside a later test's count.
    await Promise.all([wq.close(), mine.close()]);
  });

  it('services: the instances, with their leases', async () => {
    const client = etcd().client();
    const a = await ServiceRegistry.register(client, {
      service: 'insp-login',
      id: 'a',
      address: '10.0.0.1:80',
      metadata: { zone: 'z1' },
      ttl: 15,
    });
    const b = await ServiceRegistry.register(client, {
      service: 'insp-login',
      id: 'b',
      address: '10.0.0.2:80',
      ttl: 15,
    });
    try {
      const i = await inspectServices(client, 'insp-login');
      expect(i.prefix).toBe('services/insp-login/');
      expect(i.instances.map((s) => [s.id, s.address, s.metadata])).toEqual([
        ['a', '10.0.0.1:80', { zone: 'z1' }],
        ['b', '10.0.0.2:80', {}],
      ]);
      const held = await heldByEtcd(client, 'services/insp-login/');
      expect(i.instances.map((s) => s.lease)).toEqual(held.map((h) => h.lease));
      for (const s of i.instances) expect(s.leaseTtl).toBeLessThanOrEqual(15);
    } finally {
      await a.deregister();
      await b.deregister();
    }
    expect((await inspectServices(client, 'insp-login')).instances).toEqual([]);
  });

  it('discovers recipes by their key layouts, formats status, and never writes', async () => {
    const cluster = etcd();
    const client = cluster.client();
    await using session = await Session.create(client, { ttl: 30 });
    const m = new Mutex(session, 'disc/lock');
    await m.lock();
    const e = new Election(session, 'disc/leader');
    await e.campaign('me');
    const sem = new Semaphore(session, 'disc/sem', 3);
    const permit = await sem.acquire();
    const rw = new RWMutex(session, 'disc/rw');
    const read = await rw.acquireRead();
    const q = new Queue(client, 'disc/q');
    await q.enqueue('x');
    const pq = new PriorityQueue(client, 'disc/pq');
    await pq.enqueue('y', 4);
    const wq = new WorkQueue(session, 'disc/wq');
    await wq.add('job');
    const reg = await ServiceRegistry.register(client, {
      service: 'api',
      id: 'i1',
      address: 'h:1',
      root: 'disc/services/',
      ttl: 30,
    });
    try {
      // The writes' spent receipts are deleted by a Txn of their own ~2 s later: let it happen before counting.
      const receipts = ['__disc/q/sent/', '__disc/pq/sent/', 'disc/wq/receipts/'];
      await Promise.all(receipts.map((p) => waitForPrefixEmpty(client, p)));
      const before = await requestCounts(cluster.members[0]!.clientUrl);
      const found = await discoverRecipes(client, 'disc/');
      expect(found).toEqual([
        { kind: 'lock', name: 'disc/lock' },
        { kind: 'rwmutex', name: 'disc/rw' },
        { kind: 'semaphore', name: 'disc/sem' },
        { kind: 'election', name: 'disc/leader' },
        { kind: 'queue', name: 'disc/q' },
        { kind: 'priority-queue', name: 'disc/pq' },
        { kind: 'work-queue', name: 'disc/wq' },
        { kind: 'service', name: 'api', root: 'disc/services/' },
      ]);
      // The whole keyspace finds them too.
      expect(
        (await discoverRecipes(client, '')).filter((r) => r.name.startsWith('disc/') || r.root === 'disc/services/'),
      ).toEqual(found);

      const status = await inspectStatus(client, 'disc/lock');
      expect(status.map((s) => s.kind)).toEqual(['lock']);
      const text = formatStatus(status);
      expect(text).toContain('lock disc/lock');
      expect(text).toContain(m.key);
      expect(text).toContain(session.leaseHex);
      const json = JSON.parse(formatStatus(status, { json: true })) as {
        kind: string;
        inspection: { holders: { key: string; createRevision: string }[] };
      }[];
      expect(json[0]!.inspection.holders[0]).toMatchObject({ key: m.key, createRevision: m.fencingToken!.toString() });
      for (const name of ['disc/leader', 'disc/sem', 'disc/rw', 'disc/q', 'disc/pq', 'disc/wq']) {
        const [one] = await inspectStatus(client, name);
        expect(formatStatus([one!])).toContain(name);
      }
      expect((await inspectStatus(client, 'api', { root: 'disc/services/' }))[0]).toMatchObject({ kind: 'service' });
      expect(await inspectStatus(client, 'disc/nothing')).toEqual([]);
      expect(inspectionJSON({ a: 1n })).toBe('{"a":"1"}');
      const after = await requestCounts(cluster.members[0]!.clientUrl);
      const d = requestsBetween(before, after);
      // Only ranges (and lease TTL lookups): nothing that writes. (Sessions' keepalives may tick meanwhile.)
      expect({
        put: d.put,
        txn: d.txn,
        deleteRange: d.deleteRange,
        grant: d.byMethod.get('LeaseGrant') ?? 0,
        revoke: d.byMethod.get('LeaseRevoke') ?? 0,
      }).toEqual({ put: 0, txn: 0, deleteRange: 0, grant: 0, revoke: 0 });
      expect(d.range).toBeGreaterThan(10);
      expect(d.byMethod.get('LeaseTimeToLive') ?? 0).toBeGreaterThan(0);
    } finally {
      await reg.deregister();
      await q.close();
      await pq.close();
      await read.release();
      await permit.release();
      await e.resign();
      await m.unlock();
    }
  });

  it('watchStatus yields the current status, then each change', async () => {
    const client = etcd().client();
    await using s1 = await Session.create(client, { ttl: 30 });
    await using s2 = await Session.create(client, { ttl: 30 });
    const a = new Mutex(s1, 'insp/watched');
    const b = new Mutex(s2, 'insp/watched');
    await a.lock();
    const ac = new AbortController();
    const updates = watchStatus(client, 'insp/watched', { signal: ac.signal, periodMs: 60_000 });
    const holders = async () => {
      const { value } = await within(10_000, updates.next(), 'a status update');
      const lock = value![0]!;
      if (lock.kind !== 'lock') throw new Error(`not a lock: ${lock.kind}`);
      return [lock.inspection.holders.map((k) => k.key), lock.inspection.waiters.map((k) => k.key)];
    };
    expect(await holders()).toEqual([[a.key], []]);
    const bLocking = b.lock();
    expect(await holders()).toEqual([[a.key], [b.key]]);
    await a.unlock();
    await bLocking;
    expect(await holders()).toEqual([[b.key], []]);
    ac.abort(new Error('done'));
    await expect(updates.next()).rejects.toThrow('done');
    await b.unlock();
  });

  it('rejects bad arguments before reading', async () => {
    const client = etcd().client();
    const bad = async (p: Promise<unknown>, argument: string) => {
      const err = await p.then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(isRecipeError(err) && err.code === 'INVALID_ARGUMENT' && (err as { argument?: string }).argument).toBe(
        argument,
      );
    };
    await bad(inspectLock(client, ''), 'name');
    await bad(inspectLock({} as never, 'x'), 'client');
    await bad(inspectSemaphore(client, 'x', { limit: 0 }), 'options.limit');
    await bad(inspectElection(client, 'x', { signal: 'no' as never }), 'options.signal');
    await bad(inspectQueue(client, 'x', { kind: 'stack' as never }), 'options.kind');
    await bad(inspectWorkQueue(client, ''), 'prefix');
    await bad(inspectServices(client, 'a/b'), 'service');
    await bad(inspectServices(client, 'a', { root: 'nope' }), 'options.root');
    await bad(inspectStatus(client, 'x', { kind: 'table' as never }), 'options.kind');
    const ac = new AbortController();
    ac.abort(new Error('stop'));
    await expect(inspectLock(client, 'x', { signal: ac.signal })).rejects.toThrow('stop');
  });
});
