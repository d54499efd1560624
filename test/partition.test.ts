import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Etcd3 } from 'etcd3';
// etcd3 tries hosts in a random order; its own switch makes it try the last one first.
import { ConnectionPool } from 'etcd3/lib/connection-pool.js';
import { Barrier, closeClient, createClient, Mutex, PrefixCache, Queue, Session } from '../src/index.js';
import type { EtcdMember } from '../src/testing/index.js';
import { useCluster, waitForKey, within } from './helpers.js';

/*
 * A member cut off from the others by a network partition stays up and keeps
 * answering its clients: a watch on it stays open and even answers progress
 * requests, at a revision that no longer moves. Streams opened by
 * createClient ask etcd to end them when their member has no leader, and then
 * re-open on another member (docs/faults.md, "Partitions").
 */

const clients: Etcd3[] = [];
function client(hosts: string[]): Etcd3 {
  const c = createClient({ hosts });
  clients.push(c);
  return c;
}
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => closeClient(c)));
});

/** Polls `check` (bounded): for states etcd tells of only when asked. */
async function eventually(what: string, timeoutMs: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Watch streams open on a member, from its own gauge. */
async function watchStreams(member: EtcdMember): Promise<number> {
  const text = await (await fetch(`${member.metricsUrl}/metrics`)).text();
  return Number(/^etcd_debugging_mvcc_watch_stream_total (\S+)$/m.exec(text)?.[1] ?? Number.NaN);
}

describe('a follower cut off from the others', () => {
  const etcd = useCluster({ members: 3, partitionable: true });
  beforeAll(() => {
    ConnectionPool.deterministicOrder = true;
  });
  afterAll(() => {
    ConnectionPool.deterministicOrder = false;
  });

  it('loses its leader while the others keep one, and catches up once healed', async () => {
    const cluster = etcd();
    const [cut] = await cluster.followers();
    const others = cluster.members.filter((m) => m !== cut);
    const writer = client(others.map((m) => m.endpoint));
    cluster.partition(cut!);
    try {
      await eventually('the cut-off member has no leader', 10_000, async () => (await cut!.status()).leaderId === '0');
      const { header } = await writer.put('partition/k').value('written during the partition').exec();
      expect(others).toContain(await cluster.leader());
      const stale = await cut!.status();
      expect(stale.leaderId).toBe('0');
      cluster.heal();
      await eventually('the healed member has a leader', 20_000, async () => (await cut!.status()).leaderId !== '0');
      const onCut = client([cut!.endpoint]);
      expect(await onCut.get('partition/k').string()).toBe('written during the partition');
      expect(BigInt((await onCut.get('partition/k').exec()).header.revision)).toBeGreaterThanOrEqual(
        BigInt(header.revision),
      );
    } finally {
      cluster.heal();
    }
  }, 60_000);

  const snapshotTest = 'a snapshot can still be taken from the cut-off member (only watches and keepalives need one)';
  it(snapshotTest, async () => {
    const cluster = etcd();
    const [cut] = await cluster.followers();
    cluster.partition(cut!);
    try {
      await eventually('the cut-off member has no leader', 10_000, async () => (await cut!.status()).leaderId === '0');
      // Backing up the members that are left is how one recovers from a lost quorum (etcd's disaster recovery).
      const stream = await client([cut!.endpoint]).maintenance.snapshot();
      let bytes = 0;
      await within(
        20_000,
        new Promise<void>((resolve, reject) => {
          stream.on('data', (res: { blob: Buffer }) => {
            bytes += res.blob.length;
          });
          stream.on('end', resolve);
          stream.on('error', reject);
        }),
        'the snapshot',
      );
      expect(bytes).toBeGreaterThan(0);
    } finally {
      cluster.heal();
    }
  }, 60_000);

  const wakeTest = 'waiters, consumers and caches whose watches are on it wake within 10 s of the events';
  it(wakeTest, async () => {
    const cluster = etcd();
    const [cut] = await cluster.followers();
    const others = cluster.members.filter((m) => m !== cut).map((m) => m.endpoint);
    const writer = client(others);
    // The cut-off member is the last host, so etcd3's deterministic order opens every stream on it first.
    const viaCut = () => client([...others, cut!.endpoint]);
    const streamsBefore = await watchStreams(cut!);
    // A holder's key written directly: a Mutex holder in this process would hand over without etcd.
    await writer.put('cut/lock/holder').value('');
    await new Barrier(writer, 'cut/gate').hold();

    await using waiterSession = await Session.create(viaCut(), { ttl: 10 });
    const lockWaiter = new Mutex(waiterSession, 'cut/lock').acquire();
    const barrierWaiter = new Barrier(viaCut(), 'cut/gate').wait();
    const queue = new Queue(viaCut(), 'cut/queue');
    const consumer = queue.dequeue();
    const cache = new PrefixCache(viaCut(), 'cut/cache/');
    await cache.ready();
    await waitForKey(writer, `cut/lock/${waiterSession.leaseHex}`);
    // The handshake: each of the four clients has its watch stream open on the member to be cut off.
    await eventually(
      '4 watch streams on the member',
      20_000,
      async () => (await watchStreams(cut!)) >= streamsBefore + 4,
    );

    cluster.partition(cut!);
    try {
      const sawPut = new Promise<void>((resolve) =>
        cache.on('change', (c) => {
          if (c.key === 'cut/cache/k') resolve();
        }),
      );
      await Promise.all([
        writer.delete().key('cut/lock/holder').exec(),
        new Barrier(writer, 'cut/gate').release(),
        new Queue(writer, 'cut/queue').enqueue('job'),
        writer.put('cut/cache/k').value('v'),
      ]);
      const events = performance.now();
      const woke = await within(
        20_000,
        Promise.all([
          lockWaiter.then(() => performance.now() - events),
          barrierWaiter.then(() => performance.now() - events),
          consumer.then(() => performance.now() - events),
          sawPut.then(() => performance.now() - events),
        ]),
        'everyone to wake',
      );
      const [lock, barrier, dequeued, cached] = woke.map(Math.round);
      const shown = JSON.stringify({ lock, barrier, dequeued, cached });
      for (const ms of woke) expect(ms, `woke ${shown} ms after the events`).toBeLessThan(10_000);
      console.log(`cut-off member: woke ${shown} ms after the events`);
    } finally {
      cluster.heal();
    }
    await (await lockWaiter).release();
    await queue.close();
    await cache.close();
  }, 60_000);
});
