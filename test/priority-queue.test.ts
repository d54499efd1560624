import { describe, expect, it } from 'vitest';
import { PriorityQueue } from '../src/index.js';
import { keysUnder, stillPending, useCluster, within } from './helpers.js';
import { tally, waitForCount } from './queue-helpers.js';

describe('PriorityQueue', () => {
  const etcd = useCluster();

  it("uses Go's layout: <name>/<%05d priority>/<%016d seq>, bookkeeping __<name>/<%05d priority>", async () => {
    const client = etcd().client();
    await using q = new PriorityQueue(client, 'lay');
    expect(await q.enqueue('a', 3)).toBe('lay/00003/0000000000000000');
    expect(await q.enqueue('b', 3)).toBe('lay/00003/0000000000000001');
    expect(await q.enqueue('z', 0)).toBe('lay/00000/0000000000000000');
    expect(await q.enqueue('last', 65535)).toBe('lay/65535/0000000000000000');
    const kvs = (await client.getAll().prefix('lay/').exec()).kvs;
    expect(kvs.map((kv) => [kv.key.toString(), kv.value.toString(), kv.lease])).toEqual([
      ['lay/00000/0000000000000000', 'z', '0'],
      ['lay/00003/0000000000000000', 'a', '0'],
      ['lay/00003/0000000000000001', 'b', '0'],
      ['lay/65535/0000000000000000', 'last', '0'],
    ]);
    // Go's sequence keys, and the last enqueue's spent receipt (deleted by the next write, or by close()).
    expect((await keysUnder(client, '__lay/')).sort()).toEqual([
      '__lay/00000',
      '__lay/00003',
      '__lay/65535',
      expect.stringMatching(/^__lay\/sent\/[0-9]{19}$/),
    ]);
    expect(await q.size()).toBe(4);

    // A Go producer allocates the next numbers behind our back (reads the last key, bumps the bookkeeping key):
    // our next enqueue must notice and continue after them.
    await client.put('lay/00003/0000000000000002').value('go');
    await client.put('__lay/00003').value('');
    expect(await q.enqueue('c', 3)).toBe('lay/00003/0000000000000003');
    // A fresh object reads the last key, as Go does.
    await using other = new PriorityQueue(etcd().client(), 'lay');
    expect(await other.enqueue('d', 3)).toBe('lay/00003/0000000000000004');

    const got: string[] = [];
    for (let i = 0; i < 7; i++) got.push(await q.dequeue());
    expect(got).toEqual(['z', 'a', 'b', 'go', 'c', 'd', 'last']);
    // Go restarts a priority's sequence at 0 once it is empty, and so does a reader of the last key.
    await using fresh = new PriorityQueue(etcd().client(), 'lay');
    expect(await fresh.enqueue('again', 3)).toBe('lay/00003/0000000000000000');
  });

  it('delivers lower priorities first and FIFO within a priority', async () => {
    await using q = new PriorityQueue(etcd().client(), 'order');
    const items: [string, number][] = [];
    for (let i = 0; i < 24; i++) items.push([`i${i}`, [7, 2, 9, 2, 0, 7][i % 6]!]);
    for (const [v, p] of items) await q.enqueue(v, p);
    const expected = items
      .map((x, i) => ({ v: x[0], p: x[1], i }))
      .sort((a, b) => a.p - b.p || a.i - b.i)
      .map((x) => x.v);
    const got: string[] = [];
    for (let i = 0; i < items.length; i++) got.push(await q.dequeue());
    expect(got).toEqual(expected);
  });

  it('several producers on one priority never share a sequence number and keep their own order', async () => {
    const producers = Array.from({ length: 3 }, () => new PriorityQueue(etcd().client(), 'contend'));
    await Promise.all(
      producers.map(async (p, i) => {
        for (let j = 0; j < 20; j++) await p.enqueue(`p${i}-${j}`, 5);
      }),
    );
    const client = etcd().client();
    const keys = await keysUnder(client, 'contend/');
    expect(keys).toHaveLength(60);
    expect(keys).toEqual(Array.from({ length: 60 }, (_, i) => `contend/00005/${String(i).padStart(16, '0')}`));
    await using q = new PriorityQueue(client, 'contend');
    const got: string[] = [];
    for (let i = 0; i < 60; i++) got.push(await q.dequeue());
    for (let i = 0; i < 3; i++) {
      expect(got.filter((v) => v.startsWith(`p${i}-`))).toEqual(Array.from({ length: 20 }, (_, j) => `p${i}-${j}`));
    }
  });

  it('a waiting consumer gets the next item; competing consumers each get distinct items', async () => {
    const client = etcd().client();
    const producer = new PriorityQueue(client, 'wait');
    const consumers = Array.from({ length: 3 }, () => new PriorityQueue(etcd().client(), 'wait'));
    const first = consumers[0]!.dequeue();
    await waitForCount(client, '__wait/waiters/', 1);
    expect(await stillPending(first, 200)).toBe(true);
    await producer.enqueue('hi', 10);
    expect(await within(5000, first)).toBe('hi');
    for (let i = 0; i < 45; i++) await producer.enqueue(`v${i}`, i % 3);
    const got: string[] = [];
    const stop = new AbortController();
    await within(
      20_000,
      Promise.all(
        consumers.map(async (q) => {
          for (;;) {
            const v = await q.dequeue({ signal: stop.signal }).catch(() => undefined);
            if (v === undefined) return;
            got.push(v);
            if (got.length === 45) stop.abort();
          }
        }),
      ),
    );
    const counts = tally(got);
    expect(counts.size).toBe(45);
    expect([...counts.values()].every((n) => n === 1)).toBe(true);
    expect(await keysUnder(client, 'wait/')).toEqual([]);
    await Promise.all(consumers.map((c) => c.close()));
    expect(await keysUnder(client, '__wait/waiters/')).toEqual([]);
  });

  it('an aborted dequeue leaves no key', async () => {
    const client = etcd().client();
    await using q = new PriorityQueue(client, 'abort');
    const controller = new AbortController();
    const pending = q.dequeue({ signal: controller.signal });
    await waitForCount(client, '__abort/waiters/', 1);
    controller.abort(new Error('stop'));
    await expect(pending).rejects.toThrow('stop');
    expect(await keysUnder(client, '__abort/waiters/')).toEqual([]);
    expect(await keysUnder(client, 'abort/')).toEqual([]);
  });

  it("rejects bad input (priority out of Go's uint16 range, wrong types) before writing anything", async () => {
    const client = etcd().client();
    const bad = (fn: () => unknown) => expect(fn).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    bad(() => new PriorityQueue(client, ''));
    bad(() => new PriorityQueue(null as never, 'x'));
    bad(() => new PriorityQueue(client, 'x', { ttl: -1 }));
    const q = new PriorityQueue(client, 'badin');
    for (const p of [-1, 65536, 1.5, Number.NaN, Infinity, '3', undefined, null, 10n]) {
      await expect(q.enqueue('v', p as never)).rejects.toMatchObject({
        code: 'INVALID_ARGUMENT',
        argument: 'priority',
      });
    }
    for (const v of [undefined, 3, {}]) {
      await expect(q.enqueue(v as never, 1)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', argument: 'value' });
    }
    await expect(q.dequeue({ signal: {} as never })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    expect(await keysUnder(client, 'badin')).toEqual([]);
    expect(await keysUnder(client, '__badin')).toEqual([]);
    await q.close();
  });
});
