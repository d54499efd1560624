import type { Candidate, SourceScan } from './claim-source.js';
import type { KeyValue } from './kv.js';
import type { WatchEvent } from './watch-hub.js';

/*
 * The consumer line's decisions from one read and the feed's events since
 * (core/queue-line.ts): pure functions of what the read found.
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

/** Our state from one read: the names of the waiters ahead (all but our own key) from `line`. */
export function lineState(
  alive: boolean,
  line: KeyValue[],
  ahead: number,
  own: Buffer,
  waitersPrefix: Buffer,
  revision: bigint,
  scan: Scan,
): State {
  const names = new Set(
    line.filter((kv) => !kv.key.equals(own)).map((kv) => kv.key.subarray(waitersPrefix.length).toString('latin1')),
  );
  return { alive, ahead, names, scan, revision };
}

/**
 * Our state after `events` (those after its read): waiters that left or
 * joined under `prefix`, our own key (`own`) gone, candidates put or taken (`update`, the
 * recipe's rule). Undefined when only a read can tell (a candidate came
 * back, or the names of the waiters ahead that the read returned are all
 * gone while more are ahead).
 */
export function advance(
  state: State,
  events: WatchEvent[],
  own: Buffer,
  prefix: Buffer,
  update: (cands: Candidate[], items: WatchEvent[]) => Candidate[] | undefined,
): State | undefined {
  const items: WatchEvent[] = [];
  let { alive, ahead, scan } = state;
  let waiters = scan.waiters;
  const names = state.names;
  for (const e of events) {
    const key = e.kv.key;
    if (e.kv.modRevision <= state.revision) continue;
    if (key.length <= prefix.length || key.compare(prefix, 0, prefix.length, 0, prefix.length) !== 0) {
      items.push(e);
    } else if (e.type === 'put') {
      if (e.kv.version === 1n) waiters++;
    } else {
      waiters--;
      if (key.equals(own)) alive = false;
      else if (names.delete(key.subarray(prefix.length).toString('latin1'))) ahead--;
    }
  }
  if (ahead > 0 && !names.size) return undefined;
  const cands = items.length ? vouchedFor(scan, update(scan.cands, items)) : scan.cands;
  if (!cands) return undefined;
  scan = { ...scan, cands, waiters };
  return { alive, ahead, names, scan, revision: state.revision };
}
