import { describe, expect, it } from 'vitest';
import type { Namespace } from 'etcd3';
import { openWatch, WatchCompactedError, type WatchEvent, type WatchSpec } from '../src/core/watch-hub.js';
import { subscribeDiagnostics, type WatchCompactedMessage } from '../src/index.js';
import { useCluster, within } from './helpers.js';

/** Collects events of one watch; `next(n)` resolves once n events arrived in total. */
function collector() {
  const events: WatchEvent[] = [];
  let ended: Error | undefined;
  const waiters: { n: number; resolve: () => void }[] = [];
  const check = () => {
    for (const w of waiters.slice())
      if (events.length >= w.n || ended) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
  };
  return {
    events,
    get ended() {
      return ended;
    },
    listener: {
      onEvents: (evs: WatchEvent[]) => {
        events.push(...evs);
        check();
      },
      onEnd: (err: Error) => {
        ended = err;
        check();
      },
    },
    next: (n: number) =>
      within(
        10_000,
        new Promise<void>((resolve) => {
          waiters.push({ n, resolve });
          check();
        }),
        `${n} watch events`,
      ),
  };
}

/** The error a watch of `spec` ends with: it fails to open, or ends after its first event (or end). */
function endOf(client: Namespace, spec: WatchSpec): Promise<unknown> {
  const c = collector();
  return openWatch(client, spec, c.listener).then(
    (h) =>
      c.next(1).then(() => {
        h.close();
        return c.ended;
      }),
    (e: unknown) => e,
  );
}

describe('watch hub', () => {
  const etcd = useCluster();

  it('delivers events in order from "now", and with a start revision replays history', async () => {
    const client = etcd().client();
    const first = await client.put('wh/a').value('1').exec();
    const live = collector();
    const handle = await openWatch(client, { key: Buffer.from('wh/'), prefix: true }, live.listener);
    expect(handle.createdRevision >= BigInt(first.header.revision)).toBe(true);
    await client.put('wh/b').value('2');
    await client.delete().key('wh/a');
    await live.next(2);
    expect(live.events.map((e) => [e.type, e.kv.key.toString()])).toEqual([
      ['put', 'wh/b'],
      ['delete', 'wh/a'],
    ]);
    const replay = collector();
    const h2 = await openWatch(
      client,
      { key: Buffer.from('wh/'), prefix: true, startRevision: BigInt(first.header.revision) },
      replay.listener,
    );
    await replay.next(3);
    expect(replay.events.map((e) => e.type)).toEqual(['put', 'put', 'delete']);
    handle.close();
    h2.close();
  });

  it('ends a watch whose start revision was compacted with WatchCompactedError', async () => {
    const client = etcd().client();
    const old = await client.put('wc/x').value('1').exec();
    await client.put('wc/x').value('2');
    const latest = await client.put('wc/x').value('3').exec();
    await client.kv.compact({ revision: latest.header.revision, physical: true });
    const err = await endOf(client, { key: Buffer.from('wc/x'), startRevision: BigInt(old.header.revision) });
    expect(err).toBeInstanceOf(WatchCompactedError);
    expect((err as WatchCompactedError).compactRevision).toBe(BigInt(latest.header.revision));
  });

  it('a key range watch sees the keys from key up to end only; compacted, its diagnostic names the range', async () => {
    const client = etcd().client();
    const first = await client.put('wr/a').value('1').exec();
    const range = { key: Buffer.from('wr/b'), end: Buffer.from('wr/d') };
    const live = collector();
    const handle = await openWatch(client, range, live.listener);
    for (const key of ['wr/a', 'wr/b', 'wr/c', 'wr/d', 'wr/e', 'wr/c2']) await client.put(key).value('x');
    await live.next(3);
    expect(live.events.map((e) => e.kv.key.toString())).toEqual(['wr/b', 'wr/c', 'wr/c2']);
    handle.close();
    const latest = await client.put('wr/z').value('x').exec();
    await client.kv.compact({ revision: latest.header.revision, physical: true });
    const messages: WatchCompactedMessage[] = [];
    const stop = subscribeDiagnostics('etcd-recipes:watch:compacted', (m) => messages.push(m));
    try {
      const err = await endOf(client, { ...range, startRevision: BigInt(first.header.revision) });
      expect(err).toBeInstanceOf(WatchCompactedError);
      expect(messages).toContainEqual(expect.objectContaining({ key: 'wr/b', prefix: false, end: 'wr/d' }));
    } finally {
      stop();
    }
  });

  it('resumes after an etcd restart without losing events', async () => {
    const cluster = etcd();
    const client = cluster.client();
    const c = collector();
    const handle = await openWatch(client, { key: Buffer.from('wr/'), prefix: true }, c.listener);
    await client.put('wr/1').value('a');
    await c.next(1);
    await cluster.members[0]!.restart();
    // Written by another client right after the restart, possibly before our stream is back.
    const other = cluster.client();
    await other.put('wr/2').value('b');
    await other.put('wr/3').value('c');
    await c.next(3);
    expect(c.events.map((e) => e.kv.key.toString())).toEqual(['wr/1', 'wr/2', 'wr/3']);
    expect(c.ended).toBeUndefined();
    handle.close();
  });

  it('an aborted open rejects with the reason and leaves no watch behind', async () => {
    const client = etcd().client();
    const reason = new Error('stop');
    await expect(
      openWatch(client, { key: Buffer.from('wa') }, collector().listener, AbortSignal.abort(reason)),
    ).rejects.toBe(reason);
  });
});

/** etcd's count of Watch streams started and ended, from its own gRPC counters. */
async function watchStreams(url: string): Promise<{ started: number; ended: number }> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const sum = (metric: string) =>
    text
      .split('\n')
      .filter((l) => l.startsWith(`${metric}{`) && l.includes('grpc_method="Watch"'))
      .reduce((t, l) => t + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
  return { started: sum('grpc_server_started_total'), ended: sum('grpc_server_handled_total') };
}

describe('watch hub stream', () => {
  const etcd = useCluster();

  it('is reused by a watch opened soon after the last one closed, and closed once idle', async () => {
    const cluster = etcd();
    const url = cluster.members[0]!.metricsUrl;
    const client = cluster.client();
    const before = await watchStreams(url);
    // A lock waiter's pattern: close the watch at the handoff, make a few calls, open the next one.
    for (let i = 0; i < 5; i++) {
      const c = collector();
      const handle = await openWatch(client, { key: Buffer.from(`ws/${i}`) }, c.listener);
      await client.put(`ws/${i}`).value('x');
      await c.next(1);
      handle.close();
      await client.get(`ws/${i}`).string();
    }
    const after = await watchStreams(url);
    expect(after.started - before.started).toBe(1);
    // An idle stream would keep the process alive: it ends on its own (well within 5 s).
    const deadline = performance.now() + 5000;
    let now = after;
    while (now.ended - before.ended < 1 && performance.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
      now = await watchStreams(url);
    }
    expect(now.ended - before.ended).toBe(1);
  });
});
