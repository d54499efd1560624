import type { ComparatorBuilder } from 'etcd3';
import { linkSignals, type LinkedSignal } from './abort.js';
import { LockNotHeldError, withoutStack } from './errors.js';
import { cmp, op, txn } from './kv.js';
import { showKey } from './keys.js';
import type { LocalRelease } from './local-lock.js';
import type { Debugger } from 'debug';
import { retrying } from './retry.js';
import type { Session } from './session.js';

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
 * deletes a key that a later call re-created.
 */
export async function deleteOwnKey(session: Session, key: Buffer, rev: bigint | undefined, log?: Debugger): Promise<void> {
  const client = session.client;
  const guard = rev === undefined ? { key, target: 'Lease' as const, result: '==' as const, value: session.leaseId } : cmp.create(key, '==', rev);
  await retrying(() => txn(client, [guard], [op.delete(key)]), {
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
export function cleanUpAfter(inFlight: Promise<unknown>, cleanup: () => Promise<void>, releaseLocal: LocalRelease,
  log?: Debugger, waitMs = 1000): Promise<void> {
  const done = inFlight
    .catch(() => undefined)
    .then(cleanup)
    .catch((err) => log?.('cleanup failed (the key expires with the lease): %s', (err as Error).message))
    .finally(releaseLocal);
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([done, new Promise<void>((r) => { timer = setTimeout(r, waitMs).unref(); })])
    .finally(() => clearTimeout(timer));
}

/** A held key: returned by Mutex.acquire, RWMutex.rLock/lock handles, Semaphore.acquire. */
export interface HeldKey extends AsyncDisposable {
  /** The etcd key that represents this hold. */
  readonly key: string;
  /** The key's create revision: a fencing token that grows with every new holder. */
  readonly fencingToken: bigint;
  /** Aborted when the hold ends: released, or the session lost (reason: SessionExpiredError). */
  readonly signal: AbortSignal;
  /** True once released (or lost). */
  readonly released: boolean;
  /** An etcd3 Txn builder with `CreateRevision(key) == fencingToken` already added. */
  ifOwner(): ComparatorBuilder;
  /** Releases the hold (deletes the key). Idempotent. */
  release(): Promise<void>;
}

/** @internal The implementation behind every {@link HeldKey}. */
export class Holding implements HeldKey {
  readonly fencingToken: bigint;
  readonly #session: Session;
  readonly #key: Buffer;
  readonly #linked: LinkedSignal;
  readonly #releaseLocal: LocalRelease;
  readonly #what: string;
  readonly #log: Debugger | undefined;
  #releasing: Promise<void> | undefined;
  #releaseStarted = false;

  constructor(session: Session, key: Buffer, rev: bigint, releaseLocal: LocalRelease, what: string, log?: Debugger) {
    this.#session = session;
    this.#key = key;
    this.fencingToken = rev;
    this.#releaseLocal = releaseLocal;
    this.#what = what;
    this.#log = log;
    this.#linked = linkSignals(session.signal);
    if (this.#linked.signal.aborted) releaseLocal();
    // Lost (not released): let the next local caller go; its own calls will see the session expired.
    else this.#linked.signal.addEventListener('abort', () => { if (!this.#releaseStarted) releaseLocal(); }, { once: true });
  }

  get key(): string {
    return this.#key.toString();
  }

  /** The key as bytes. */
  get keyBuffer(): Buffer {
    return this.#key;
  }

  get signal(): AbortSignal {
    return this.#linked.signal;
  }

  get released(): boolean {
    return this.#linked.signal.aborted;
  }

  ifOwner(): ComparatorBuilder {
    if (this.released) throw new LockNotHeldError(`${this.#what} is not held (released or session lost)`);
    return this.#session.client.if(this.#key, 'Create', '==', this.fencingToken.toString());
  }

  release(): Promise<void> {
    this.#releasing ??= (async () => {
      // Set before aborting our signal: the next local caller must wait until our key is deleted,
      // or it would adopt our key (same lease, same name) and then see it deleted under it.
      this.#releaseStarted = true;
      const lost = this.#linked.signal.aborted;
      this.#linked.abort(withoutStack(() => new LockNotHeldError(`${this.#what} released`)));
      try {
        if (!lost || !this.#session.expired) await deleteOwnKey(this.#session, this.#key, this.fencingToken, this.#log);
        this.#log?.('%s released (token %s)', this.#what, this.fencingToken);
      } finally {
        this.#releaseLocal();
      }
    })();
    return this.#releasing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.release();
  }
}
