import { describe, expect, it } from 'vitest';
import { AsyncQueue } from '../../src/core/async-queue.js';

async function drain<T>(q: AsyncQueue<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const v of q) out.push(v);
  return out;
}

describe('AsyncQueue (the one bounded async iterator)', () => {
  it('hands a pushed item to a waiting consumer, in order, and ends after what is pending once finished', async () => {
    const q = new AsyncQueue<number>();
    const first = q.next();
    q.push(1);
    expect(await first).toEqual({ value: 1, done: false });
    q.push(2);
    q.push(3);
    q.finish();
    q.push(4); // after finish: ignored
    expect(await drain(q)).toEqual([2, 3]);
  });

  it('keeps at most `max` items for a slow consumer, dropping the oldest, never the latest', async () => {
    const q = new AsyncQueue<number>({ max: 3 });
    for (let i = 1; i <= 10; i++) q.push(i);
    q.finish();
    expect(await drain(q)).toEqual([8, 9, 10]);
  });

  it('merges items of one key, moving the merged item to the end; undefined from merge drops both', async () => {
    const q = new AsyncQueue<string>({ merge: (a, b) => (b === 'gone' ? undefined : `${a}+${b}`) });
    q.push('a1', 'a');
    q.push('b1', 'b');
    q.push('a2', 'a');
    q.push('c1', 'c');
    q.push('gone', 'c');
    q.finish();
    expect(await drain(q)).toEqual(['b1', 'a1+a2']);
  });

  it('rejects a waiting next() with the signal reason on abort, then is done; endOnAbort ends normally', async () => {
    const controller = new AbortController();
    let ended = 0;
    const q = new AsyncQueue<number>({ signal: controller.signal, onEnd: () => ended++ });
    const waiting = q.next();
    controller.abort(new Error('stop'));
    await expect(waiting).rejects.toThrow('stop');
    expect(await q.next()).toEqual({ value: undefined, done: true });
    expect(ended).toBe(1);

    const quiet = new AbortController();
    const r = new AsyncQueue<number>({ signal: quiet.signal, endOnAbort: true });
    r.push(1);
    quiet.abort();
    expect(await r.next()).toEqual({ value: undefined, done: true });
  });

  it('fail() rejects the next take once (even without a waiter); return() ends it and calls onEnd once', async () => {
    const q = new AsyncQueue<number>();
    q.fail(new Error('broken'));
    await expect(q.next()).rejects.toThrow('broken');
    expect(await q.next()).toEqual({ value: undefined, done: true });

    let ended = 0;
    const r = new AsyncQueue<number>({ onEnd: () => ended++ });
    const waiting = r.next();
    await r.return();
    await r.return();
    expect(await waiting).toEqual({ value: undefined, done: true });
    expect(ended).toBe(1);
  });
});
