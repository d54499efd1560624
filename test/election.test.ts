import { describe, expect, it } from 'vitest';
import { Election, getLeader, isRecipeError, observeLeader, Session, type LeaderState } from '../src/index.js';
import { keysUnder, rejectsBadNames, rejectsInvalid, stillPending, useCluster, waitForKey, within } from './helpers.js';

/** Collects states from an observer until `until` matches one (bounded). */
async function collect(
  iter: AsyncIterator<LeaderState>,
  until: (s: LeaderState) => boolean,
  max = 50,
  ms = 15_000,
): Promise<LeaderState[]> {
  const out: LeaderState[] = [];
  await within(
    ms,
    (async () => {
      while (out.length < max) {
        const r = await iter.next();
        if (r.done) break;
        out.push(r.value);
        if (until(r.value)) break;
      }
    })(),
    'observer',
  );
  return out;
}

const describeState = (s: LeaderState) => (s.leader ? s.leader.value : '(none)');

describe('Election', () => {
  const etcd = useCluster();

  it("uses Go's layout: <name>/<lease hex>, value = proposal, attached to the lease; leader = oldest key", async () => {
    const client = etcd().client();
    await using a = await Session.create(client, { ttl: 10 });
    await using b = await Session.create(etcd().client(), { ttl: 10 });
    const ea = new Election(a, 'layout/e');
    const eb = new Election(b, 'layout/e');
    expect(ea.key).toBe(`layout/e/${BigInt(a.leaseId).toString(16)}`);
    expect(new Election(a, 'x/').key).toBe(`x//${a.leaseHex}`);
    expect(await ea.leader()).toBeUndefined();
    expect(await getLeader(client, 'layout/e')).toBeUndefined();
    expect(ea.isLeader).toBe(false);
    expect(ea.revision).toBeUndefined();

    await ea.campaign('node-a');
    expect(ea.isLeader).toBe(true);
    const kvs = (await client.getAll().prefix('layout/e/').exec()).kvs;
    expect(kvs).toHaveLength(1);
    expect(kvs[0]!.key.toString()).toBe(ea.key);
    expect(kvs[0]!.value.toString()).toBe('node-a');
    expect(kvs[0]!.lease).toBe(a.leaseId);
    expect(ea.revision).toBe(BigInt(kvs[0]!.create_revision));

    const campaigning = eb.campaign(Buffer.from('node-b'));
    await waitForKey(client, eb.key);
    expect(await stillPending(campaigning, 200)).toBe(true);
    const leader = await eb.leader();
    expect(leader).toMatchObject({ key: ea.key, value: 'node-a', revision: ea.revision, lease: a.leaseId });
    await ea.resign();
    expect(ea.isLeader).toBe(false);
    await within(10_000, campaigning, 'second campaign');
    expect(await getLeader(client, 'layout/e')).toMatchObject({ key: eb.key, value: 'node-b', revision: eb.revision });
    expect(eb.revision! > leader!.revision).toBe(true);
    await eb.resign();
    expect(await keysUnder(client, 'layout/')).toEqual([]);
  });

  it('elects exactly one leader at a time among many candidates on separate connections', async () => {
    const admin = etcd().client();
    await admin.put('one/counter').value('0');
    const candidates = 8;
    const terms = 5;
    let leaders = 0;
    let maxLeaders = 0;
    const revisions: bigint[] = [];
    await within(
      60_000,
      Promise.all(
        Array.from({ length: candidates }, async (_, id) => {
          const client = etcd().client();
          await using session = await Session.create(client, { ttl: 10 });
          const e = new Election(session, 'one/e');
          for (let t = 0; t < terms; t++) {
            await e.campaign(`candidate-${id}`);
            leaders++;
            maxLeaders = Math.max(maxLeaders, leaders);
            revisions.push(e.revision!);
            expect((await e.leader())?.key).toBe(e.key);
            // A read-modify-write that loses updates unless leaders never overlap, fenced by leadership.
            const n = Number(await client.get('one/counter').string());
            await new Promise((r) => setImmediate(r));
            expect(
              (
                await e
                  .ifLeader()
                  .then(client.put('one/counter').value(String(n + 1)))
                  .commit()
              ).succeeded,
            ).toBe(true);
            leaders--;
            await e.resign();
          }
        }),
      ),
      'candidates',
    );
    expect(maxLeaders).toBe(1);
    expect(await admin.get('one/counter').string()).toBe(String(candidates * terms));
    for (let i = 1; i < revisions.length; i++) expect(revisions[i]! > revisions[i - 1]!).toBe(true);
    expect(await keysUnder(admin, 'one/e/')).toEqual([]);
  });

  it('elects candidates in the order they campaigned (FIFO succession)', async () => {
    const client = etcd().client();
    await using first = await Session.create(client, { ttl: 10 });
    const leader = new Election(first, 'fifo/e');
    await leader.campaign('0');
    const order: number[] = [];
    const sessions: Session[] = [];
    const done: Promise<void>[] = [];
    for (let i = 1; i <= 5; i++) {
      const s = await Session.create(etcd().client(), { ttl: 10 });
      sessions.push(s);
      const e = new Election(s, 'fifo/e');
      done.push(
        e.campaign(String(i)).then(async () => {
          order.push(i);
          expect((await e.leader())?.value).toBe(String(i));
          await e.resign();
        }),
      );
      await waitForKey(client, e.key);
    }
    await leader.resign();
    await within(20_000, Promise.all(done), 'successors');
    expect(order).toEqual([1, 2, 3, 4, 5]);
    await Promise.all(sessions.map((s) => s.close()));
  });

  it("proclaim updates the leader's value; a non-leader's proclaim gets NOT_LEADER and changes nothing", async () => {
    const client = etcd().client();
    await using a = await Session.create(client, { ttl: 10 });
    await using b = await Session.create(etcd().client(), { ttl: 10 });
    const ea = new Election(a, 'proclaim/e');
    const eb = new Election(b, 'proclaim/e');
    await expect(ea.proclaim('too early')).rejects.toMatchObject({ code: 'NOT_LEADER' });
    expect(() => ea.ifLeader()).toThrow(expect.objectContaining({ code: 'NOT_LEADER' }));
    await ea.campaign('v1');
    const rev = ea.revision!;
    await ea.proclaim('v2');
    expect(await ea.leader()).toMatchObject({ key: ea.key, value: 'v2', revision: rev });

    const queued = eb.campaign('b');
    await waitForKey(client, eb.key);
    await expect(eb.proclaim('usurper')).rejects.toMatchObject({ code: 'NOT_LEADER' });
    expect(() => eb.ifLeader()).toThrow(expect.objectContaining({ code: 'NOT_LEADER' }));
    expect(await client.get(eb.key).string()).toBe('b');
    expect((await ea.leader())?.value).toBe('v2');

    // Re-campaigning while leader keeps the key and its place and proclaims the new value (as Go).
    await ea.campaign('v3');
    expect(ea.revision).toBe(rev);
    expect((await ea.leader())?.value).toBe('v3');

    await ea.resign();
    await expect(ea.proclaim('after resign')).rejects.toMatchObject({ code: 'NOT_LEADER' });
    await within(10_000, queued);
    expect(await client.get(ea.key).string()).toBeNull();
    expect((await eb.leader())?.value).toBe('b');
    await eb.resign();
  });

  it("a campaign adopts the session's existing key with its place, and proclaims the new value", async () => {
    const client = etcd().client();
    const old = await Session.create(client, { ttl: 10 });
    await using other = await Session.create(etcd().client(), { ttl: 10 });
    const before = new Election(old, 'adopt/e');
    await before.campaign('process-1');
    const rev = before.revision!;
    const behind = new Election(other, 'adopt/e');
    const queued = behind.campaign('other');
    await waitForKey(client, behind.key);
    // A restart that resumes the lease (Go's WithLease): the new process campaigns on the same key.
    old.orphan();
    await using resumed = await Session.create(etcd().client(), { leaseId: old.leaseId, ttl: 10 });
    const after = new Election(resumed, 'adopt/e');
    await within(5000, after.campaign('process-2'), 'resumed campaign');
    expect(after.revision).toBe(rev);
    expect(await after.leader()).toMatchObject({ key: before.key, value: 'process-2', revision: rev });
    expect(await stillPending(queued, 100)).toBe(true);
    await after.resign();
    await within(10_000, queued);
    await behind.resign();
  });

  it('two Election objects on one session and name never both lead', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const e1 = new Election(session, 'local/e');
    const e2 = new Election(session, 'local/e');
    await e1.campaign('one');
    const second = e2.campaign('two');
    expect(await stillPending(second, 200)).toBe(true);
    expect(e2.isLeader).toBe(false);
    expect((await e1.leader())?.value).toBe('one');
    const rev1 = e1.revision!;
    await e1.resign();
    await within(5000, second);
    expect(e2.revision! > rev1).toBe(true);
    expect((await e2.leader())?.value).toBe('two');
    await expect(e2.campaign('again', {})).resolves.toBeUndefined(); // already leader: a proclaim
    await expect(Promise.all([e2.resign(), e2.resign()])).resolves.toBeDefined();
    expect(await keysUnder(client, 'local/')).toEqual([]);
  });

  it('a term lost without resign lets the next local candidate lead at once; a late resign spares it', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const e1 = new Election(session, 'local-lost/e');
    const e2 = new Election(session, 'local-lost/e');
    await e1.campaign('one');
    const lost = new Promise<unknown>((resolve) => e1.once('lost', resolve));
    const second = e2.campaign('two');
    expect(await stillPending(second, 200)).toBe(true);
    const rev1 = e1.revision!;
    await client.delete().key(e1.key);
    expect(await within(5000, lost, 'lost event')).toMatchObject({ code: 'NOT_LEADER' });
    await within(5000, second, 'the next local candidate, without a resign');
    expect(e2.revision! > rev1).toBe(true);
    expect(e1.isLeader).toBe(false);
    await e1.resign(); // guarded by its own term's revision: the same key name, re-created by e2, stays
    expect(await keysUnder(client, 'local-lost/')).toEqual([e2.key]);
    expect(e2.isLeader).toBe(true);
    expect((await e2.leader())?.value).toBe('two');
    await e2.resign();
    expect(await keysUnder(client, 'local-lost/')).toEqual([]);
  });

  it('an aborted or resigned campaign rejects and leaves no key; an aborted signal writes nothing', async () => {
    const client = etcd().client();
    await using a = await Session.create(client, { ttl: 10 });
    await using b = await Session.create(etcd().client(), { ttl: 10 });
    const leader = new Election(a, 'abort/e');
    await leader.campaign('a');
    const e = new Election(b, 'abort/e');
    const controller = new AbortController();
    const pending = e.campaign('b', { signal: controller.signal });
    await waitForKey(client, e.key);
    const reason = new Error('caller gave up');
    controller.abort(reason);
    await expect(pending).rejects.toBe(reason);
    expect(await keysUnder(client, 'abort/e/')).toEqual([leader.key]);
    await expect(e.campaign('b', { signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
    expect(await keysUnder(client, 'abort/e/')).toEqual([leader.key]);
    const timedOut = await e.campaign('b', { signal: AbortSignal.timeout(150) }).catch((err: unknown) => err);
    expect((timedOut as Error).name).toBe('TimeoutError');
    expect(await keysUnder(client, 'abort/e/')).toEqual([leader.key]);

    // resign() withdraws a pending campaign of the same object.
    const withdrawn = e.campaign('b');
    await waitForKey(client, e.key);
    await e.resign();
    await expect(withdrawn).rejects.toMatchObject({ code: 'NOT_LEADER' });
    expect(await keysUnder(client, 'abort/e/')).toEqual([leader.key]);
  }, 30_000);

  it("the leader's revoked lease aborts its signal at once, emits lost, and elects the next candidate", async () => {
    const client = etcd().client();
    const a = await Session.create(client, { ttl: 30 });
    await using b = await Session.create(etcd().client(), { ttl: 10 });
    const ea = new Election(a, 'revoke/e');
    const eb = new Election(b, 'revoke/e');
    await ea.campaign('a');
    const lost = new Promise<unknown>((resolve) => ea.once('lost', resolve));
    const signal = ea.signal!;
    const oldRev = ea.revision!;
    const next = eb.campaign('b');
    await waitForKey(client, eb.key);
    const t0 = performance.now();
    await client.leaseClient.leaseRevoke({ ID: a.leaseId });
    // The key watch notices the deletion at once; the session would take up to TTL/3 (10 s here).
    const reason = await within(5000, lost, 'lost event');
    expect(performance.now() - t0).toBeLessThan(3000);
    expect(signal.aborted).toBe(true);
    expect(isRecipeError(reason, 'NOT_LEADER') || isRecipeError(reason, 'SESSION_EXPIRED')).toBe(true);
    expect(ea.isLeader).toBe(false);
    await within(10_000, next, 'next candidate');
    expect(eb.revision! > oldRev).toBe(true);
    // The old leader's fenced write cannot land.
    const stale = await client
      .if(ea.key, 'Create', '==', oldRev.toString())
      .then(client.put('revoke/data').value('stale'))
      .commit();
    expect(stale.succeeded).toBe(false);
    expect((await eb.ifLeader().then(client.put('revoke/data').value('fresh')).commit()).succeeded).toBe(true);
    await expect(ea.proclaim('x')).rejects.toMatchObject({ code: 'NOT_LEADER' });
    await ea.resign(); // harmless after loss
    await eb.resign();
    await a.close();
  });

  it("a deleted leader key (from outside) aborts the leader's signal with NOT_LEADER", async () => {
    const client = etcd().client();
    await using a = await Session.create(client, { ttl: 10 });
    const e = new Election(a, 'outside/e');
    await e.campaign('a');
    const signal = e.signal!;
    const aborted = new Promise<unknown>((resolve) =>
      signal.addEventListener('abort', () => resolve(signal.reason), { once: true }),
    );
    await client.delete().key(e.key);
    expect(await within(5000, aborted, 'leader signal')).toMatchObject({ code: 'NOT_LEADER' });
    expect(a.expired).toBe(false);
    expect(e.isLeader).toBe(false);
    // The session is fine: a new campaign starts a new term. Its key is watched from the term's
    // start, so a deletion before anyone looked at the signal is still reported.
    await e.campaign('a2');
    await client.put('outside/other').value('a write in between');
    await client.delete().key(e.key);
    await client.put('outside/other').value('another');
    const late = e.signal!;
    await within(
      5000,
      new Promise((resolve) => {
        if (late.aborted) resolve(undefined);
        late.addEventListener('abort', resolve, { once: true });
      }),
      'signal of a term whose key was deleted before the first look',
    );
    expect(late.reason).toMatchObject({ code: 'NOT_LEADER' });
    await e.resign();
  });

  it('a candidate whose session expires in line gets SESSION_EXPIRED, never a phantom win (etcd#11051)', async () => {
    const client = etcd().client();
    await using a = await Session.create(client, { ttl: 10 });
    const b = await Session.create(etcd().client(), { ttl: 3 }); // notices the revoke at its next keepalive (TTL/3)
    const leader = new Election(a, 'phantom/e');
    await leader.campaign('a');
    const e = new Election(b, 'phantom/e');
    const pending = e.campaign('b');
    await waitForKey(client, e.key);
    await client.leaseClient.leaseRevoke({ ID: b.leaseId });
    await expect(within(10_000, pending)).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
    expect(e.isLeader).toBe(false);
    await leader.resign();
  });

  it('a campaign on a lease etcd no longer has rejects with SESSION_EXPIRED and marks the session lost', async () => {
    const client = etcd().client();
    const s = await Session.create(client, { ttl: 30 });
    await client.leaseClient.leaseRevoke({ ID: s.leaseId }); // the session notices only at its next keepalive
    await expect(new Election(s, 'gone/e').campaign('x')).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
    expect(s.expired).toBe(true);
    expect(await keysUnder(client, 'gone/')).toEqual([]);
  });

  it('observe reports every change in order, including "no leader", and ends when its signal aborts', async () => {
    const client = etcd().client();
    await using a = await Session.create(etcd().client(), { ttl: 10 });
    await using b = await Session.create(etcd().client(), { ttl: 10 });
    const ea = new Election(a, 'observe/e');
    const eb = new Election(b, 'observe/e');
    const controller = new AbortController();
    const observer = observeLeader(client, 'observe/e', { signal: controller.signal });
    const it0 = observer[Symbol.asyncIterator]();
    const states: LeaderState[] = [];
    states.push(...(await collect(it0, () => true))); // the current state: nobody
    await ea.campaign('a1');
    states.push(...(await collect(it0, (s) => s.leader?.value === 'a1')));
    await ea.proclaim('a2');
    states.push(...(await collect(it0, (s) => s.leader?.value === 'a2')));
    const queued = eb.campaign('b1');
    await waitForKey(client, eb.key); // a candidate behind the leader is not a change
    await ea.resign();
    await queued;
    const bRev = eb.revision!;
    states.push(...(await collect(it0, (s) => s.leader?.value === 'b1')));
    await eb.resign();
    states.push(...(await collect(it0, (s) => !s.leader)));
    await ea.campaign('a3');
    states.push(...(await collect(it0, (s) => s.leader?.value === 'a3')));

    expect(states.map(describeState)).toEqual(['(none)', 'a1', 'a2', 'b1', '(none)', 'a3']);
    for (let i = 1; i < states.length; i++) expect(states[i]!.revision > states[i - 1]!.revision).toBe(true);
    expect(states[1]!.leader).toMatchObject({ key: ea.key, lease: a.leaseId });
    expect(states[3]!.leader).toMatchObject({ key: eb.key, revision: bRev });
    expect(states[5]!.leader!.revision).toBe(ea.revision);
    expect(observer.current).toBe(states[5]);

    // Aborting the signal ends the iteration normally.
    const pending = it0.next();
    controller.abort(new Error('done observing'));
    await expect(within(2000, pending)).resolves.toEqual({ value: undefined, done: true });
    await expect(it0.next()).resolves.toMatchObject({ done: true });
    await ea.resign();
  });

  it('Election.observe: break closes the watch; a slow consumer gets the latest state, bounded memory', async () => {
    const client = etcd().client();
    await using a = await Session.create(client, { ttl: 10 });
    const e = new Election(a, 'slow/e');
    await e.campaign('v0');
    for await (const state of e.observe()) {
      expect(state.leader?.value).toBe('v0');
      break; // return(): the watch is closed
    }
    // buffer 1: only the latest state survives while the consumer is away.
    const latestOnly = e.observe({ buffer: 1 });
    const bounded = e.observe({ buffer: 4 });
    expect((await latestOnly.next()).value?.leader?.value).toBe('v0');
    expect((await bounded.next()).value?.leader?.value).toBe('v0');
    for (let i = 1; i <= 30; i++) await e.proclaim(`v${i}`);
    const lastRev = (await e.leader())!.modRevision;
    const seen = async (o: typeof latestOnly) => {
      for (let i = 0; i < 100 && o.current?.leader?.modRevision !== lastRev; i++)
        await new Promise((r) => setTimeout(r, 20));
      expect(o.current?.leader?.value).toBe('v30');
    };
    await seen(latestOnly);
    await seen(bounded);
    const one = await latestOnly.next();
    expect(one.value?.leader?.value).toBe('v30');
    expect(await stillPending(latestOnly.next(), 150)).toBe(true);
    const four: string[] = [];
    for (let i = 0; i < 4; i++) four.push((await bounded.next()).value!.leader!.value);
    expect(four).toEqual(['v27', 'v28', 'v29', 'v30']);
    await latestOnly.return();
    await bounded.return();
    await e.resign();
  });

  it('works inside an etcd3 namespace: keys carry the prefix in etcd, not in what we report', async () => {
    const root = etcd().client();
    const ns = root.namespace('tenant-1/');
    await using session = await Session.create(ns, { ttl: 10 });
    const e = new Election(session, 'ns/e');
    const observer = e.observe();
    expect((await observer.next()).value).toMatchObject({ leader: undefined });
    await e.campaign('inside');
    expect(await keysUnder(root, 'tenant-1/ns/e/')).toEqual([`tenant-1/${e.key}`]);
    expect(await e.leader()).toMatchObject({ key: e.key, value: 'inside' });
    expect((await within(5000, observer.next())).value).toMatchObject({ leader: { key: e.key, value: 'inside' } });
    expect((await e.ifLeader().then(ns.put('data').value('fenced')).commit()).succeeded).toBe(true);
    expect(await root.get('tenant-1/data').string()).toBe('fenced');
    await e.resign();
    expect((await within(5000, observer.next())).value).toMatchObject({ leader: undefined });
    await observer.return();
  });

  it('rejects bad input with INVALID_ARGUMENT before writing anything', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const before = await keysUnder(client);
    const bad = rejectsInvalid;
    await rejectsBadNames((name) => new Election(session, name));
    await bad(() => new Election({} as never, 'x'));
    await bad(() => new Election(null as never, 'x'));
    const e = new Election(session, 'bad/e');
    await bad(() => e.campaign(undefined as never));
    await bad(() => e.campaign(42 as never));
    await bad(() => e.campaign('v', null as never));
    await bad(() => e.campaign('v', { signal: 'soon' as never }));
    await bad(() => e.proclaim({} as never));
    await bad(() => e.leader({ signal: 1 as never }));
    await bad(() => e.observe({ buffer: 0 }));
    await bad(() => e.observe({ buffer: 1.5 }));
    await bad(() => e.observe('x' as never));
    await bad(() => getLeader({} as never, 'x'));
    await bad(() => observeLeader(client, ''));
    expect(await keysUnder(client)).toEqual(before);
    expect(e.isLeader).toBe(false);
  });
});
