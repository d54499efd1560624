import { Etcd3, type Namespace } from 'etcd3';
import { afterEach, describe, expect, it } from 'vitest';
import { DIAGNOSTICS_CHANNELS, Mutex, Session, subscribeDiagnostics } from '../src/index.js';
import { subscribe, type FeedSub } from '../src/core/line-feed.js';
import { range } from '../src/core/kv.js';
import { logger } from '../src/core/log.js';
import { lineFeedSpec } from '../src/core/wait.js';
import { FaultProxy } from '../src/testing/index.js';
import { keysUnder, useCluster, within } from './helpers.js';

/** Resolves once `key` starts waiting in line. */
function waiting(key: string): Promise<void> {
  return new Promise((resolve) => {
    const stop = subscribeDiagnostics(DIAGNOSTICS_CHANNELS.lockWait, (m) => {
      if (m.key !== key) return;
      stop();
      resolve();
    });
  });
}

/** Holds the feed of Mutex `name` open on `client` (live once this resolves). */
async function openLineFeed(client: Namespace, name: string): Promise<FeedSub> {
  await range(client, Buffer.from(name), {});
  return subscribe(client, [lineFeedSpec(Buffer.from(`${name}/`))], logger('test'), undefined);
}

describe('Mutex line feed under faults', () => {
  const etcd = useCluster();
  const proxies: FaultProxy[] = [];
  const clients: Etcd3[] = [];
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    await Promise.all(proxies.splice(0).map((p) => p.close()));
  });

  it.each(['cut', 'dropReplies'] as const)(
    "a waiter on a healthy client takes the lock when the feed's client goes dead (%s)",
    async (fault) => {
      const admin = etcd().client();
      const proxy = await FaultProxy.start(etcd().endpoints[0]!);
      proxies.push(proxy);
      const feedClient = new Etcd3({ hosts: proxy.endpoint, grpcOptions: { 'grpc.use_local_subchannel_pool': 1 } });
      clients.push(feedClient);
      await using a = await Session.create(etcd().client(), { ttl: 30 });
      await using b = await Session.create(etcd().client(), { ttl: 30 });
      const feed = await openLineFeed(feedClient, `dead-${fault}/lock`);
      try {
        const holder = await new Mutex(a, `dead-${fault}/lock`).acquire();
        const waiter = new Mutex(b, `dead-${fault}/lock`);
        const queued = waiting(waiter.key);
        const turn = waiter.acquire();
        await within(10_000, queued, 'waiter queued');
        proxy[fault](); // the feed's stream breaks (cut) or goes silent (dropReplies) and never comes back
        await admin.delete().key(holder.key);
        const held = await within(15_000, turn, 'waiter, whose own client is healthy');
        expect(held.fencingToken > holder.fencingToken).toBe(true);
        await held.release();
        expect(await keysUnder(admin, `dead-${fault}/lock/`)).toEqual([]);
      } finally {
        feed.close();
      }
    },
  );
});
