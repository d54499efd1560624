import type { Logger } from './log.js';
import type { Namespace } from 'etcd3';
import type { Op, OpResult } from './kv.js';
import type { Session } from './session.js';
import type { WatchEvent, WatchSpec } from './watch-hub.js';

/*
 * What a recipe tells the consumer line (core/queue-line.ts) about its
 * items, and where the line gets its lease from.
 */

/** How many leading candidates a read returns (keys only). */
export const WINDOW = 16;

/** A claimable item: its key and the revision the claim compares against. */
export interface Candidate {
  key: Buffer;
  /** Mod revision (Queue, PriorityQueue) or create revision (WorkQueue jobs). */
  rev: bigint;
  /** The item's value at `rev`, when the read that found it carried it. */
  value?: Buffer;
}

/** What a recipe's own scan ops found. */
export interface SourceScan {
  /** Claimable candidates, in delivery order. */
  cands: Candidate[];
  /** True when the read window held no claimable candidate but more keys exist: read again. */
  incomplete?: boolean;
  /** True when keys beyond the read window may be candidates too. */
  more?: boolean;
}

/** A consumer's own waiter key. */
export interface Waiter {
  key: Buffer;
  rev: bigint;
}

/** What a claim attempt knows. */
export interface ClaimContext {
  session: Session;
  /** Unique per claim attempt (the same across retries of that attempt). */
  attemptId: string;
  /** The consumer's waiter key, to delete in the claim Txn. */
  waiter: Waiter | undefined;
  /** Range ops that re-read the candidates; put them last in a branch and hand back their responses. */
  scan: Op[];
  /** The caller's signal. */
  signal: AbortSignal | undefined;
}

export type ClaimOutcome<R> = { won: true; result: R; next?: OpResult[] } | { won: false; scan: OpResult[] };

/** What a recipe tells the line about its items. */
export interface ClaimSource<R> {
  readonly client: Namespace;
  readonly what: string;
  readonly log: Logger;
  /** Prefix of the waiter keys (ends with '/'). */
  readonly waitersPrefix: Buffer;
  /** What the waiters watch (from "now"): the waiter keys and every change to the candidates. */
  readonly watches: WatchSpec[];
  /** Range ops (inside a Txn) that read the candidates. */
  scanOps(): Op[];
  /** Candidates from the responses of {@link scanOps}. */
  parseScan(results: OpResult[]): SourceScan;
  /**
   * The candidates after `events` (keys outside the waiters prefix, in order), in delivery
   * order; undefined when only a read can tell.
   */
  update(cands: Candidate[], events: WatchEvent[]): Candidate[] | undefined;
  /** How many leading candidates may be taken in any order (e.g. those of the first one's priority). */
  interchangeable(cands: Candidate[]): number;
  /**
   * One claim, seen through until its outcome is known (the source retries
   * transient errors itself, with its own proof). Rejects only when the
   * outcome cannot be had: the session it depends on is lost, the signal
   * aborted (after voiding the claim), or the client closed.
   */
  claim(c: Candidate, ctx: ClaimContext): Promise<ClaimOutcome<R>>;
}

/** Where a take gets its lease from. */
export interface SessionSource {
  /** A live session; may create one. */
  acquire(signal: AbortSignal | undefined): Promise<Session>;
  /** True when a lost session may be replaced by a new one (Queue); false ends the take (WorkQueue). */
  readonly replaceable: boolean;
  /** A take starts / ends (for idle handling). */
  begin(): void;
  end(): void;
}
