import { format } from 'node:util';
import createDebug from 'debug';
import { describe, expect, it } from 'vitest';
import { Election, isRecipeError, observeLeader, Session, type LeaderState } from '../src/index.js';
import { etcdctl } from './fixtures/etcdctl.js';
import { keysUnder, stillPending, useCluster, waitForKey, waitForKeyCount, within } from './helpers.js';

describe("Election interoperates with etcdctl elect (Go's concurrency.Election)", () => {
  const etcd = useCluster();

  it("we observe etcdctl's leadership and value, queue behind it, and lead once it resigns", async () => {
    const cluster = etcd();
    const client = cluster.client();
    const ctl = etcdctl(cluster.endpoints[0]!, 'elect', ['interop/a', 'ctl-proposal']);
    try {
      const [ctlKey, ctlValue] = await ctl.waitLines(2);
      expect(ctlKey).toMatch(/^interop\/a\/[0-9a-f]+$/);
      expect(ctlValue).toBe('ctl-proposal');
      const observer = observeLeader(client, 'interop/a');
      const first = (await within(5000, observer.next())).value as LeaderState;
      expect(first.leader).toMatchObject({ key: ctlKey, value: 'ctl-proposal' });
      await using session = await Session.create(client, { ttl: 10 });
      const e = new Election(session, 'interop/a');
      expect(await e.leader()).toMatchObject({ key: ctlKey, value: 'ctl-proposal' });
      const campaigning = e.campaign('ours');
      await waitForKey(client, e.key);
      expect(await stillPending(campaigning, 300)).toBe(true);
      ctl.stop();
      await within(10_000, campaigning, 'our campaign after etcdctl resigned');
      expect(await ctl.exited).toBe(0);
      const next = (await within(5000, observer.next())).value as LeaderState;
      expect(next.leader).toMatchObject({ key: e.key, value: 'ours' });
      expect(next.leader!.revision > first.leader!.revision).toBe(true);
      await observer.return();
      await e.resign();
    } finally {
      ctl.stop();
    }
  });

  it('etcdctl elect -l observes our leadership and proclaims; etcdctl elect queues behind us', async () => {
    const cluster = etcd();
    const client = cluster.client();
    await using session = await Session.create(client, { ttl: 10 });
    const e = new Election(session, 'interop/b');
    await e.campaign('ours-1');
    const listener = etcdctl(cluster.endpoints[0]!, 'elect', ['-l', 'interop/b']);
    const candidate = etcdctl(cluster.endpoints[0]!, 'elect', ['interop/b', 'ctl']);
    try {
      expect(await listener.waitLines(2)).toEqual([e.key, 'ours-1']);
      await e.proclaim('ours-2');
      expect((await listener.waitLines(4)).slice(2)).toEqual([e.key, 'ours-2']);
      await waitForKeyCount(client, 'interop/b/', 2); // etcdctl's candidate is queued behind us
      expect(await stillPending(candidate.waitLines(1), 300)).toBe(true);
      await e.resign();
      const [ctlKey, ctlValue] = await candidate.waitLines(2);
      expect(ctlValue).toBe('ctl');
      expect(ctlKey).not.toBe(e.key);
      expect((await listener.waitLines(6)).slice(4)).toEqual([ctlKey, 'ctl']);
      expect(await e.leader()).toMatchObject({ key: ctlKey, value: 'ctl' });
    } finally {
      candidate.stop();
      listener.stop();
    }
    expect(await candidate.exited).toBe(0);
    await listener.exited;
    expect(await keysUnder(client, 'interop/b/')).toEqual([]);
  });
});

describe("Election when etcd is paused past the leader's TTL", () => {
  const etcd = useCluster();

  it("the leader's signal aborts in time (SESSION_EXPIRED) and the next candidate is elected", async () => {
    const cluster = etcd();
    const client = cluster.client();
    const a = await Session.create(client, { ttl: 2 });
    await using b = await Session.create(cluster.client(), { ttl: 30 });
    const ea = new Election(a, 'pause/e');
    const eb = new Election(b, 'pause/e');
    await ea.campaign('a');
    const oldRev = ea.revision!;
    const signal = ea.signal!;
    const next = eb.campaign('b');
    await waitForKey(client, eb.key);
    const lost = new Promise<unknown>((resolve) =>
      signal.addEventListener('abort', () => resolve(signal.reason), { once: true }),
    );
    cluster.members[0]!.pause();
    try {
      const reason = await within(a.ttl * 1000 + 2000, lost, 'leader signal while etcd is paused');
      expect(isRecipeError(reason, 'SESSION_EXPIRED')).toBe(true);
      expect(ea.isLeader).toBe(false);
    } finally {
      cluster.members[0]!.resume();
    }
    // etcd expires the leader's lease once it runs again; the queued candidate takes over.
    await within(15_000, next, 'next candidate');
    expect(eb.revision! > oldRev).toBe(true);
    const stale = await client
      .if(ea.key, 'Create', '==', oldRev.toString())
      .then(client.put('pause/data').value('stale'))
      .commit();
    expect(stale.succeeded).toBe(false);
    await expect(ea.proclaim('still here?')).rejects.toMatchObject({ code: 'NOT_LEADER' });
    await eb.resign();
    await a.close();
  }, 40_000);
});

describe('Election in a 3-member cluster', () => {
  const etcd = useCluster({ members: 3 });

  it('observe resumes after its member restarts and re-reads when the history it missed was compacted', async () => {
    const cluster = etcd();
    const [m0, m1, m2] = cluster.members;
    const admin = cluster.client({ hosts: [m0!.endpoint, m1!.endpoint] });
    const watcher = cluster.client({ hosts: [m2!.endpoint] });
    const captured: string[] = [];
    const previous = createDebug.disable();
    const originalLog = createDebug.log;
    createDebug.enable('etcd-recipes:election');
    createDebug.log = (...args: unknown[]) => {
      captured.push(format(...args));
    };
    try {
      await using s1 = await Session.create(admin, { ttl: 20 });
      await using s2 = await Session.create(cluster.client({ hosts: [m0!.endpoint, m1!.endpoint] }), { ttl: 20 });
      const e1 = new Election(s1, 'compact/e');
      const e2 = new Election(s2, 'compact/e');
      await e1.campaign('v1');
      const observer = observeLeader(watcher, 'compact/e');
      const states: LeaderState[] = [(await within(10_000, observer.next())).value as LeaderState];
      expect(states[0]!.leader?.value).toBe('v1');
      // The observer's member goes down; meanwhile the leader changes twice and history is compacted.
      await m2!.kill();
      await e1.proclaim('v2');
      const handover = e2.campaign('v3');
      await waitForKey(admin, e2.key);
      await e1.resign();
      await within(10_000, handover);
      const rev = BigInt((await admin.get('compact/e').exec()).header.revision);
      await admin.kv.compact({ revision: rev.toString(), physical: true });
      await m2!.restart();
      await cluster.waitHealthy();
      // The observer comes back with the current leader, in revision order.
      await within(
        20_000,
        (async () => {
          while (states[states.length - 1]!.leader?.value !== 'v3')
            states.push((await observer.next()).value as LeaderState);
        })(),
        'observer after restart',
      );
      for (let i = 1; i < states.length; i++) expect(states[i]!.revision > states[i - 1]!.revision).toBe(true);
      expect(states[states.length - 1]!.leader).toMatchObject({ key: e2.key, revision: e2.revision });
      // It did take the compaction path (not a replay of the missed events).
      expect(captured.some((l) => /observer: watch ended \(watch start revision compacted/.test(l))).toBe(true);
      // And it goes on live after that.
      await e2.proclaim('v4');
      expect((await within(5000, observer.next())).value).toMatchObject({ leader: { value: 'v4' } });
      await observer.return();
      await e2.resign();
    } finally {
      createDebug.log = originalLog;
      createDebug.enable(previous);
    }
  }, 60_000);

  it('keeps exactly one leader while the Raft leader member is killed during contention', async () => {
    const cluster = etcd();
    const admin = cluster.client();
    await admin.put('ha/counter').value('0');
    const candidates = 4;
    const terms = 10;
    let leaders = 0;
    let maxLeaders = 0;
    let elected = 0;
    let killed: Promise<void> | undefined;
    let victim: { restart(): Promise<void> } | undefined;
    await within(
      90_000,
      Promise.all(
        Array.from({ length: candidates }, async (_, id) => {
          const client = cluster.client();
          await using session = await Session.create(client, { ttl: 10 });
          const e = new Election(session, 'ha/e');
          for (let t = 0; t < terms; t++) {
            await e.campaign(`c${id}`);
            leaders++;
            maxLeaders = Math.max(maxLeaders, leaders);
            elected++;
            const n = Number(await client.get('ha/counter').string());
            expect(
              (
                await e
                  .ifLeader()
                  .then(client.put('ha/counter').value(String(n + 1)))
                  .commit()
              ).succeeded,
            ).toBe(true);
            // Kill the Raft leader once, a little way in, while the others are queued.
            if (elected === 8)
              killed = cluster.leader().then(async (m) => {
                victim = m;
                await m.kill();
              });
            leaders--;
            await e.resign();
          }
        }),
      ),
      'contended campaigns',
    );
    await killed;
    expect(victim).toBeDefined();
    expect(maxLeaders).toBe(1);
    expect(elected).toBe(candidates * terms);
    expect(await admin.get('ha/counter').string()).toBe(String(candidates * terms));
    expect(await keysUnder(admin, 'ha/e/')).toEqual([]);
    await victim!.restart();
    await cluster.waitHealthy();
  }, 120_000);
});
