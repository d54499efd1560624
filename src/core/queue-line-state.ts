import type { Candidate, SourceScan } from './claim-source.js';

/*
 * The consumer line's decisions from one read (core/queue-line.ts): pure
 * functions of what the read found.
 */

/** The candidates found by one read, and how many consumers wait in line at that revision. */
export interface Scan extends SourceScan {
  waiters: number;
}

/** Our place in line: from one read, brought up to date by the feed's events since. */
export interface State {
  /** Our waiter key still exists with our create revision. */
  alive: boolean;
  /** How many waiters are ahead of us. */
  ahead: number;
  /** Names (under the waiters prefix) of waiters ahead of us, the oldest ones when the line is long. */
  names: Set<string>;
  scan: Scan;
  /** The revision of the read; events after it are applied on top. */
  revision: bigint;
}

/**
 * Candidates left over once every waiter in line has one: a consumer that is
 * not at the head of the line never races the head for what it was woken for.
 */
export function beyondLine(scan: Scan): Candidate[] {
  return scan.cands.length > scan.waiters ? scan.cands.slice(scan.waiters) : [];
}

/**
 * What a consumer in line may claim now: the candidates from its place in
 * line on. Each waiter ahead of it has one of the first ones, so two waiters
 * that read at the same revision never pick the same one.
 */
export function claimableInLine(state: State): Candidate[] {
  if (!state.alive) return [];
  return state.scan.cands.slice(state.ahead);
}

/**
 * The candidates after the feed's events (`now`, in delivery order), as far
 * as the read `scan` vouches for them. When its page had more keys beyond
 * it, unread candidates may come before one put after the page's last, so
 * that one is left for a later read (a waiter deep in line would otherwise
 * take it first). Undefined when a candidate the page showed is gone, so
 * that only a read can tell what follows: read again.
 */
export function vouchedFor(scan: Scan, now: Candidate[] | undefined): Candidate[] | undefined {
  if (!now || !scan.more) return now;
  const last = scan.cands.at(-1);
  if (!last) return now;
  if (now.length < scan.cands.length) return undefined;
  const end = now.findIndex((c) => c.key.equals(last.key));
  return end < 0 ? undefined : now.slice(0, end + 1);
}
