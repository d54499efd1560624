import { raceAbort } from './abort.js';
import type { WaitOptions } from './options.js';
import { checkOptions, checkSignal } from './validate.js';
import type { ComparatorBuilder } from 'etcd3';
import { markGuard } from './guard.js';
import { HoldTrace, type LockTarget } from './diagnostics.js';
import { LockNotHeldError, NotLeaderError, withoutStack } from './errors.js';
import { releaseAndHandOver } from './handoff.js';
import { cmp, op, txn } from './kv.js';
import { showKey } from './keys.js';
import type { LocalRelease } from './local-lock.js';
import type { Logger } from './log.js';
import { retrying } from './retry.js';
import type { Session } from './session.js';
import { watchHeldKey } from './own-key.js';

/*
 * The one owned key (Go's EphemeralKV): what a recipe holds once it holds
 * something (a lock, a read lock, a permit, an election term, a work-queue
 * claim): the key, its fencing token, a signal that aborts when the hold may
 * be lost, and a release that deletes exactly that key. See docs/internals.md,
 * "One owned key".
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
 * What a hold logs and publishes, how a hold that is not a lock differs from
 * one (docs/internals.md, "One owned key"), and a lock line's handoff.
 */
interface HoldingOptions {
  log?: Logger;
  /** The hold is every key under this prefix (`key` among them), deleted together. */
  group?: Buffer;
  /** Publish the hold's end on the `etcd-recipes:lock` channels. */
  lock?: LockTarget;
  /** An election term: its errors say NOT_LEADER, not LOCK_NOT_HELD. */
  term?: boolean;
  /**
   * Called (a microtask later) once the hold is lost rather than released;
   * the next local caller is let go first, not at release(). Makes the
   * hold follow the session from the start, not from the first look at its signal.
   */
  onLost?: (reason: unknown) => void;
  /**
   * A lock's line whose head holds (Mutex, RWMutex), by prefix: the release
   * reads the new head and hands the lock on in process (deleteOwnKey).
   */
  line?: Buffer;
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
  readonly #options: HoldingOptions;
  #controller: AbortController | undefined;
  #unlink: (() => void) | undefined;
  #stopWatch: (() => void) | undefined;
  #watchPaused = false;
  #releasing: Promise<void> | undefined;
  #lost = false;
  readonly #trace: HoldTrace | undefined;

  /**
   * `releaseLocal` lets the next local caller on the same per-session key go;
   * it is called once our key is deleted. (When the session is lost instead,
   * the local callers behind us fail on the session's signal by themselves.)
   */
  constructor(
    session: Session,
    key: Buffer,
    rev: bigint,
    releaseLocal: LocalRelease,
    what: string,
    options: HoldingOptions = {},
  ) {
    this.#session = session;
    this.#key = key;
    this.fencingToken = rev;
    this.#releaseLocal = releaseLocal;
    this.#what = what;
    this.#trace = options.lock && new HoldTrace(options.lock, session.signal, key, rev);
    this.#options = options;
    if (options.onLost) this.#link();
  }

  get key(): string {
    return this.#key.toString();
  }

  /** The key as bytes. */
  get keyBuffer(): Buffer {
    return this.#key;
  }

  get signal(): AbortSignal {
    const signal = this.#link();
    // Someone else may delete our key (an operator, a revoked lease): the hold is then lost too.
    if (!this.#stopWatch && !this.#watchPaused && !signal.aborted) {
      const { fencingToken: rev } = this;
      const error = this.#options.term ? NotLeaderError : LockNotHeldError;
      this.#stopWatch = watchHeldKey(this.#session, this.#key, rev, this.#what, error, (reason) => {
        this.#trace?.lost(reason);
        this.end(reason);
      });
    }
    return signal;
  }

  /** The signal, linked to the session's but without the own-key watch. */
  #link(): AbortSignal {
    if (!this.#controller) {
      const controller = new AbortController();
      this.#controller = controller;
      const lost = this.#session.signal;
      if (this.#releasing) controller.abort(this.#releasedReason());
      else if (lost.aborted) this.end(lost.reason);
      else {
        const onLost = () => this.end(lost.reason);
        lost.addEventListener('abort', onLost, { once: true });
        this.#unlink = () => lost.removeEventListener('abort', onLost);
      }
    }
    return this.#controller.signal;
  }

  #detach = (): void => {
    this.#unlink?.();
    this.#stopWatch?.();
  };

  /**
   * Ends the hold without deleting its key: lost (found deleted), or
   * consumed by a write of the holder's own (a work-queue ack). Aborts the
   * signal with `reason`; a no-op once the hold has ended.
   */
  end(reason: unknown): void {
    if (this.#releasing || this.#lost) return;
    this.#lost = true;
    this.#detach();
    this.#options.log?.('%s ended: %s', this.#what, (reason as Error)?.message);
    this.#controller ??= new AbortController();
    this.#controller.abort(reason);
    const { onLost } = this.#options;
    if (!onLost) return;
    // A lost term lets the next local candidate go at once (its calls will see why).
    this.#releaseLocal();
    queueMicrotask(() => onLost(reason));
  }

  /**
   * Stops the own-key watch while a write of ours that deletes the key is in
   * flight (that delete is not a loss). The returned function allows it
   * again, from the next look at the signal, if that write did not land.
   */
  pauseWatch(): () => void {
    this.#watchPaused = true;
    this.#stopWatch?.();
    this.#stopWatch = undefined;
    return () => {
      this.#watchPaused = false;
    };
  }

  get released(): boolean {
    return !!this.#releasing || this.#lost || this.#session.expired;
  }

  get held(): boolean {
    return !this.released && this.#session.live;
  }

  ifOwner(): ComparatorBuilder {
    const term = this.#options.term;
    if (this.released)
      throw new (term ? NotLeaderError : LockNotHeldError)(`${this.#what} is not held (released or lost)`);
    const builder = this.#session.client.if(this.#key, 'Create', '==', this.fencingToken.toString());
    return markGuard(builder, term ? 'NOT_LEADER' : 'LOCK_NOT_HELD', this.#what);
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
      this.#detach();
      const controller = this.#controller;
      if (controller && !controller.signal.aborted) controller.abort(this.#releasedReason());
      try {
        // The local turn passes on only after our key is gone: the next local caller would
        // otherwise adopt our key (same lease, same name) and then see it deleted under it.
        // Told as soon as the delete landed: an in-process hand-over lets the next holder in right after.
        let told = false;
        const tell = () => {
          told = true;
          this.#options.log?.('%s released (token %s)', this.#what, this.fencingToken);
          if (this.#session.expired) this.#trace?.lost(this.#session.signal.reason);
          else this.#trace?.released();
        };
        if (!this.#session.expired)
          await deleteOwnKey(
            this.#session,
            this.#key,
            this.fencingToken,
            this.#options.log,
            this.#options.group,
            this.#options.line,
            tell,
          );
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

  #releasedReason(): Error {
    return withoutStack(() => new (this.#options.term ? NotLeaderError : LockNotHeldError)(`${this.#what} released`));
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.release();
  }
}
