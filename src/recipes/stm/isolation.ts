import type { STMIsolation } from './types.js';

/*
 * The isolation levels as a table of policies, as Go's mkSTM builds each level
 * from a few closures: what an attempt reads at, what its commit compares, and
 * what the commit's Else branch reads back. docs/stm.md has the same table for
 * users.
 */

/** What one isolation level does. */
export interface IsolationPolicy {
  /**
   * Reads come from one snapshot: the attempt's first read is linearizable and
   * its revision pins every later read (member-local at that revision).
   * Otherwise every read is member-local and unpinned.
   */
  readonly snapshot: boolean;
  /** The commit compares `MOD(k) == rev` for every key read and `MOD(prefix) < at + 1` for every range. */
  readonly guardReads: boolean;
  /** The commit compares `MOD(w) < snapshot + 1` for every key written, read or not. */
  readonly guardWrites: boolean;
  /**
   * What a failed commit's Else branch reads of the read set: the values (the
   * next attempt is served from them, as Go does), the mod revisions only (to
   * name the conflicting keys), or nothing (a commit that cannot fail).
   */
  readonly elseReads: 'values' | 'keys' | 'none';
}

export const policies: Readonly<Record<STMIsolation, IsolationPolicy>> = {
  'serializable-snapshot': { snapshot: true, guardReads: true, guardWrites: true, elseReads: 'values' },
  serializable: { snapshot: true, guardReads: true, guardWrites: false, elseReads: 'values' },
  'repeatable-reads': { snapshot: false, guardReads: true, guardWrites: false, elseReads: 'keys' },
  'read-committed': { snapshot: false, guardReads: false, guardWrites: false, elseReads: 'none' },
};

/**
 * Operations in the commit Txn's largest branch for `reads` keys read,
 * `ranges` ranges read and `writes` keys written: what etcd's
 * `--max-txn-ops` limits.
 */
export function opsNeeded(policy: IsolationPolicy, reads: number, ranges: number, writes: number): number {
  if (!policy.guardReads) return writes;
  const guarded = reads + ranges;
  // serializable-snapshot compares every key written too, once anything was read.
  if (policy.guardWrites) return guarded > 0 ? guarded + writes : writes;
  return Math.max(guarded, writes);
}

/**
 * Whether a read-only attempt needs a commit Txn to validate what it read
 * (`seenAt`: the revision of each key and range read). A snapshot that is one
 * revision, whose first read was linearizable, is already a serializable,
 * linearizable answer; Go sends a compare-only Txn anyway, with the same
 * outcome.
 */
export function readOnlyNeedsCommit(policy: IsolationPolicy, seenAt: readonly bigint[]): boolean {
  if (!policy.guardReads || seenAt.length === 0) return false;
  return !(policy.snapshot && seenAt.every((at) => at === seenAt[0]));
}
