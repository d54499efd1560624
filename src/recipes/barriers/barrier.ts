import type { WaitOptions } from '../../core/options.js';
import type { Namespace } from 'etcd3';
import { linkSignals } from '../../core/abort.js';
import { checkGuard, resolveGuard, type Guard } from '../../core/guard.js';
import { ReceiptBook } from '../../core/receipts.js';
import { joinKey, showKey, toBuffer } from '../../core/keys.js';
import { cmp, op, range } from '../../core/kv.js';
import { logger } from '../../core/log.js';
import { retryingUntil } from '../../core/retry.js';
import { checkSession, type Session } from '../../core/session.js';
import { checkClient, checkName, checkWaitOptions } from '../../core/validate.js';
import { waitInLine, type LineState } from '../../core/wait.js';

const log = logger('barrier');

/** Options of {@link Barrier.hold}. */
export interface BarrierHoldOptions {
  /**
   * Attach the barrier key to this session's lease: if the holder dies (or
   * closes the session) the key expires and the barrier opens by itself.
   * Without it the key has no lease, as in Go, and stays until someone
   * calls `release()`.
   */
  session?: Session;
  /** Abort the call; it then rejects with the signal's reason and leaves no key behind. */
  signal?: AbortSignal;
  /**
   * Fencing: hold only if these compares hold (e.g. `election.ifLeader()`), in the same Txn; else
   * reject with the guard's code.
   */
  guard?: Guard;
}

/** Options of {@link Barrier.wait}, {@link Barrier.release} and {@link Barrier.isHeld}. */
export type BarrierWaitOptions = WaitOptions;

/**
 * A barrier: while it is held, {@link Barrier.wait} blocks; `release()` lets
 * every waiter through at once. Wire-compatible with Go's
 * `recipe.Barrier` (`experimental/recipes`): the barrier is held while the
 * key exists, exactly `key`, with an empty value.
 *
 * Any process may hold or release the barrier; it is not owned by whoever
 * held it. A waiter returns once the hold it saw is released, even if the
 * barrier is held again right after (it waits for the delete, not for a
 * moment when the key is absent).
 */
export class Barrier {
  /** The etcd3 client (or namespace) the barrier uses. */
  readonly client: Namespace;
  /** The barrier key: the barrier is held while this exact key exists. */
  readonly key: string | Buffer;
  readonly #key: Buffer;
  readonly #what: string;
  /** Receipts of this barrier's holds and releases (`__<key>/receipts/`), deleted once their call returned. */
  readonly #book: ReceiptBook;

  /**
   * @param client - an etcd3 client or namespace
   * @param key - the barrier key (Go's `key`); written as is, no suffix
   * @throws InvalidArgumentError for a non-client or an empty key
   */
  constructor(client: Namespace, key: string | Buffer) {
    checkClient(client);
    checkName(key, 'key');
    this.#key = toBuffer(key);
    this.#what = `barrier ${showKey(key)}`;
    this.#book = new ReceiptBook(client, joinKey('__', key, '/receipts/'));
    this.client = client;
    this.key = key;
  }

  /**
   * Holds the barrier: creates the key if it does not exist (Go's `Hold`),
   * with an empty value and no lease, or the lease of `options.session`.
   *
   * @returns true if this call created the key; false if the barrier was
   *   already held (by anyone, including an earlier call of this process).
   *   Go returns `ErrKeyExists` for the latter. Either way the barrier is
   *   held when the promise resolves.
   * @throws SessionExpiredError if `options.session` is no longer usable
   */
  async hold(options: BarrierHoldOptions = {}): Promise<boolean> {
    checkWaitOptions(options);
    checkGuard(options.guard);
    const { session } = options;
    if (session !== undefined) checkSession(session, 'options.session');
    options.signal?.throwIfAborted();
    session?.throwIfExpired();
    const lease = session?.leaseId;
    const linked = linkSignals(options.signal, session?.signal);
    try {
      const guard = await resolveGuard(this.client, options.guard);
      // A receipt proves a landed hold after a lost reply, even once someone released it again.
      const out = await this.#book
        .write(
          {
            compares: [cmp.version(this.#key, '==', 0n), ...guard.compares],
            success: [op.put(this.#key, '', lease)],
            failure: guard.reads,
          },
          { signal: linked.signal, what: `${this.#what}: hold` },
        )
        .catch((err: unknown) => {
          // The session's lease may be gone on the server before the session noticed.
          throw session ? session.leaseError(err, this.#what) : err;
        });
      if (out.landed && out.aborted !== undefined) {
        // Given up, yet the hold landed: take it back (only this very hold, by its create revision).
        await this.#book
          .write(
            { compares: [cmp.create(this.#key, '==', out.revision)], success: [op.delete(this.#key)] },
            { what: `${this.#what}: undo an aborted hold` },
          )
          .catch((err: unknown) => log('%s: could not undo: %s', this.#what, (err as Error).message));
        throw out.aborted;
      }
      if (!out.landed && !guard.holds(out.failure)) throw guard.error(`${this.#what}: hold`);
      log('%s: %s', this.#what, out.landed ? `held${lease ? ` (lease ${session!.leaseHex})` : ''}` : 'already held');
      return out.landed;
    } finally {
      linked.dispose();
      await this.#flushReceipts();
    }
  }

  /**
   * Releases the barrier: deletes the key (Go's `Release`), whoever held it,
   * and so lets every waiter through.
   * @returns true if the barrier was held (a key was deleted), false if not
   */
  async release(options: BarrierWaitOptions = {}): Promise<boolean> {
    checkWaitOptions(options);
    try {
      const out = await this.#book.write(
        {
          compares: [cmp.version(this.#key, '>', 0n)],
          success: [op.delete(this.#key)],
        },
        { signal: options.signal, what: `${this.#what}: release` },
      );
      log('%s: %s', this.#what, out.landed ? 'released' : 'release: was not held');
      return out.landed;
    } finally {
      await this.#flushReceipts();
    }
  }

  async #flushReceipts(): Promise<void> {
    await this.#book
      .flush()
      .catch((err: unknown) => log('%s: receipt cleanup failed: %s', this.#what, (err as Error).message));
  }

  /** True if the barrier is held right now (one linearizable read). */
  async isHeld(options: BarrierWaitOptions = {}): Promise<boolean> {
    checkWaitOptions(options);
    options.signal?.throwIfAborted();
    const r = await retryingUntil(options.signal, () => range(this.client, this.#key, { countOnly: true }));
    return r.count > 0n;
  }

  /**
   * Returns once the barrier is not held: at once if it is not held now,
   * else when the hold seen now is released (Go's `Wait`). A release
   * followed at once by a new hold still lets this waiter through.
   * Survives etcd restarts, leader changes and compaction of the watched
   * revision.
   */
  async wait(options: BarrierWaitOptions = {}): Promise<void> {
    checkWaitOptions(options);
    options.signal?.throwIfAborted();
    const initial = await retryingUntil(options.signal, () => this.#readHold(undefined));
    if (!initial.blocker) return;
    // The hold we wait for is identified by its create revision: a key
    // with another create revision means ours was deleted meanwhile.
    const heldAt = initial.blocker.kind === 'key' ? initial.blocker.createRevision : 0n;
    log('%s: waiting for the hold created at %s to be released', this.#what, heldAt);
    // waitInLine needs a signal; without the caller's, one that never aborts.
    const signal = options.signal ?? new AbortController().signal;
    await waitInLine(this.client, { initial, read: () => this.#readHold(heldAt), signal, what: this.#what, log });
    log('%s: released, waiter passes', this.#what);
  }

  /**
   * One read of the key. Blocked while the key exists and (once we know
   * which hold we wait for) still has that hold's create revision.
   */
  async #readHold(heldAt: bigint | undefined): Promise<LineState> {
    const r = await range(this.client, this.#key);
    const kv = r.kvs[0];
    const blocked = !!kv && (heldAt === undefined || kv.createRevision === heldAt);
    return {
      alive: true,
      revision: r.revision,
      blocker: blocked ? { kind: 'key', key: this.#key, createRevision: kv.createRevision } : undefined,
    };
  }
}
