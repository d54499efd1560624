import type { Namespace } from 'etcd3';
import { isRecipeError, OutcomeUnknownError } from '../../core/errors.js';
import { showKey } from '../../core/keys.js';
import { type Compare, cmp, type Op, type OpResult, op, type TxnParts } from '../../core/kv.js';
import { logger } from '../../core/log.js';
import { type ProvenWriteOptions, ReceiptBook } from '../../core/receipts.js';
import { isTransient } from '../../core/etcd-errors.js';
import type { Attempt } from './attempt.js';
import type { STMConfig } from './config.js';
import { readOnlyNeedsCommit } from './isolation.js';
import { type CommitResult, Lane } from './lane.js';
import { type Prefetched, type Read, RestartAttempt, readKeys } from './reads.js';

const log = logger('stm');

const books = new WeakMap<Namespace, ReceiptBook>();
/** Clients whose role grants the user's keys but not the receipts: their commits go without. */
const refused = new WeakSet<Namespace>();

/**
 * Commits with a receipt (docs/stm.md, "Keys in etcd"), for a client that
 * re-sends failed calls unseen: a re-sent copy that fails its compares
 * because the first copy applied finds the receipt, instead of passing for a
 * conflict and running `fn` again. Resolves with undefined once landed.
 */
async function withReceipt(
  config: STMConfig,
  parts: TxnParts,
  send: NonNullable<ProvenWriteOptions['send']>,
  cleanup: number,
  unproven: () => Promise<CommitResult>,
): Promise<CommitResult | undefined> {
  const { client, signal } = config;
  const book = books.get(client) ?? new ReceiptBook(client, Buffer.from('__stm/receipts/'), false);
  books.set(client, book);
  try {
    const out = await book.write(parts, { what: 'STM commit', signal, send, cleanup });
    return out.landed ? undefined : { succeeded: false, revision: out.revision, responses: out.failure };
  } catch (err) {
    if (!isRecipeError(err, 'PERMISSION_DENIED')) throw err;
    const res = await unproven(); // refused too if the user's own keys are forbidden
    log('receipts refused (permission denied): commits on this client go without them');
    refused.add(client);
    return res;
  }
}

/** A commit that did not apply: the keys whose compares failed, and (snapshot levels) the Else branch's data. */
export interface Conflict {
  readonly keys: string[];
  readonly prefetched: Prefetched | undefined;
}

const modOf = (read: Read): bigint => (read.kv ? read.kv.modRevision : 0n);

const kvAt = (responses: OpResult[], i: number) => {
  const r = responses[i];
  return r?.type === 'range' ? r : undefined;
};

/**
 * Commits `tx` in one Txn, `If(compares).Then(writes).Else(reads)`, with Go's
 * compares for the isolation level. Resolves with undefined once committed
 * (or when nothing needs committing), else with the conflict.
 */
export async function commit(config: STMConfig, tx: Attempt): Promise<Conflict | undefined> {
  const { policy } = config;
  const reads = [...tx.reads.keys].map(([id, e]) => ({ id, key: e.key, read: e.read! }));
  const ranges = [...tx.reads.ranges.values()];
  const writes = [...tx.writes.values()];
  const seenAt = [...reads.map((r) => r.read.at), ...ranges.map((g) => g.at)];
  if (writes.length === 0 && !readOnlyNeedsCommit(policy, seenAt)) return undefined;

  const compares: Compare[] = [];
  if (policy.guardReads) {
    for (const r of reads) compares.push(cmp.mod(r.key, '==', modOf(r.read)));
    // No key under the range modified (or created) after it was read. A deleted key has no mod revision
    // left to compare: its own compare above catches it (every key a range returned is in the read set).
    for (const g of ranges) compares.push({ ...cmp.mod(g.prefix, '<', g.at + 1n), prefix: true });
  }
  // Go: MOD(w) < first + 1 for every key written, read or not, where first is the snapshot (rset.first()).
  const snapshot = policy.guardWrites && seenAt.length > 0 ? seenAt.reduce((a, b) => (b < a ? b : a)) : undefined;
  if (snapshot !== undefined) for (const w of writes) compares.push(cmp.mod(w.key, '<', snapshot + 1n));
  const blind = snapshot === undefined ? [] : [...tx.writes].filter(([id]) => !tx.reads.keys.has(id));
  // Go's Else branch re-reads the read set (to serve the next attempt); ours also reads the mod revisions
  // of blind writes and whether each range changed, keys only, to name the conflicting keys.
  const failure: Op[] = [];
  if (policy.elseReads !== 'none') {
    for (const r of reads) failure.push(op.range(r.key, { keysOnly: policy.elseReads === 'keys' }));
  }
  for (const [, w] of blind) failure.push(op.range(w.key, { keysOnly: true }));
  if (policy.guardReads) {
    for (const g of ranges)
      failure.push(op.range(g.prefix, { prefix: true, minModRevision: g.at + 1n, countOnly: true }));
  }
  const success = writes.map((w) => (w.value === undefined ? op.delete(w.key) : op.put(w.key, w.value)));

  // Transactions without ranges may share a Txn with others on disjoint keys (lane.ts).
  const keys = ranges.length === 0 ? new Set([...reads.map((r) => r.id), ...tx.writes.keys()]) : undefined;
  const lane = Lane.of(config.client);
  const send = (c: Compare[], s: Op[], f: Op[]) =>
    lane.commit({ compares: c, success: s, failure: f }, keys, config.maxTxnOps);
  const unproven = () =>
    send(compares, success, failure).catch((err: unknown) => {
      if (!isTransient(err)) throw err;
      return lostReply(config, tx, err);
    });
  const room = config.maxTxnOps - 1 - Math.max(compares.length, success.length, failure.length);
  const res =
    config.receipts && writes.length > 0 && room >= 0 && !refused.has(config.client)
      ? await withReceipt(config, { compares, success, failure }, send, Math.min(32, room >> 1), unproven)
      : await unproven();
  if (!res || res.succeeded) return undefined;

  // Conflict: name the keys whose compares failed, from the Else branch's reads.
  const conflicting: string[] = [];
  const prefetched = new Map<string, Read>();
  reads.forEach((r, i) => {
    const cur = kvAt(res.responses, i)?.kvs[0] ?? null;
    const mod = cur ? cur.modRevision : 0n;
    const overwritten = snapshot !== undefined && tx.writes.has(r.id) && mod >= snapshot + 1n;
    if (mod !== modOf(r.read) || overwritten) conflicting.push(showKey(r.key));
    if (policy.elseReads === 'values') prefetched.set(r.id, { kv: cur, at: res.revision });
  });
  blind.forEach(([, w], i) => {
    const cur = kvAt(res.responses, reads.length + i)?.kvs[0];
    if (cur && snapshot !== undefined && cur.modRevision >= snapshot + 1n) conflicting.push(showKey(w.key));
  });
  ranges.forEach((g, i) => {
    if ((kvAt(res.responses, reads.length + blind.length + i)?.count ?? 0n) > 0n)
      conflicting.push(`${showKey(g.prefix)}*`);
  });
  return {
    keys: conflicting,
    prefetched: policy.elseReads === 'values' ? { reads: prefetched, at: res.revision } : undefined,
  };
}

/**
 * The commit's reply was lost. A read-only commit changed nothing: start
 * over. Otherwise, if a written key was last modified at or before the newest
 * revision this attempt saw, our Txn did not apply (had it, that key's mod
 * revision would be the Txn's, or 0 if deleted since): start over. Else the
 * Txn may have applied: the caller must check.
 */
async function lostReply(config: STMConfig, tx: Attempt, err: unknown): Promise<never> {
  const message = (err as Error).message;
  const writes = [...tx.writes.values()];
  if (writes.length === 0) throw new RestartAttempt(`read-only commit failed: ${message}`, err);
  if (tx.reads.maxSeen > 0n) {
    const keys = writes.map((w) => w.key);
    const found = await readKeys(config, keys, { keysOnly: true }).catch(() => undefined);
    if (found?.kvs.some((kv) => kv !== null && kv.modRevision > 0n && kv.modRevision <= tx.reads.maxSeen)) {
      throw new RestartAttempt(`commit failed without applying: ${message}`, err);
    }
  }
  log('commit outcome unknown: %s', message);
  throw new OutcomeUnknownError(
    `STM commit of ${writes.length} write(s): the Txn was sent and its reply lost (${message}); ` +
      'it may or may not have applied. Check your own state before running the transaction again.',
    { cause: err },
  );
}
