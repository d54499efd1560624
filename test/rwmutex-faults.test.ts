import { describe, expect, it } from 'vitest';
import { RWMutex, Session } from '../src/index.js';
import { keysUnder, spawnWorker, stillPending, useCluster, waitForKeyCount, within } from './helpers.js';

describe('RWMutex when a holder process dies', () => {
  const etcd = useCluster();

  it("a SIGKILLed writer's lock passes to the waiting readers after its lease expires", async () => {
    const cluster = etcd();
    const client = cluster.client();
    const holder = spawnWorker('fixtures/semaphore-holder.ts', [cluster.endpoints.join(','), 'crash/rw', '2', 'write']);
    const [, holderKey] = (await holder.waitFor(/^acquired /)).split(' ');
    expect(holderKey).toMatch(/^crash\/rw\/write\/\d{19}$/);
    const sessions = await Promise.all([0, 1].map(() => Session.create(cluster.client(), { ttl: 10 })));
    const readers = sessions.map((s) => new RWMutex(s, 'crash/rw').acquireRead());
    await waitForKeyCount(client, 'crash/rw/read/', 2);
    expect(await stillPending(Promise.race(readers), 100)).toBe(true);
    holder.kill('SIGKILL');
    await holder.exited;
    const held = await within(15_000, Promise.all(readers), 'readers after the writer died');
    expect(await client.get(holderKey!).string()).toBeNull();
    await Promise.all(held.map((h) => h.release()));
    await Promise.all(sessions.map((s) => s.close()));
  });
});

describe('RWMutex in a 3-member cluster when the Raft leader is killed', () => {
  const etcd = useCluster({ members: 3 });

  it('keeps writers exclusive and readers consistent', async () => {
    const cluster = etcd();
    const admin = cluster.client();
    await admin.put('ha/rw-data').value('0');
    const workers = 5;
    const rounds = 8;
    let readers = 0;
    let writers = 0;
    let violations = 0;
    let writes = 0;
    let sections = 0;
    let killed: Promise<void> | undefined;
    await within(
      120_000,
      Promise.all(
        Array.from({ length: workers }, async (_, w) => {
          const client = cluster.client();
          await using session = await Session.create(client, { ttl: 10 });
          const rw = new RWMutex(session, 'ha/rw');
          for (let i = 0; i < rounds; i++) {
            const write = (w + i) % 2 === 0;
            await using held = write ? await rw.acquireWrite() : await rw.acquireRead();
            if (write) writers++;
            else readers++;
            if (writers > 1 || (writers > 0 && readers > 0)) violations++;
            const n = Number(await client.get('ha/rw-data').string());
            if (write) {
              expect(
                (
                  await held
                    .ifOwner()
                    .then(client.put('ha/rw-data').value(String(n + 1)))
                    .commit()
                ).succeeded,
              ).toBe(true);
              writes++;
            } else {
              expect(Number(await client.get('ha/rw-data').string())).toBe(n);
            }
            sections++;
            if (sections === 8) killed = cluster.leader().then((leader) => leader.kill());
            if (write) writers--;
            else readers--;
          }
        }),
      ),
      'contended run',
    );
    await killed;
    expect(violations).toBe(0);
    expect(sections).toBe(workers * rounds);
    expect(Number(await admin.get('ha/rw-data').string())).toBe(writes);
    expect(await keysUnder(admin, 'ha/rw/')).toEqual([]);
  });
});
