import { describe, expect, it } from 'vitest';
import { Semaphore, Session } from '../src/index.js';
import { keysUnder, spawnWorker, stillPending, useCluster, waitForKeyCount, within } from './helpers.js';

describe('Semaphore when a holder process dies', () => {
  const etcd = useCluster();

  it("a SIGKILLed holder's permit passes to the first waiter after its lease expires", async () => {
    const cluster = etcd();
    const client = cluster.client();
    await using mine = await Session.create(client, { ttl: 10 });
    const other = await new Semaphore(mine, 'crash/sem', 2).acquire();
    const holder = spawnWorker('fixtures/semaphore-holder.ts', [cluster.endpoints.join(','), 'crash/sem', '2', '2']);
    const [, holderKey, holderToken] = (await holder.waitFor(/^acquired /)).split(' ');
    await using waiterSession = await Session.create(cluster.client(), { ttl: 10 });
    const waiting = new Semaphore(waiterSession, 'crash/sem', 2).acquire();
    await waitForKeyCount(client, 'crash/sem/queue/', 3);
    expect(await stillPending(waiting, 100)).toBe(true);
    holder.kill('SIGKILL');
    await holder.exited;
    // Nobody releases: only the expiry of the dead process's lease (2 s) frees the permit.
    const h = await within(15_000, waiting, 'acquire after the holder died');
    expect(await client.get(holderKey!).string()).toBeNull();
    expect(h.fencingToken > BigInt(holderToken!)).toBe(true);
    expect((await keysUnder(client, 'crash/sem/queue/')).sort()).toEqual([other.key, h.key].sort());
    await h.release();
    await other.release();
  });
});

describe('Semaphore in a 3-member cluster when the Raft leader is killed', () => {
  const etcd = useCluster({ members: 3 });

  it('never exceeds its permits and loses no permit or waiter', async () => {
    const cluster = etcd();
    const admin = cluster.client();
    const permits = 2;
    const workers = 6;
    const rounds = 8;
    let inside = 0;
    let maxInside = 0;
    let sections = 0;
    let killed: Promise<void> | undefined;
    await within(
      120_000,
      Promise.all(
        Array.from({ length: workers }, async () => {
          const client = cluster.client();
          await using session = await Session.create(client, { ttl: 10 });
          const sem = new Semaphore(session, 'ha/sem', permits);
          for (let i = 0; i < rounds; i++) {
            await using held = await sem.acquire();
            inside++;
            maxInside = Math.max(maxInside, inside);
            // A fenced write per section: it must land, the permit is ours.
            const res = await held
              .ifOwner()
              .then(client.put(`ha/work/${held.fencingToken}`).value('1'))
              .commit();
            expect(res.succeeded).toBe(true);
            sections++;
            // Kill the leader once, a little way into the run, while others are queued.
            if (sections === 8) killed = cluster.leader().then((leader) => leader.kill());
            inside--;
          }
        }),
      ),
      'contended run',
    );
    await killed;
    expect(maxInside).toBeLessThanOrEqual(permits);
    expect(sections).toBe(workers * rounds);
    expect(await keysUnder(admin, 'ha/work/')).toHaveLength(workers * rounds);
    expect(await keysUnder(admin, 'ha/sem/queue/')).toEqual([]);
  });
});
