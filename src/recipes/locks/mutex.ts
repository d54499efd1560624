import type { WaitOptions } from '../../core/options.js';
import type { ComparatorBuilder, Namespace } from 'etcd3';
import { lockTarget } from '../../core/diagnostics.js';
import { Holding, type HeldKey } from '../../core/holding.js';
import { showKey } from '../../core/keys.js';
import { ObjectHold } from './object-hold.js';
import { withHeld } from './with-held.js';
import { joinLine, SessionLine } from '../../core/line.js';
import { logger } from '../../core/log.js';
import { checkSession, type Session } from '../../core/session.js';
import { checkClient, checkFunction, checkName, checkOptions, checkSignal } from '../../core/validate.js';

const log = logger('mutex');

/** Options of a blocking acquire. */
export type LockOptions = WaitOptions;

/** A held lock, from {@link Mutex.acquire}. Dispose it (or call `release()`) to unlock. */
export type LockHandle = HeldKey;

/**
 * A distributed mutual-exclusion lock, wire-compatible with Go's
 * `concurrency.Mutex`, etcd's Lock RPC and `etcdctl lock`: the session writes
 * the key `<name>/<lease id in hex>` (empty value, attached to its lease), and
 * the key with the lowest create revision under `<name>/` holds the lock.
 * Waiters are served in FIFO order; each watches only its predecessor's key.
 *
 * One session has one key per name. Two holders in one process on the same
 * session and name are therefore queued locally (in process) first, and
 * never both hold. For several concurrent holders use {@link Mutex.acquire},
 * which returns an independent handle per hold.
 */
export class Mutex {
  /** The session whose lease owns the lock key. */
  readonly session: Session;
  /** The lock's name; keys live under `<name>/`. */
  readonly name: string | Buffer;
  readonly #line: SessionLine;
  readonly #object = new ObjectHold<'lock'>();

  /**
   * @param session - the session whose lease the lock key is attached to
   * @param name - the lock's name (Go's `pfx`); keys live under `<name>/`
   * @throws InvalidArgumentError for an empty name or a non-Session
   */
  constructor(session: Session, name: string | Buffer) {
    checkSession(session);
    checkName(name, 'name');
    this.session = session;
    this.name = name;
    this.#line = new SessionLine(session, name);
  }

  /** The lock key of this session: `<name>/<lease hex>`. */
  get key(): string {
    return this.#line.key.toString();
  }

  /** True while this Mutex object holds the lock (through `lock()`). */
  get held(): boolean {
    return !!this.#object.current;
  }

  /** The create revision of the lock key while held through `lock()`; undefined otherwise. */
  get fencingToken(): bigint | undefined {
    return this.#object.current?.fencingToken;
  }

  /** Aborted when the lock held through `lock()` is released or lost; undefined when not held. */
  get signal(): AbortSignal | undefined {
    return this.#object.signal;
  }

  /**
   * Blocks until this object holds the lock. FIFO among waiters.
   * @throws InvalidArgumentError if this object already holds or is acquiring the lock
   * @throws SessionExpiredError if the session's lease is lost while waiting
   */
  async lock(options: LockOptions = {}): Promise<void> {
    await this.#object.take('lock', () => this.acquire(options), this.#busy);
  }

  /**
   * Takes the lock if it is free right now; never waits for another holder.
   * @returns true if this object now holds the lock
   */
  tryLock(options: LockOptions = {}): Promise<boolean> {
    return this.#object.take('lock', () => this.tryAcquire(options), this.#busy);
  }

  /**
   * Releases the lock held through `lock()` / `tryLock()`.
   * @throws LockNotHeldError if this object does not hold it
   */
  unlock(): Promise<void> {
    // A lost hold still counts as locked here: its release is quiet (docs/mutex.md).
    return this.#object.release('lock', this.#notHeld, 'held');
  }

  /**
   * An etcd3 Txn builder with `CreateRevision(key) == fencingToken` already
   * added: a write committed through it cannot land once the lock is lost.
   * @throws LockNotHeldError if this object does not hold the lock
   */
  ifOwner(): ComparatorBuilder {
    return this.#object.owned('lock', this.#notHeld, 'held').ifOwner();
  }

  /**
   * Blocks until the lock is held and returns a handle for it (with its own
   * key, fencing token, signal and release). Use with `await using`.
   * @throws SessionExpiredError if the session's lease is lost while waiting
   */
  acquire(options: LockOptions = {}): Promise<LockHandle> {
    return this.#acquire(options, true) as Promise<LockHandle>;
  }

  /**
   * Like {@link Mutex.acquire} but never waits for another holder: resolves
   * undefined (leaving no key behind) if the lock is taken. It does wait for
   * other callers in this process on the same session and name.
   */
  tryAcquire(options: LockOptions = {}): Promise<LockHandle | undefined> {
    return this.#acquire(options, false);
  }

  readonly #busy = (): string =>
    `mutex ${showKey(this.name)} is already locked or locking through this Mutex object; ` +
    'use acquire() for more than one holder';

  readonly #notHeld = (): string => `mutex ${showKey(this.name)} is not locked by this Mutex object`;

  async #acquire(options: LockOptions, wait: boolean): Promise<LockHandle | undefined> {
    checkOptions(options);
    checkSignal(options.signal);
    const { session } = this;
    const what = `mutex ${showKey(this.name)}`;
    options.signal?.throwIfAborted();
    session.throwIfExpired();
    const line = this.#line;
    const lock = lockTarget('mutex', this.name, session);
    const turn = await joinLine(session, {
      what,
      log,
      wait,
      lock,
      signals: [options.signal],
      localTurn: line.key,
      enter: (pending, signal) => line.enter(EMPTY, false, pending, signal),
      read: (_key, rev) => line.read(rev),
      handoff: true,
      feed: line.prefix,
    });
    if (!turn) return undefined;
    log('%s: acquired by %s, token %s', what, this.key, turn.rev);
    return new Holding(session, turn.key, turn.rev, turn.releaseLocal, what, { log, lock, line: line.prefix });
  }
}

const EMPTY = Buffer.alloc(0);

/** What {@link withLock} passes to its function. */
export interface LockContext {
  /** Aborted if the lock may be lost (session lost) or the caller's signal aborts. */
  signal: AbortSignal;
  /** The lock key's create revision. */
  fencingToken: bigint;
  /** The lock key. */
  key: string;
  /** An etcd3 Txn builder guarded by ownership of the lock. */
  ifOwner(): ComparatorBuilder;
}

/** Options of {@link withLock}. */
export interface WithLockOptions {
  /** TTL in seconds of the session created for this call (default 60). Ignored with `session`. */
  ttl?: number;
  /** Use this session instead of creating (and closing) one. */
  session?: Session;
  /** Aborts the wait, and the function's signal while it runs. */
  signal?: AbortSignal;
}

/**
 * Runs `fn` while holding the lock `name`, and always releases it. Creates a
 * session for the call (closed afterwards) unless `options.session` is given.
 * `fn` receives a signal that aborts if the lock may be lost.
 * @returns what `fn` returns
 */
export async function withLock<T>(
  client: Namespace,
  name: string | Buffer,
  fn: (ctx: LockContext) => Promise<T> | T,
  options: WithLockOptions = {},
): Promise<T> {
  checkClient(client);
  checkName(name, 'name');
  checkFunction(fn, 'fn');
  return withHeld(
    client,
    options,
    (session) => new Mutex(session, name).acquire({ signal: options.signal }),
    (handle, signal) =>
      fn({ signal, fencingToken: handle.fencingToken, key: handle.key, ifOwner: () => handle.ifOwner() }),
  );
}
