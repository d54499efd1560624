import type { Namespace } from 'etcd3';
import { abortReason, delay } from '../../core/abort.js';
import { traced } from '../../core/diagnostics.js';
import { STMConflictError } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import { checkClient, checkFunction } from '../../core/validate.js';
import { Attempt } from './attempt.js';
import { commit } from './commit.js';
import { readConfig, type STMConfig } from './config.js';
import { type Prefetched, RestartAttempt } from './reads.js';
import type { STMOptions, STMTransaction } from './types.js';

const log = logger('stm');

/*
 * Software transactional memory over etcd, with Go's clientv3/concurrency
 * semantics (stm.go): reads go to a read set, writes are buffered in a write
 * set, and one Txn commits the writes if compares chosen by the isolation
 * level still hold. Differences from Go, all on purpose: absent keys read as
 * undefined, retries are bounded and back off, an AbortSignal ends the call,
 * oversized transactions fail before they reach etcd, reads issued together
 * share one round trip, and a read-only attempt whose reads come from one
 * revision needs no commit Txn. docs/stm.md explains each of these.
 */

type Outcome<T> = { committed: true; value: T } | { committed: false; keys: string[] };

/**
 * Runs `fn` as a transaction on etcd and returns what `fn` returns.
 *
 * `fn` reads through `tx.get*` and writes through `tx.put*` / `tx.delete`;
 * the writes are committed in one etcd Txn, guarded by compares chosen by
 * the isolation level (Go's exact compares). On a conflict `fn` runs again
 * from scratch on fresh data, so **`fn` must be free of side effects** (no
 * writes outside `tx`, no messages sent, no counters bumped): it can run
 * several times, and only the last run's writes are committed.
 *
 * An error thrown by `fn` ends the call at once with that error; nothing of
 * that attempt is committed.
 *
 * @param client - an etcd3 client or namespace (keys are relative to its prefix)
 * @param fn - the transaction body
 * @param options - isolation, retries, prefetch, signal, maxTxnOps, backoff
 * @returns `fn`'s return value from the attempt that committed
 * @throws STMConflictError when the retries ran out (its `keys` name the keys whose compares failed last)
 * @throws InvalidArgumentError for bad arguments (before anything is sent), bad `tx` calls inside `fn`,
 *   or a transaction larger than `maxTxnOps`
 * @throws the signal's reason when `options.signal` aborts
 */
export async function runSTM<T>(
  client: Namespace,
  fn: (tx: STMTransaction) => T | PromiseLike<T>,
  options: STMOptions = {},
): Promise<T> {
  checkClient(client);
  checkFunction(fn, 'fn');
  const config = readConfig(client, options);
  config.signal?.throwIfAborted();
  let attempts = 0;
  return traced(
    'stm',
    () => ({ isolation: config.isolation, retries: config.retries }),
    () =>
      retryLoop(config, (attempt, prefetched) => {
        attempts = attempt;
        return traced(
          'stmAttempt',
          () => ({ attempt, isolation: config.isolation }),
          () => runAttempt(config, fn, new Attempt(config, attempt, prefetched)),
          (o) => ({ outcome: o.committed ? 'commit' : 'conflict', conflictKeys: o.committed ? [] : o.keys }),
        );
      }),
    () => ({ attempts }),
  );
}

/** Runs attempts until one commits, the retries run out, or something fails. */
async function retryLoop<T>(
  config: STMConfig,
  attempt: (n: number, prefetched: Prefetched | undefined) => Promise<Outcome<T> & { prefetched?: Prefetched }>,
): Promise<T> {
  let prefetched: Prefetched | undefined;
  for (let n = 1; ; n++) {
    config.signal?.throwIfAborted();
    let outcome: Outcome<T> & { prefetched?: Prefetched };
    try {
      outcome = await attempt(n, prefetched);
    } catch (err) {
      if (!(err instanceof RestartAttempt)) throw err;
      if (n > config.retries) throw err.original;
      log('attempt %d restarts: %s', n, err.message);
      prefetched = undefined;
      await backoff(config, n + 1);
      continue;
    }
    if (outcome.committed) {
      if (n > 1) log('committed on attempt %d', n);
      return outcome.value;
    }
    if (n > config.retries) {
      log('giving up after %d attempts; conflicting keys %o', n, outcome.keys);
      throw new STMConflictError(outcome.keys, n);
    }
    log('attempt %d conflicted on %o', n, outcome.keys);
    // The first retry runs at once on the Else branch's fresh data (as Go does); later ones back off, and
    // then read afresh: data prefetched before a wait is the likeliest to be stale again.
    prefetched = outcome.prefetched;
    if (n >= 2) {
      prefetched = undefined;
      await backoff(config, n);
    }
  }
}

/** Full-jitter exponential backoff before attempt `attempt + 1`: up to initialMs · 2^(attempt-2), capped. */
function backoff({ backoff: { initialMs, maxMs }, signal }: STMConfig, attempt: number): Promise<void> {
  return delay(Math.random() * Math.min(maxMs, initialMs * 2 ** Math.max(0, attempt - 2)), signal);
}

async function runAttempt<T>(
  config: STMConfig,
  fn: (tx: STMTransaction) => T | PromiseLike<T>,
  tx: Attempt,
): Promise<Outcome<T> & { prefetched?: Prefetched }> {
  const { signal } = config;
  let value: T;
  try {
    for (const key of config.prefetch) tx.reads.key(key).catch(() => undefined);
    value = await fn(tx);
  } catch (err) {
    tx.close();
    if (signal?.aborted) throw abortReason(signal);
    if (tx.reads.failure !== undefined) throw tx.reads.failure;
    throw err;
  }
  tx.close();
  await tx.reads.settle();
  // A read failure that fn caught and ignored still fails the attempt.
  if (tx.reads.failure !== undefined) throw tx.reads.failure;
  signal?.throwIfAborted();
  tx.checkSize(0, 0);
  const conflict = await commit(config, tx);
  return conflict ? { committed: false, ...conflict } : { committed: true, value };
}
