import type { Etcd3, Namespace } from 'etcd3';
import { afterAll, describe, expect, it } from 'vitest';
import { isRecipeError, PrefixCache, type PrefixCacheChange } from '../src/index.js';
import { TcpProxy } from './fixtures/tcp-proxy.js';
import { useCluster, within } from './helpers.js';

/** Every [key, value] under `prefix`, read fresh from etcd, sorted by key. */
async function freshRead(client: Namespace, prefix: string): Promise<[string, string][]> {
  const res = await client.getAll().prefix(prefix).exec();
  return res.kvs
    .map((kv) => [kv.key.toString(), kv.value.toString()] as [string, string])
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

/** Records a cache's change events; `until(pred)` resolves once `pred(changes)` holds (event-driven, bounded). */
function record(cache: PrefixCache) {
  const changes: PrefixCacheChange[] = [];
  const waiters: { pred: (c: PrefixCacheChange[]) => boolean; resolve: () => void }[] = [];
  cache.on('change', (c) => {
    changes.push(c);
    for (const w of waiters.slice())
      if (w.pred(changes)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
  });
  return {
    changes,
    until(pred: (c: PrefixCacheChange[]) => boolean, what: string, ms = 30_000): Promise<void> {
      if (pred(changes)) return Promise.resolve();
      return within(ms, new Promise<void>((resolve) => waiters.push({ pred, resolve })), what);
    },
  };
}

async function rev(client: Etcd3, fn: (c: Etcd3) => Promise<{ header: { revision: string } }>): Promise<bigint> {
  return BigInt((await fn(client)).header.revision);
}

describe('PrefixCache', () => {
  const etcd = useCluster();
  const proxies: TcpProxy[] = [];
  afterAll(async () => {
    await Promise.all(proxies.map((p) => p.close()));
  });

  it('loads the prefix in pages and follows puts and deletes with previous values', async () => {
    const client = etcd().client();
    for (let i = 0; i < 25; i++) await client.put(`pc/load/k${String(i).padStart(2, '0')}`).value(`v${i}`);
    await client.put('pc/loadx').value('outside the prefix');
    const binary = Buffer.from([0xff, 0x00, 0xfe]);
    await client.put('pc/load/bin').value(binary);
    const last = await rev(client, (c) => c.put('pc/load/k00').value('v0-updated').exec());

    await using cache = new PrefixCache(client, 'pc/load/', { pageSize: 7 });
    expect(cache.isReady).toBe(false);
    await within(10_000, cache.ready(), 'ready');
    expect(cache.entries()).toEqual(await freshRead(client, 'pc/load/'));
    expect(cache.size).toBe(26);
    expect(cache.revision).toBe(last);
    expect(cache.get('pc/load/k00')).toBe('v0-updated');
    expect(cache.get('pc/loadx')).toBeUndefined();
    expect(cache.getEntry('pc/load/k00')!.version).toBe(2n);
    expect(cache.getEntry('pc/load/bin')!.valueBuffer.equals(binary)).toBe(true);

    const rec = record(cache);
    const r1 = await rev(client, (c) => c.put('pc/load/new').value('n').exec());
    const r2 = await rev(client, (c) => c.put('pc/load/k01').value('v1-updated').exec());
    const r3 = await rev(client, (c) => c.delete().key('pc/load/k02').exec());
    await client.put('pc/loadx').value('still outside');
    await rec.until((c) => c.length >= 3, 'three changes');
    expect(rec.changes.map((c) => [c.type, c.key, c.prevValue, c.value, c.revision, c.resync])).toEqual([
      ['put', 'pc/load/new', undefined, 'n', r1, false],
      ['put', 'pc/load/k01', 'v1', 'v1-updated', r2, false],
      ['delete', 'pc/load/k02', 'v2', undefined, r3, false],
    ]);
    expect(rec.changes[1]!.prevEntry!.modRevision < rec.changes[1]!.entry!.modRevision).toBe(true);
    expect(cache.revision).toBe(r3);
    expect(cache.entries()).toEqual(await freshRead(client, 'pc/load/'));
  });

  it('a paged list is one snapshot, even while keys move between pages', async () => {
    const client = etcd().client();
    const n = 40;
    for (let i = 0; i < n; i++) await client.put(`pc/snap/z${i}`).value(String(i));
    // A writer moves keys from the end of the range to its start and back, one Txn each:
    // there are always exactly n keys. A list not pinned to one revision would miss or double some.
    let stop = false;
    let moves = 0;
    const writer = (async () => {
      const w = etcd().client();
      for (let round = 0; !stop && round < 2000; round++) {
        const i = round % n;
        const [from, to] =
          Math.floor(round / n) % 2 === 0 ? [`pc/snap/z${i}`, `pc/snap/a${i}`] : [`pc/snap/a${i}`, `pc/snap/z${i}`];
        await w
          .if(from, 'Create', '>', 0)
          .then(w.delete().key(from), w.put(to).value(String(i)))
          .commit();
        moves++;
      }
    })();
    let sizeAtReady = -1;
    const cache = new PrefixCache(client, 'pc/snap/', { pageSize: 3 });
    cache.on('ready', () => {
      sizeAtReady = cache.size;
    });
    const sizes = new Set<number>();
    cache.on('change', () => sizes.add(cache.size));
    await within(20_000, cache.ready(), 'ready');
    // Let some moves happen after ready too, then stop the writer.
    const target = moves + 20;
    await within(
      20_000,
      (async () => {
        while (moves < target) await new Promise((r) => setTimeout(r, 10));
      })(),
      'writer progress',
    );
    stop = true;
    await writer;
    expect(sizeAtReady).toBe(n);
    // One Txn deletes one key and creates another: the change events of a revision come together.
    for (const s of sizes) expect([n - 1, n]).toContain(s);
    const fresh = await freshRead(client, 'pc/snap/');
    await within(
      10_000,
      (async () => {
        while (JSON.stringify(cache.entries()) !== JSON.stringify(fresh)) await new Promise((r) => setTimeout(r, 20));
      })(),
      'cache converged',
    );
    expect(cache.size).toBe(n);
    await cache.close();
  });

  it('resumes after a lost connection without gaps or duplicates', async () => {
    const cluster = etcd();
    const proxy = await TcpProxy.start(cluster.endpoints[0]!);
    proxies.push(proxy);
    const writer = cluster.client();
    await writer.put('pc/conn/a').value('1');
    await using cache = new PrefixCache(cluster.client({ hosts: [proxy.endpoint] }), 'pc/conn/');
    await within(10_000, cache.ready(), 'ready');
    const rec = record(cache);
    proxy.cut();
    const written: [string, string, bigint][] = [];
    for (let i = 0; i < 5; i++) {
      written.push([`pc/conn/k${i}`, 'put', await rev(writer, (c) => c.put(`pc/conn/k${i}`).value(`v${i}`).exec())]);
    }
    written.push(['pc/conn/a', 'delete', await rev(writer, (c) => c.delete().key('pc/conn/a').exec())]);
    proxy.restore();
    await rec.until((c) => c.length >= written.length, 'changes after reconnect');
    expect(rec.changes.map((c) => [c.key, c.type, c.revision])).toEqual(written);
    expect(rec.changes.every((c) => !c.resync)).toBe(true);
    expect(cache.entries()).toEqual(await freshRead(writer, 'pc/conn/'));
  });

  it('survives compaction during a watch: re-lists, emits the difference, and goes on', async () => {
    const cluster = etcd();
    const proxy = await TcpProxy.start(cluster.endpoints[0]!);
    proxies.push(proxy);
    const writer = cluster.client();
    await writer.put('pc/compact/keep').value('k');
    await writer.put('pc/compact/update').value('old');
    await writer.put('pc/compact/remove').value('gone soon');
    const cache = new PrefixCache(cluster.client({ hosts: [proxy.endpoint] }), 'pc/compact/');
    await within(10_000, cache.ready(), 'ready');
    const rec = record(cache);
    const resynced = new Promise<{ revision: bigint; compactRevision: bigint | undefined; changes: number }>(
      (resolve) => cache.once('resync', resolve),
    );

    // Cut the cache off, change things, and compact past its watch revision.
    proxy.cut();
    await writer.put('pc/compact/update').value('new');
    await writer.delete().key('pc/compact/remove');
    await writer.put('pc/compact/added').value('a');
    await writer.put('pc/compact/transient').value('t');
    await writer.delete().key('pc/compact/transient');
    const compactAt = await rev(writer, (c) => c.put('other/bump').value('x').exec());
    await writer.kv.compact({ revision: compactAt.toString(), physical: true });
    proxy.restore();

    const info = await within(30_000, resynced, 'resync after compaction');
    expect(info.compactRevision).toBe(compactAt);
    expect(info.changes).toBe(3);
    expect(rec.changes.map((c) => [c.type, c.key, c.prevValue, c.value, c.resync])).toEqual([
      ['put', 'pc/compact/added', undefined, 'a', true],
      ['delete', 'pc/compact/remove', 'gone soon', undefined, true],
      ['put', 'pc/compact/update', 'old', 'new', true],
    ]);
    expect(rec.changes.every((c) => c.revision === info.revision)).toBe(true);
    expect(cache.entries()).toEqual(await freshRead(writer, 'pc/compact/'));

    // And it keeps following.
    const r = await rev(writer, (c) => c.put('pc/compact/after').value('z').exec());
    await rec.until((c) => c.some((x) => x.key === 'pc/compact/after'), 'change after resync');
    expect(rec.changes.at(-1)).toMatchObject({ type: 'put', key: 'pc/compact/after', revision: r, resync: false });
    expect(cache.entries()).toEqual(await freshRead(writer, 'pc/compact/'));
    await cache.close();
  });

  it('an iterator behind a slow consumer holds at most one change per key, merged', async () => {
    const client = etcd().client();
    await client.put('pc/slow/existing').value('e0');
    await client.put('pc/slow/doomed').value('d0');
    await using cache = new PrefixCache(client, 'pc/slow/');
    await cache.ready();
    const iter = cache.changes();
    const rec = record(cache);
    let writes = 0;
    for (let i = 1; i <= 50; i++) {
      await client.put('pc/slow/existing').value(`e${i}`);
      await client.put('pc/slow/fresh').value(`f${i}`);
      writes += 2;
    }
    await client.put('pc/slow/temp').value('t');
    await client.delete().key('pc/slow/temp');
    await client.delete().key('pc/slow/doomed');
    writes += 3;
    await rec.until((c) => c.length >= writes, 'all writes seen');
    const got: PrefixCacheChange[] = [];
    cache.once('closed', () => undefined);
    setImmediate(() => void cache.close());
    for await (const c of iter) got.push(c);
    // One per key: temp (created and deleted) drops out; order follows each key's latest change.
    expect(got.map((c) => [c.type, c.key, c.prevValue, c.value])).toEqual([
      ['put', 'pc/slow/existing', 'e0', 'e50'],
      ['put', 'pc/slow/fresh', undefined, 'f50'],
      ['delete', 'pc/slow/doomed', 'd0', undefined],
    ]);
    for (let i = 1; i < got.length; i++) expect(got[i]!.revision > got[i - 1]!.revision).toBe(true);
  });

  it('close() ends iterators and pending ready(); an aborted iterator rejects with the reason', async () => {
    const client = etcd().client();
    const cache = new PrefixCache(client, 'pc/close/');
    const reason = new Error('enough');
    const controller = new AbortController();
    const aborted = cache.changes({ signal: controller.signal });
    const pendingNext = aborted.next();
    controller.abort(reason);
    await expect(pendingNext).rejects.toBe(reason);
    await expect(cache.ready({ signal: AbortSignal.abort(reason) })).rejects.toBe(reason);

    const ready = cache.ready();
    const iter = cache[Symbol.asyncIterator]();
    const next = iter.next();
    await cache.close();
    await expect(next).resolves.toEqual({ value: undefined, done: true });
    // ready() either resolved before close or was rejected by it; after close it rejects.
    await ready.catch(() => undefined);
    await expect(cache.ready()).rejects.toThrow(/closed/);
    expect(cache.closed).toBe(true);
    await cache.close(); // idempotent
  });

  it('rejects bad input', () => {
    const client = etcd().client();
    const bad = (fn: () => unknown, argument: string) => {
      try {
        fn();
      } catch (err) {
        expect(isRecipeError(err, 'INVALID_ARGUMENT')).toBe(true);
        expect((err as { argument: string }).argument).toBe(argument);
        return;
      }
      throw new Error(`no error for ${argument}`);
    };
    bad(() => new PrefixCache(client, ''), 'prefix');
    bad(() => new PrefixCache(client, 42 as never), 'prefix');
    bad(() => new PrefixCache({} as never, 'p/'), 'client');
    bad(() => new PrefixCache(client, 'p/', { pageSize: 0 }), 'options.pageSize');
    bad(() => new PrefixCache(client, 'p/', { pageSize: 1.5 }), 'options.pageSize');
    bad(() => new PrefixCache(client, 'p/', 'x' as never), 'options');
  });
});
