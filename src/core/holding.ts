import { raceAbort } from './abort.js';
import type { WaitOptions } from './options.js';
import { checkOptions, checkSignal } from './validate.js';
import type { ComparatorBuilder } from 'etcd3';
import { markGuard } from './guard.js';
import { HoldTrace, type LockTarget } from './diagnostics.js';
import { LockNotHeldError, withoutStack } from './errors.js';
import { releaseAndHandOver } from './handoff.js';
import { cmp, op, txn } from './kv.js';
import { showKey } from './keys.js';
import type { LocalRelease } from './local-lock.js';
import type { Logger } from './log.js';
import { retrying } from './retry.js';
import type { Session } from './session.js';
import { watchHeldKey } from './own-key.js';

/*
 * What a recipe hands to the caller once it holds something (a lock, a read
 * lock, a permit): the key it holds, its fencing token, a signal that aborts
 * when the hold may be lost, and a release that deletes exactly that key.
 * Shared by Mutex, RWMutex and Semaphore.
 */

/**
 * Deletes our `key`: guarded by its create revision `rev` when known, else
 * (the creating Txn's reply never arrived) by our lease, so that a key of the
 * same name that another lease holds is never deleted. Transient errors are
 * retried until the session's lease is gone anyway. Guarding is
 * wire-compatible with Go (whose Unlock deletes unconditionally) and never
 * deletes a key that a later call re-created. With `line` (the prefix of a
 * line whose head holds), the same Txn reads the new head and hands it the
 * lock if it waits in this process (core/handoff.ts), right after calling
 * `onDeleted`.
 */
export async function deleteOwnKey(
  session: Session,
  key: Buffer,
  rev: bigint | undefined,
  log?: Logger,
  group?: Buffer,
  line?: Buffer,
  onDeleted?: () => void,
): Promise<void> {
  const client = session.client;
  const guard =
    rev === undefined
      ? { key, target: 'Lease' as const, result: '==' as const, value: session.leaseId }
      : cmp.create(key, '==', rev);
  // A group (keys written together under one unique prefix, `key` among them) goes as one.
  const remove = group ? op.deletePrefix(group) : op.delete(key);
  const attempt =
    line && rev !== undefined
      ? () => releaseAndHandOver(client, key, rev, [guard], remove, line, onDeleted)
      : () => txn(client, [guard], [remove]);
  await retrying(attempt, {
    signals: [session.signal],
    maxElapsedMs: Infinity,
    onRetry: (err) => log?.('delete of %s failed, retrying: %s', showKey(key), (err as Error).message),
  }).catch((err) => {
    // Once the session is gone its lease takes the key with it: nothing left to do.
    if (session.expired) return;
    throw err;
  });
}

/**
 * Runs `cleanup` after `inFlight` settles, and only then releases the local
 * turn: a late-landing Txn of an aborted call must not create a key after
 * we deleted it, nor race with the next local caller's key. Resolves when
 * done or after `waitMs`, whichever is first (the cleanup goes on in the
 * background); never rejects.
 */
export function cleanUpAfter(
  inFlight: Promise<unknown>,
  cleanup: () => Promise<void>,
  releaseLocal: LocalRelease,
  log?: Logger,
  waitMs = 1000,
): Promise<void> {
  const done = inFlight
    .catch(() => undefined)
    .then(cleanup)
    .catch((err) => log?.('cleanup failed (the key expires with the lease): %s', (err as Error).message))
    .finally(releaseLocal);
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    done,
    new Promise<void>((r) => {
      timer = setTimeout(r, waitMs);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** A held key: returned by Mutex.acquire, RWMutex.rLock/lock handles, Semaphore.acquire. */
export interface HeldKey extends AsyncDisposable {
  /** The etcd key that represents this hold. */
  readonly key: string;
  /** The key's create revision: a fencing token that grows with every new holder. */
  readonly fencingToken: bigint;
  /**
   * Aborted when the hold ends: released, the session lost (reason: SessionExpiredError), the
   * key deleted by someone else (LockNotHeldError), or the client closed (ClosedError).
   */
  readonly signal: AbortSignal;
  /** True once released (or lost). */
  readonly released: boolean;
  /**
   * True while the hold is certainly ours now: not released or lost, and the
   * session's own deadline not passed (`Session.live`), even before a timer
   * fired. Still guard writes with `ifOwner()`.
   */
  readonly held: boolean;
  /** An etcd3 Txn builder with `CreateRevision(key) == fencingToken` already added. */
  ifOwner(): ComparatorBuilder;
  /**
   * Releases the hold (deletes the key). Idempotent. `options.signal` stops
   * the wait only: the hold ends at once either way, and the delete goes on
   * in the background (or the key expires with the lease).
   */
  release(options?: WaitOptions): Promise<void>;
}

/**
 * @internal The implementation behind every {@link HeldKey}. Its signal is
 * made on first use: a lock taken and released in a loop by code that never
 * looks at it costs no AbortController.
 */
export class Holding implements HeldKey {
  readonly fencingToken: bigint;
  readonly #session: Session;
  readonly #key: Buffer;
  readonly #releaseLocal: LocalRelease;
  readonly #what: string;
  readonly #log: Logger | undefined;
  readonly #group: Buffer | undefined;
  readonly #line: Buffer | undefined;
  #controller: AbortController | undefined;
  #detach: (() => void) | undefined;
  #releasing: Promise<void> | undefined;
  #lostKey = false;
  readonly #trace: HoldTrace | undefined;

  /**
   * `releaseLocal` lets the next local caller on the same per-session key go;
   * it is called once our key is deleted. (When the session is lost instead,
   * the local callers behind us fail on the session's signal by themselves.)
   * `group`: the hold is every key under this prefix (`key` among them), deleted together.
   * `lock`: publish the hold's end on the `etcd-recipes:lock` channels.
   * `line`: the prefix of a line whose head holds; the release hands the lock on in process (deleteOwnKey).
   */
  constructor(
    session: Session,
    key: Buffer,
    rev: bigint,
    releaseLocal: LocalRelease,
    what: string,
    log?: Logger,
    group?: Buffer,
    lock?: LockTarget,
    line?: Buffer,
  ) {
    this.#session = session;
    this.#key = key;
    this.fencingToken = rev;
    this.#releaseLocal = releaseLocal;
    this.#what = what;
    this.#log = log;
    this.#group = group;
    this.#line = line;
    this.#trace = lock && new HoldTrace(lock, session.signal, key, rev);
  }

  get key(): string {
    return this.#key.toString();
  }

  /** The key as bytes. */
  get keyBuffer(): Buffer {
    return this.#key;
  }

  get signal(): AbortSignal {
    if (!this.#controller) {
      const controller = new AbortController();
      this.#controller = controller;
      const lost = this.#session.signal;
      if (this.#releasing) controller.abort(this.#releasedReason());
      else if (lost.aborted) controller.abort(lost.reason);
      else {
        const onLost = () => {
          stopWatching();
          controller.abort(lost.reason);
        };
        lost.addEventListener('abort', onLost, { once: true });
        // Someone else may delete our key (an operator, a revoked lease): the hold is then lost too.
        const stopWatching = watchHeldKey(this.#session, this.#key, this.fencingToken, this.#what, (reason) => {
          this.#lostKey = true;
          this.#trace?.lost(reason);
          this.#log?.('%s lost: %s', this.#what, reason.message);
          lost.removeEventListener('abort', onLost);
          controller.abort(reason);
        });
        this.#detach = () => {
          lost.removeEventListener('abort', onLost);
          stopWatching();
        };
      }
    }
    return this.#controller.signal;
  }

  get released(): boolean {
    return !!this.#releasing || this.#lostKey || this.#session.expired;
  }

  get held(): boolean {
    return !this.released && this.#session.live;
  }

  ifOwner(): ComparatorBuilder {
    if (this.released) throw new LockNotHeldError(`${this.#what} is not held (released or session lost)`);
    return markGuard(
      this.#session.client.if(this.#key, 'Create', '==', this.fencingToken.toString()),
      'LOCK_NOT_HELD',
      this.#what,
    );
  }

  release(options?: WaitOptions): Promise<void> {
    if (options !== undefined) {
      checkOptions(options);
      checkSignal(options.signal);
      return raceAbort(this.release(), options.signal);
    }
    if (this.#releasing) return this.#releasing;
    let done!: () => void;
    let failed!: (err: unknown) => void;
    // Assigned before anything else runs: a listener of our signal may call release() again.
    this.#releasing = new Promise<void>((resolve, reject) => {
      done = resolve;
      failed = reject;
    });
    void (async () => {
      this.#detach?.();
      const controller = this.#controller;
      if (controller && !controller.signal.aborted) controller.abort(this.#releasedReason());
      try {
        // The local turn passes on only after our key is gone: the next local caller would
        // otherwise adopt our key (same lease, same name) and then see it deleted under it.
        // Told as soon as the delete landed: an in-process hand-over lets the next holder in right after.
        let told = false;
        const tell = () => {
          told = true;
          this.#log?.('%s released (token %s)', this.#what, this.fencingToken);
          if (this.#session.expired) this.#trace?.lost(this.#session.signal.reason);
          else this.#trace?.released();
        };
        if (!this.#session.expired)
          await deleteOwnKey(this.#session, this.#key, this.fencingToken, this.#log, this.#group, this.#line, tell);
        if (!told) tell();
        done();
      } catch (err) {
        failed(err);
      } finally {
        this.#releaseLocal();
      }
    })();
    return this.#releasing;
  }

  #releasedReason(): LockNotHeldError {
    return withoutStack(() => new LockNotHeldError(`${this.#what} released`));
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.release();
  }
}
