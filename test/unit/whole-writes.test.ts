import { afterEach, describe, expect, it, vi } from 'vitest';
import type { WatchEvent } from '../../src/core/watch-types.js';
import { HOLD_MS, WholeWrites } from '../../src/core/whole-writes.js';

/*
 * A claim deletes an item (the items watch, number 0) and the claimer's
 * waiter key (the waiters watch, number 1) at one revision; etcd sends the
 * two shares as two responses, in either order. A waiter must never see one
 * without the other (core/whole-writes.ts).
 */

const ev = (type: 'put' | 'delete', key: string, rev: bigint): WatchEvent => ({
  type,
  kv: { key: Buffer.from(key), value: Buffer.alloc(0), createRevision: 0n, modRevision: rev, version: 0n, lease: '0' },
});
const shown = (batches: WatchEvent[][]) =>
  batches.map((b) => b.map((e) => `${e.type} ${e.kv.key}@${e.kv.modRevision}`));

function feed(watches = 2) {
  const batches: WatchEvent[][] = [];
  return { batches, writes: new WholeWrites(watches, (events) => batches.push(events)) };
}

describe('a write split over two watches reaches waiters whole (no etcd)', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('holds a claim’s item delete until its waiter key’s delete arrives, whichever comes first', () => {
    for (const [first, second] of [
      [0, 1],
      [1, 0],
    ] as const) {
      const { batches, writes } = feed();
      const share = [[ev('delete', 'q/1', 7n)], [ev('delete', '__q/waiters/a', 7n)]];
      writes.add(first, share[first]!);
      expect(batches).toEqual([]);
      writes.add(second, share[second]!);
      expect(shown(batches)).toEqual([[...share[first]!, ...share[second]!].map((e) => `delete ${e.kv.key}@7`)]);
    }
  });

  it('passes a put on at once: a new item wakes its waiter without delay', () => {
    const { batches, writes } = feed();
    writes.add(0, [ev('put', 'q/2', 8n)]);
    expect(shown(batches)).toEqual([['put q/2@8']]);
  });

  it('sends a lone delete on before any later revision (the stream is in revision order)', () => {
    const { batches, writes } = feed();
    writes.add(1, [ev('delete', '__q/waiters/gone', 9n)]);
    writes.add(0, [ev('put', 'q/3', 10n)]);
    expect(shown(batches)).toEqual([['delete __q/waiters/gone@9', 'put q/3@10']]);
  });

  it('passes an older revision on first when a watch catches up, and keeps holding the newer write', () => {
    const { batches, writes } = feed();
    writes.add(1, [ev('delete', '__q/waiters/b', 210n)]);
    writes.add(0, [ev('delete', 'q/7', 205n)]);
    expect(shown(batches)).toEqual([['delete q/7@205']]);
    writes.add(0, [ev('delete', 'q/8', 210n)]);
    expect(shown(batches)).toEqual([['delete q/7@205'], ['delete __q/waiters/b@210', 'delete q/8@210']]);
  });

  it('sends a lone delete on after HOLD_MS when nothing else comes', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setImmediate'] });
    const { batches, writes } = feed();
    writes.add(0, [ev('delete', 'q/4', 11n)]);
    await vi.advanceTimersByTimeAsync(HOLD_MS - 1);
    expect(batches).toEqual([]);
    vi.runAllTimers();
    expect(shown(batches)).toEqual([['delete q/4@11']]);
  });

  it('holds nothing with one watch, and drops what it holds once closed', async () => {
    const one = feed(1);
    one.writes.add(0, [ev('delete', 'q/5', 12n)]);
    expect(shown(one.batches)).toEqual([['delete q/5@12']]);
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setImmediate'] });
    const two = feed();
    two.writes.add(0, [ev('delete', 'q/6', 13n)]);
    two.writes.close();
    await vi.advanceTimersByTimeAsync(HOLD_MS * 2);
    expect(two.batches).toEqual([]);
  });
});
