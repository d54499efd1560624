import type { Candidate, SourceScan } from './claim-source.js';
import type { LineState } from './wait.js';

/*
 * The consumer line's decisions from one read (core/queue-line.ts): pure
 * functions of what the read found.
 */

/** The candidates found by one read, and how many consumers wait in line at that revision. */
export interface Scan extends SourceScan {
  waiters: number;
}

/** Our place in line after one read. */
export interface State {
  /** Our waiter key still exists with our create revision. */
  alive: boolean;
  /** The waiter just ahead of us, if any. */
  pred?: { key: Buffer; createRevision: bigint };
  scan: Scan;
  revision: bigint;
}

/**
 * Candidates left over once every waiter in line has one: a consumer that is
 * not at the head of the line never races the head for what it was woken for.
 */
export function beyondLine(scan: Scan): Candidate[] {
  return scan.cands.length > scan.waiters ? scan.cands.slice(scan.waiters) : [];
}

/** What a consumer in line may claim now: everything at the head, the surplus elsewhere. */
export function claimableInLine(state: State): Candidate[] {
  if (!state.alive) return [];
  return state.pred ? beyondLine(state.scan) : state.scan.cands;
}

/** True when `state` is the head of the line with nothing to claim: time to watch the items. */
export function idleHead(state: State): boolean {
  return state.alive && !state.pred && !state.scan.cands.length && !state.scan.incomplete;
}

/** Our place in line as `waitInLine` sees it: blocked by our predecessor until there is something for us. */
export function lineState(s: State): LineState<State> {
  const settled = !s.pred || claimableInLine(s).length > 0 || !!s.scan.incomplete;
  const blocker = settled ? undefined : { kind: 'key' as const, ...s.pred! };
  return { alive: s.alive, revision: s.revision, blocker, data: s };
}
