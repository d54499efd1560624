import { describe, expect, it } from 'vitest';
import type { Candidate } from '../../src/core/claim-source.js';
import type { WatchEvent } from '../../src/core/watch-hub.js';
import { advance, beyondLine, claimableInLine, type State, vouchedFor } from '../../src/core/queue-line-state.js';

const cands = ['a', 'b', 'c', 'd'].map((k, i) => ({ key: Buffer.from(k), rev: BigInt(i + 1) }));
const keys = (cs: { key: Buffer }[]) => cs.map((c) => c.key.toString());
const state = (ahead: number, waiters: number, alive = true): State => ({
  alive,
  ahead,
  names: new Set(),
  scan: { cands, waiters },
  revision: 10n,
});

describe('the consumer line decisions (no etcd)', () => {
  it('a waiter takes the candidates from its place in line on: the head all, the k-th from the k-th', () => {
    expect(keys(claimableInLine(state(0, 4)))).toEqual(['a', 'b', 'c', 'd']);
    expect(keys(claimableInLine(state(1, 4)))).toEqual(['b', 'c', 'd']);
    expect(keys(claimableInLine(state(3, 4)))).toEqual(['d']);
    expect(claimableInLine(state(4, 5))).toEqual([]);
    expect(claimableInLine(state(0, 1, false))).toEqual([]);
  });

  it('waiters that read at the same revision never pick the same first candidate', () => {
    const firsts = [0, 1, 2, 3].map((ahead) => claimableInLine(state(ahead, 4))[0]?.key.toString());
    expect(new Set(firsts).size).toBe(4);
  });

  it('a consumer outside the line takes only what is left once every waiter has one', () => {
    expect(keys(beyondLine({ cands, waiters: 3 }))).toEqual(['d']);
    expect(beyondLine({ cands, waiters: 4 })).toEqual([]);
    expect(keys(beyondLine({ cands, waiters: 0 }))).toEqual(['a', 'b', 'c', 'd']);
  });

  it('after a page with more beyond it, a candidate put past the page is left for a read; one gone asks for it', () => {
    const page = { cands: cands.slice(0, 3), waiters: 4, more: true };
    const put = (k: string) => ({ key: Buffer.from(k), rev: 99n });
    // Put after the page's last: unread ones may come first.
    expect(keys(vouchedFor(page, [...page.cands, put('z')])!)).toEqual(['a', 'b', 'c']);
    // Put inside the page (a higher priority): it is known to be among the first.
    expect(keys(vouchedFor(page, [put('0'), ...page.cands])!)).toEqual(['0', 'a', 'b', 'c']);
    // A candidate the page showed is gone, or its last one: read again.
    expect(vouchedFor(page, [page.cands[0]!, page.cands[2]!])).toBeUndefined();
    expect(vouchedFor(page, [put('0'), ...page.cands.slice(0, 2), put('z')])).toBeUndefined();
    // A page that showed everything vouches for every put.
    expect(keys(vouchedFor({ ...page, more: false }, [...page.cands, put('z')])!)).toEqual(['a', 'b', 'c', 'z']);
  });

  it('brings a read up to date from the feed: waiters ahead leaving, our own key gone, old events skipped', () => {
    const waiters = Buffer.from('q/waiters/');
    const ev = (type: 'put' | 'delete', key: string, rev: bigint, version = 1n): WatchEvent => ({
      type,
      kv: { key: Buffer.from(key), value: Buffer.alloc(0), createRevision: rev, modRevision: rev, version, lease: '0' },
    });
    const read = (): State => ({ ...state(2, 3), names: new Set(['w1', 'w2']) });
    const same = (cs: Candidate[]) => cs;
    // An event at or before the read's revision is already in the read.
    expect(
      advance(read(), [ev('delete', 'q/waiters/w1', 10n)], Buffer.from('q/waiters/me'), waiters, same),
    ).toMatchObject({ ahead: 2, alive: true });
    const one = advance(read(), [ev('delete', 'q/waiters/w1', 11n)], Buffer.from('q/waiters/me'), waiters, same);
    expect(one).toMatchObject({ ahead: 1, alive: true, scan: { waiters: 2 } });
    expect(advance(read(), [ev('put', 'q/waiters/w9', 11n)], Buffer.from('q/waiters/me'), waiters, same)).toMatchObject(
      {
        ahead: 2,
        scan: { waiters: 4 },
      },
    );
    expect(
      advance(read(), [ev('delete', 'q/waiters/me', 11n)], Buffer.from('q/waiters/me'), waiters, same),
    ).toMatchObject({
      alive: false,
    });
    // Every name we knew ahead gone while more wait ahead: only a read can tell who is next.
    const deep = { ...state(3, 4), names: new Set(['w1']) };
    expect(
      advance(deep, [ev('delete', 'q/waiters/w1', 11n)], Buffer.from('q/waiters/me'), waiters, same),
    ).toBeUndefined();
    // Items go through the recipe's rule; a rule that cannot tell asks for a read.
    expect(advance(read(), [ev('put', 'q/items/x', 11n)], Buffer.from('q/waiters/me'), waiters, () => undefined)).toBe(
      undefined,
    );
  });
});
