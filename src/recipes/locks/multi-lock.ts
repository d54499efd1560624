import type { ComparatorBuilder, Namespace } from 'etcd3';
import { linkSignals, type LinkedSignal } from '../../core/abort.js';
import { withHeld } from './with-held.js';
import { traced } from '../../core/diagnostics.js';
import { InvalidArgumentError, LockNotHeldError } from '../../core/errors.js';
import { sessionKey, showKey, toBuffer } from '../../core/keys.js';
import { logger } from '../../core/log.js';
import { checkSession, type Session } from '../../core/session.js';
import { checkClient, checkFunction, checkName, checkOptions, checkSignal } from '../../core/validate.js';
import { Mutex, type LockHandle, type LockOptions, type WithLockOptions } from './mutex.js';

const log = logger('multi-lock');

/**
 * Several {@link Mutex} locks held together, from {@link acquireAll}.
 * Dispose it (or call `release()`) to release every one of them.
 */
export interface MultiLockHandle extends AsyncDisposable {
  /** The lock names, deduplicated, in the order they were taken (by their bytes). */
  readonly names: readonly (string | Buffer)[];
  /** One handle per lock, in the order of `names`. */
  readonly locks: readonly LockHandle[];
  /** The lock keys (`<name>/<lease hex>`), in the order of `names`. */
  readonly keys: readonly string[];
  /** The fencing token (create revision of the key) of each lock, in the order of `names`. */
  readonly fencingTokens: readonly bigint[];
  /** Aborted as soon as any of the locks is released or may be lost. */
  readonly signal: AbortSignal;
  /** True once any of the locks is released or lost. */
  readonly released: boolean;
  /**
   * An etcd3 Txn builder with one `CreateRevision(key) == fencingToken`
   * compare per lock: a write through it lands only while every lock is held.
   * @throws LockNotHeldError once any lock is released or lost
   */
  ifOwner(): ComparatorBuilder;
  /** Releases every lock (all at once). Idempotent. */
  release(): Promise<void>;
}

/** What {@link withLocks} passes to its function. */
export interface MultiLockContext {
  /** Aborted if any lock may be lost, or the caller's signal aborts. */
  readonly signal: AbortSignal;
  /** The lock names in the order they were taken. */
  readonly names: readonly (string | Buffer)[];
  /** The lock keys, in the order of `names`. */
  readonly keys: readonly string[];
  /** The fencing tokens, in the order of `names`. */
  readonly fencingTokens: readonly bigint[];
  /** An etcd3 Txn builder guarded by every lock at once. */
  ifOwner(): ComparatorBuilder;
}

/**
 * The one global order every caller takes locks in: deduplicated, sorted by
 * the names' bytes. Any two callers, whatever order they list names in,
 * then wait for each other in the same direction, so no cycle (deadlock)
 * can form between them.
 */
function lockOrder(names: unknown): (string | Buffer)[] {
  if (!Array.isArray(names) || names.length === 0) {
    throw new InvalidArgumentError(
      'names',
      `must be a non-empty array of lock names, got ${Array.isArray(names) ? 'an empty array' : typeof names}`,
    );
  }
  for (const [i, n] of (names as unknown[]).entries()) checkName(n, `names[${i}]`);
  const byBytes = new Map<string, string | Buffer>();
  for (const n of names as (string | Buffer)[]) {
    const id = toBuffer(n).toString('latin1');
    if (!byBytes.has(id)) byBytes.set(id, n);
  }
  return [...byBytes.values()].sort((a, b) => Buffer.compare(toBuffer(a), toBuffer(b)));
}

/**
 * Takes every lock in `names` on `session`, all or none: one
 * {@link Mutex} per name (each wire-compatible with Go and `etcdctl lock`),
 * taken one after the other in the global order (names deduplicated and
 * sorted by their bytes), so two callers locking `[a, b]` and `[b, a]`
 * never deadlock. If any acquire fails or the signal aborts, the locks
 * already taken are released and nothing is left behind.
 *
 * Holding every lock at once is the point: the handle's `signal` aborts
 * when any of them may be lost, and `ifOwner()` guards a write by all of
 * them.
 * @throws InvalidArgumentError for an empty list, a bad name or a non-Session
 * @throws SessionExpiredError if the session's lease is lost while waiting
 */
export async function acquireAll(
  session: Session,
  names: readonly (string | Buffer)[],
  options: LockOptions = {},
): Promise<MultiLockHandle> {
  checkSession(session);
  const ordered = lockOrder(names);
  checkOptions(options);
  checkSignal(options.signal);
  options.signal?.throwIfAborted();
  session.throwIfExpired();
  const held: LockHandle[] = [];
  try {
    await traced(
      'multiLock',
      () => ({ names: ordered.map((n) => showKey(n)), leaseId: session.leaseId }),
      async () => {
        for (const name of ordered) held.push(await new Mutex(session, name).acquire({ signal: options.signal }));
      },
      (_, __, waitMs) => ({ keys: held.map((h) => h.key), fencingTokens: held.map((h) => h.fencingToken), waitMs }),
    );
  } catch (err) {
    log('acquiring %d locks failed after %d: %s', ordered.length, held.length, (err as Error)?.message);
    await Promise.all(held.map((h) => h.release().catch(() => undefined)));
    throw err;
  }
  log('holding %s', ordered.map((n) => showKey(n)).join(', '));
  return new MultiLock(session, ordered, held);
}

class MultiLock implements MultiLockHandle {
  readonly names: readonly (string | Buffer)[];
  readonly locks: readonly LockHandle[];
  readonly #session: Session;
  readonly #keys: Buffer[];
  #linked: LinkedSignal | undefined;
  #releasing: Promise<void> | undefined;

  constructor(session: Session, names: (string | Buffer)[], locks: LockHandle[]) {
    this.#session = session;
    this.names = Object.freeze(names);
    this.locks = Object.freeze(locks);
    this.#keys = names.map((n) => sessionKey(n, session.leaseId));
  }

  get keys(): readonly string[] {
    return this.locks.map((l) => l.key);
  }

  get fencingTokens(): readonly bigint[] {
    return this.locks.map((l) => l.fencingToken);
  }

  get signal(): AbortSignal {
    this.#linked ??= linkSignals(...this.locks.map((l) => l.signal));
    return this.#linked.signal;
  }

  get released(): boolean {
    return !!this.#releasing || this.locks.some((l) => l.released);
  }

  ifOwner(): ComparatorBuilder {
    if (this.released)
      throw new LockNotHeldError(`locks ${this.names.map((n) => showKey(n)).join(', ')} are not all held`);
    const [first, ...rest] = this.#keys.map((k, i) => [k, this.locks[i]!.fencingToken.toString()] as const);
    let builder = this.#session.client.if(first![0], 'Create', '==', first![1]);
    for (const [key, token] of rest) builder = builder.and(key, 'Create', '==', token);
    return builder;
  }

  release(): Promise<void> {
    this.#releasing ??= Promise.all(this.locks.map((l) => l.release())).then(() => {
      this.#linked?.dispose();
      log('released %s', this.names.map((n) => showKey(n)).join(', '));
    });
    return this.#releasing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.release();
  }
}

/**
 * Runs `fn` while holding every lock in `names` (see {@link acquireAll}:
 * one global order, all or none), and always releases them. Creates a
 * session for the call (a lease grant, and a revoke afterwards) unless
 * `options.session` is given: pass a long-lived session when calling it
 * often.
 * @returns what `fn` returns
 */
export async function withLocks<T>(
  client: Namespace,
  names: readonly (string | Buffer)[],
  fn: (ctx: MultiLockContext) => Promise<T> | T,
  options: WithLockOptions = {},
): Promise<T> {
  checkClient(client);
  lockOrder(names);
  checkFunction(fn, 'fn');
  return withHeld(
    client,
    options,
    (session) => acquireAll(session, names, { signal: options.signal }),
    (held, signal) =>
      fn({
        signal,
        names: held.names,
        keys: held.keys,
        fencingTokens: held.fencingTokens,
        ifOwner: () => held.ifOwner(),
      }),
  );
}
