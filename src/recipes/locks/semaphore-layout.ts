import type { HeldKey } from '../../core/holding.js';
import type { KeyValue } from '../../core/kv.js';

// The Semaphore's limits, its public option and result types, and the shapes of its line.

/**
 * The largest permit count accepted. Every read of a waiter returns up to
 * `permits + 1` keys (names only), so the count is bounded to keep those
 * reads small.
 */
export const MAX_PERMITS = 10_000;

/**
 * The most permits one acquire takes at once. A request for n permits
 * writes n keys in one Txn, and etcd refuses a Txn of more than
 * `--max-txn-ops` (default 128) operations.
 */
export const MAX_PERMITS_PER_ACQUIRE = 100;

/** Options of {@link Semaphore.acquire}. */
export interface PermitOptions {
  /** Abort the wait; the call then rejects with the signal's reason and leaves no key behind. */
  signal?: AbortSignal;
  /**
   * How many permits to take, all at once or none (default 1; at most the
   * semaphore's count and {@link MAX_PERMITS_PER_ACQUIRE}). The request keeps
   * its place in the FIFO line: requests behind it wait until it is served.
   */
  permits?: number;
}

/** A held permit, from {@link Semaphore.acquire}. Dispose it (or call `release()`) to give the permit back. */
export type PermitHandle = HeldKey;

/** How a semaphore is used right now, from {@link Semaphore.usage}. */
export interface SemaphoreUsage {
  /** Permits held (at most `permits`). */
  holders: number;
  /** Permits asked for by queued callers (the number of callers when each asks for one). */
  waiters: number;
}

/** What a waiter's read tells it beyond "blocked or not": who to wake once it holds. */
export interface LineData {
  /** Our own keys as read (their mod revisions show whether someone touched them already). */
  own: KeyValue[];
  /** Our place in line: how many keys are ahead of ours (0-based; we hold while `place + n <= permits`). */
  place: number;
  /** The keys right behind ours, oldest first (at most `min(permits - 1, WAKE_AHEAD)`). */
  behind: KeyValue[];
  /** True when `behind` may have been cut short by its limit. */
  behindCut: boolean;
}

/** One request's keys: one key for one permit (the original layout), n keys under one unique prefix for n. */
export interface Request {
  n: number;
  keys: Buffer[];
  /** The keys' common prefix `<name>/queue/<19 digits>-` when n > 1. */
  group: Buffer | undefined;
}

/** How many waiters behind it an admitted waiter wakes at most in one go (see `#wakeBehind`). */
export const WAKE_AHEAD = 32;

/** The most keys touched in one Txn (etcd's default `--max-txn-ops` is 128). */
export const TOUCH_BATCH = 64;

/** Keys sorted by create revision, grouped into requests (the keys of one request share a revision). */
export function groupByRevision(kvs: KeyValue[]): KeyValue[][] {
  const groups: KeyValue[][] = [];
  for (const kv of kvs) {
    const last = groups[groups.length - 1];
    if (last && last[0]!.createRevision === kv.createRevision) last.push(kv);
    else groups.push([kv]);
  }
  return groups;
}
