import type { Etcd3 } from 'etcd3';
import { retrying } from '../src/core/retry.js';
import { Barrier, Mutex, PrefixCache, Queue, Session } from '../src/index.js';
import type { EtcdMember } from '../src/testing/index.js';
import { waitForKey, within } from './helpers.js';

class NotYet extends Error {}

/** Polls `check` with core's retry schedule (bounded): for states etcd tells of only when asked. */
export function eventually(what: string, timeoutMs: number, check: () => Promise<boolean>): Promise<void> {
  return retrying(
    async () => {
      if (!(await check())) throw new NotYet(`${what}: not within ${timeoutMs} ms`);
    },
    { maxElapsedMs: timeoutMs, maxBackoffMs: 50, retryIf: (err) => err instanceof NotYet },
  );
}

/** Watch streams open on a member, from its own gauge. */
async function watchStreams(member: EtcdMember): Promise<number> {
  const text = await (await fetch(`${member.metricsUrl}/metrics`)).text();
  return Number(/^etcd_debugging_mvcc_watch_stream_total (\S+)$/m.exec(text)?.[1] ?? Number.NaN);
}

/** How long after the events each waiter woke, in ms. */
export interface WakeTimes {
  lock: number;
  barrier: number;
  dequeued: number;
  cached: number;
}

/**
 * A Mutex waiter, a Barrier waiter, a Queue consumer and a PrefixCache, each
 * on a client from `via` and waiting under `prefix`, for the transport tests:
 * `fire()` makes the events each waits for through `writer`, and resolves
 * with how long after them each woke. The lock's holder is a key written
 * directly: a Mutex holder in this process would hand over without etcd.
 * Returns once `on` (the member `via` tries first) shows the four clients'
 * watch streams, the handshake before a fault is injected there.
 */
export async function fourWaiters(writer: Etcd3, via: () => Etcd3, prefix: string, on: EtcdMember) {
  const streamsBefore = await watchStreams(on);
  await writer.put(`${prefix}/lock/holder`).value('');
  await new Barrier(writer, `${prefix}/gate`).hold();
  const session = await Session.create(via(), { ttl: 10 });
  const lockWaiter = new Mutex(session, `${prefix}/lock`).acquire();
  const barrierWaiter = new Barrier(via(), `${prefix}/gate`).wait();
  const queue = new Queue(via(), `${prefix}/queue`);
  const consumer = queue.dequeue();
  const cache = new PrefixCache(via(), `${prefix}/cache/`);
  await cache.ready();
  await waitForKey(writer, `${prefix}/lock/${session.leaseHex}`);
  await eventually('4 watch streams on the member', 20_000, async () => (await watchStreams(on)) >= streamsBefore + 4);
  return {
    /** Makes the four events and waits (bounded by `ms`) until every waiter woke. */
    async fire(ms: number): Promise<WakeTimes> {
      const sawPut = new Promise<void>((resolve) =>
        cache.on('change', (c) => {
          if (c.key === `${prefix}/cache/k`) resolve();
        }),
      );
      await Promise.all([
        writer.delete().key(`${prefix}/lock/holder`).exec(),
        new Barrier(writer, `${prefix}/gate`).release(),
        new Queue(writer, `${prefix}/queue`).enqueue('job'),
        writer.put(`${prefix}/cache/k`).value('v'),
      ]);
      const events = performance.now();
      const after = (p: Promise<unknown>) => p.then(() => Math.round(performance.now() - events));
      const [lock, barrier, dequeued, cached] = await within(
        ms,
        Promise.all([after(lockWaiter), after(barrierWaiter), after(consumer), after(sawPut)]),
        'every waiter to wake',
      );
      return { lock, barrier, dequeued, cached };
    },
    /** Releases the lock and closes what the waiters opened. */
    async close(): Promise<void> {
      await (await lockWaiter).release();
      await queue.close();
      await cache.close();
      await session.close();
    },
  };
}
