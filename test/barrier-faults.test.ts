import { describe, expect, it } from 'vitest';
import { Barrier, DoubleBarrier, Session } from '../src/index.js';
import { keysUnder, stillPending, useCluster, within } from './helpers.js';

describe('Barrier and DoubleBarrier in a 3-member cluster', () => {
  const etcd = useCluster({ members: 3 });

  it('DoubleBarrier rounds stay together while the Raft leader is killed', async () => {
    const cluster = etcd();
    const admin = cluster.client();
    const count = 3;
    const rounds = 6;
    const arrived = new Array<number>(rounds).fill(0);
    const leaving = new Array<number>(rounds).fill(0);
    const inside = new Array<number>(rounds).fill(0);
    const early: string[] = [];
    let killed: Promise<void> | undefined;
    await within(
      120_000,
      Promise.all(
        Array.from({ length: count }, async (_, id) => {
          const client = cluster.client();
          await using session = await Session.create(client, { ttl: 10 });
          const barrier = new DoubleBarrier(session, 'ha/db', count);
          for (let r = 0; r < rounds; r++) {
            arrived[r]!++;
            await barrier.enter();
            if (arrived[r] !== count) early.push(`round ${r}: participant ${id} entered with ${arrived[r]} arrived`);
            inside[r]!++;
            // Kill the leader once, while this round is inside and the others are about to leave.
            if (r === 2 && id === 0) killed = cluster.leader().then((leader) => leader.kill());
            await client.put(`ha/work/${r}/${id}`).value('done');
            leaving[r]!++;
            await barrier.leave();
            if (leaving[r] !== count) early.push(`round ${r}: participant ${id} left with ${leaving[r]} leaving`);
          }
        }),
      ),
      'rounds across a leader kill',
    );
    await killed;
    expect(early).toEqual([]);
    expect(inside).toEqual(new Array<number>(rounds).fill(count));
    expect(await keysUnder(admin, 'ha/db/')).toEqual([]);
    expect(await keysUnder(admin, 'ha/work/')).toHaveLength(rounds * count);
  });

  it('a Barrier waiter cut off while the barrier is released, held again and compacted still passes', async () => {
    const cluster = etcd();
    // Bring the killed member of the previous test back first.
    for (const m of cluster.members) if (m.state === 'stopped') await m.restart();
    await cluster.waitHealthy();
    const [m0, m1, m2] = cluster.members;
    const admin = cluster.client({ hosts: [m1!.endpoint, m2!.endpoint] });
    const gate = new Barrier(admin, 'cut/gate');
    expect(await gate.hold()).toBe(true);
    // The waiter talks to m0 only.
    const waiting = new Barrier(cluster.client({ hosts: [m0!.endpoint] }), 'cut/gate').wait();
    expect(await stillPending(waiting, 300)).toBe(true);
    await m0!.stop();
    // While the waiter is cut off: released, held again, and the history compacted away.
    expect(await gate.release()).toBe(true);
    expect(await gate.hold()).toBe(true);
    const rev = (await admin.put('cut/other').value('x').exec()).header.revision;
    await admin.kv.compact({ revision: rev, physical: true });
    await m0!.restart();
    await cluster.waitHealthy();
    await within(30_000, waiting, 'waiter after reconnecting past a compaction');
    expect(await gate.isHeld()).toBe(true);
    await gate.release();
    await admin.delete().key('cut/other');
  });
});
