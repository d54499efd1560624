import { describe, expect, it } from 'vitest';
import { Queue } from '../src/index.js';
import { keysUnder, spawnWorker, useCluster, within } from './helpers.js';
import { tally, waitForCount } from './queue-helpers.js';

describe('Queue in a 3-member cluster when the Raft leader is killed', () => {
  const etcd = useCluster({ members: 3 });

  it('delivers every item exactly once across the failover', async () => {
    const cluster = etcd();
    const perProducer = 80;
    const producers = Array.from({ length: 2 }, () => new Queue(cluster.client(), 'ha'));
    const consumers = Array.from({ length: 4 }, () => new Queue(cluster.client(), 'ha'));
    const total = producers.length * perProducer;
    const got: string[] = [];
    const stop = new AbortController();
    let killed: Promise<void> | undefined;
    const loops = consumers.map(async (q) => {
      for (;;) {
        const v = await q.dequeue({ signal: stop.signal }).catch((err: unknown) => {
          if (stop.signal.aborted) return undefined;
          throw err;
        });
        if (v === undefined) return;
        got.push(v);
        // Kill the leader once, a little way into the run, while items and waiters are in flight.
        if (got.length === 30) killed = cluster.leader().then((leader) => leader.kill());
        if (got.length === total) stop.abort();
      }
    });
    await Promise.all(
      producers.map(async (p, i) => {
        for (let j = 0; j < perProducer; j++) await p.enqueue(`p${i}-${j}`);
      }),
    );
    await within(60_000, Promise.all(loops), 'consumers');
    await killed;
    const counts = tally(got);
    expect(counts.size).toBe(total);
    expect([...counts.entries()].filter(([, n]) => n !== 1)).toEqual([]);
    const admin = cluster.client();
    expect(await keysUnder(admin, 'ha/')).toEqual([]);
    await Promise.all([...producers, ...consumers].map((c) => c.close()));
    expect(await keysUnder(admin, '__ha/')).toEqual([]);
  });
});

describe('Queue when a consumer process dies at the head of the line', () => {
  const etcd = useCluster();

  it("the next consumer takes over once the dead one's lease expires, and nothing is lost", async () => {
    const cluster = etcd();
    const client = cluster.client();
    const dead = spawnWorker('fixtures/queue-consumer.ts', [cluster.endpoints.join(','), 'orphan', '2']);
    try {
      await dead.waitFor('ready');
      await waitForCount(client, '__orphan/waiters/', 1); // it waits first in line
      await using live = new Queue(cluster.client(), 'orphan');
      const pending = live.dequeue();
      await waitForCount(client, '__orphan/waiters/', 2);
      dead.kill('SIGKILL');
      await dead.exited;
      await new Queue(client, 'orphan').enqueue('item');
      // Bounded by the dead consumer's lease (2 s TTL) plus etcd's expiry check.
      expect(await within(10_000, pending, 'delivery after the head died')).toBe('item');
      expect(dead.lines.filter((l) => l.startsWith('got'))).toEqual([]);
    } finally {
      dead.kill('SIGKILL');
    }
  });
});

describe('Queue when the revision its consumers watch from is compacted', () => {
  const etcd = useCluster();

  it('consumers re-read and go on after their watches are cancelled for compaction', async () => {
    const cluster = etcd();
    const admin = cluster.client();
    const consumers = Array.from({ length: 3 }, () => new Queue(cluster.client(), 'compact'));
    const pending = consumers.map((q) => q.dequeue());
    await waitForCount(admin, '__compact/waiters/', 3); // a head watching the items, two waiters behind it
    // Move the store on, compact everything up to now, and break every watch stream: the watches
    // resume from revisions that no longer exist, and etcd cancels them.
    for (let i = 0; i < 20; i++) await admin.put(`compact-filler/${i}`).value('x');
    const rev = (await admin.get('compact-filler/0').exec()).header.revision;
    await admin.kv.compact({ revision: rev, physical: true });
    await cluster.members[0]!.restart();
    await cluster.waitHealthy();
    const producer = new Queue(admin, 'compact');
    for (const v of ['a', 'b', 'c']) await producer.enqueue(v);
    expect((await within(20_000, Promise.all(pending), 'deliveries after compaction')).sort()).toEqual(['a', 'b', 'c']);
    await Promise.all([producer, ...consumers].map((c) => c.close()));
    expect(await keysUnder(admin, '__compact/')).toEqual([]);
  });
});
