import { describe, expect, it } from 'vitest';
import { beyondLine, claimableInLine, type State } from '../../src/core/queue-line-state.js';

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
});
