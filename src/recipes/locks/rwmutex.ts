import type { WaitOptions } from '../../core/options.js';
import type { ComparatorBuilder } from 'etcd3';
import { LockNotHeldError } from '../../core/errors.js';
import { lockTarget } from '../../core/diagnostics.js';
import { Holding, type HeldKey } from '../../core/holding.js';
import { ObjectHold } from './object-hold.js';
import { childPrefix, showKey } from '../../core/keys.js';
import { op, range, rangeAt, txn, type KeyValue, type RangeOptions, type RangeResult } from '../../core/kv.js';
import { createUniqueKey, joinLine, type PendingKey } from '../../core/line.js';
import { logger } from '../../core/log.js';
import { retrying } from '../../core/retry.js';
import { checkSession, type Session } from '../../core/session.js';
import { checkName, checkOptions, checkSignal } from '../../core/validate.js';
import type { LineState } from '../../core/wait.js';

const log = logger('rwmutex');

/** Options of a blocking read or write lock. */
export type RWLockOptions = WaitOptions;

/**
 * A held read or write lock, from {@link RWMutex.acquireRead} / {@link RWMutex.acquireWrite}. Dispose
 * it (or `release()`) to unlock.
 */
export type RWLockHandle = HeldKey;

/** Which side of an {@link RWMutex} is held. */
export type RWLockMode = 'read' | 'write';

/* ------------------------------------------------------------------------- */

/**
 * A distributed read-write lock, wire-compatible with Go's
 * `experimental/recipes` `RWMutex`: a reader writes `<name>/read/<ns>`, a
 * writer `<name>/write/<ns>` (19-digit unique suffix, empty value, attached to
 * the session's lease), and one FIFO line by create revision decides:
 *
 * - a reader holds once no **writer** older than it is left (it waits for the
 *   newest older writer key, then re-reads);
 * - a writer holds once no **key of either kind** older than it is left (it
 *   waits for its immediate predecessor, then re-reads).
 *
 * So a waiting writer blocks every reader that arrives after it: writers are
 * not starved by a stream of readers. Each waiter watches exactly one key.
 *
 * Keys are unique per call, so one session can hold several locks at once
 * (each `acquireRead()` / `acquireWrite()` is a separate place in line) and no
 * in-process queueing is needed. The object API (`rLock` / `rUnlock`, `lock` /
 * `unlock`) tracks one hold per `RWMutex` object, as Go's does.
 *
 * Not reentrant and no upgrade or downgrade: a caller that holds a read lock
 * and asks for the write lock (or the reverse) on the same name waits for
 * itself forever. The object API rejects that; with handles, pass a signal.
 */
export class RWMutex {
  /** The session whose lease owns the lock keys. */
  readonly session: Session;
  /** The lock's name; keys live under `<name>/read/` and `<name>/write/`. */
  readonly name: string | Buffer;
  readonly #prefix: Buffer;
  readonly #readDir: Buffer;
  readonly #writeDir: Buffer;
  readonly #object = new ObjectHold<RWLockMode>();

  /**
   * @param session - the session whose lease the lock keys are attached to
   * @param name - the lock's name (Go's `prefix`); keys live under `<name>/`
   * @throws InvalidArgumentError for an empty name or a non-Session
   */
  constructor(session: Session, name: string | Buffer) {
    checkSession(session);
    checkName(name, 'name');
    this.session = session;
    this.name = name;
    this.#prefix = childPrefix(name);
    this.#readDir = Buffer.concat([this.#prefix, Buffer.from('read/')]);
    this.#writeDir = Buffer.concat([this.#prefix, Buffer.from('write/')]);
  }

  /** Which side this object holds through `rLock()` / `lock()`; undefined when it holds nothing. */
  get mode(): RWLockMode | undefined {
    return this.#object.mode;
  }

  /** True while this object holds the read or the write lock (through `rLock()` / `lock()`). */
  get held(): boolean {
    return this.mode !== undefined;
  }

  /** The key of the hold taken through `rLock()` / `lock()`; undefined when not held. */
  get key(): string | undefined {
    return this.#object.current?.key;
  }

  /** The create revision of the key held through `rLock()` / `lock()`; undefined when not held. */
  get fencingToken(): bigint | undefined {
    return this.#object.current?.fencingToken;
  }

  /** Aborted when the hold taken through `rLock()` / `lock()` is lost (or released); undefined when not held. */
  get signal(): AbortSignal | undefined {
    return this.#object.signal;
  }

  /**
   * Blocks until this object holds a read lock: once no writer that queued
   * earlier is left. Readers share the lock with each other.
   * @throws InvalidArgumentError if this object already holds or is taking a lock
   * @throws SessionExpiredError if the session's lease is lost while waiting
   */
  async rLock(options: RWLockOptions = {}): Promise<void> {
    await this.#lockObject('read', options, true);
  }

  /**
   * Blocks until this object holds the write lock: once every key that queued
   * earlier (reader or writer) is gone. Exclusive.
   * @throws InvalidArgumentError if this object already holds or is taking a lock
   * @throws SessionExpiredError if the session's lease is lost while waiting
   */
  async lock(options: RWLockOptions = {}): Promise<void> {
    await this.#lockObject('write', options, true);
  }

  /**
   * Takes a read lock if no writer holds or waits right now; never waits.
   * @returns true if this object now holds a read lock
   */
  tryRLock(options: RWLockOptions = {}): Promise<boolean> {
    return this.#lockObject('read', options, false);
  }

  /**
   * Takes the write lock if nobody holds or waits right now; never waits.
   * @returns true if this object now holds the write lock
   */
  tryLock(options: RWLockOptions = {}): Promise<boolean> {
    return this.#lockObject('write', options, false);
  }

  /**
   * Releases the read lock taken through `rLock()` / `tryRLock()`.
   * @throws LockNotHeldError if this object does not hold a read lock
   */
  async rUnlock(): Promise<void> {
    await this.#unlockObject('read');
  }

  /**
   * Releases the write lock taken through `lock()` / `tryLock()`.
   * @throws LockNotHeldError if this object does not hold the write lock
   */
  async unlock(): Promise<void> {
    await this.#unlockObject('write');
  }

  /**
   * An etcd3 Txn builder with `CreateRevision(key) == fencingToken` of the
   * hold taken through `rLock()` / `lock()` already added.
   * @throws LockNotHeldError if this object holds nothing
   */
  ifOwner(): ComparatorBuilder {
    const current = this.#object.current;
    if (!current) throw new LockNotHeldError(`rwmutex ${showKey(this.name)} is not locked by this RWMutex object`);
    return current.ifOwner();
  }

  /**
   * Blocks until a read lock is held and returns a handle for it (its own
   * key, fencing token, signal and release). Any number of handles, from one
   * or many sessions, may be taken. Use with `await using`.
   * @throws SessionExpiredError if the session's lease is lost while waiting
   */
  acquireRead(options: RWLockOptions = {}): Promise<RWLockHandle> {
    return this.#acquire('read', options, true) as Promise<RWLockHandle>;
  }

  /**
   * Blocks until the write lock is held and returns a handle for it. Two
   * write handles of one session exclude each other like any two writers.
   * @throws SessionExpiredError if the session's lease is lost while waiting
   */
  acquireWrite(options: RWLockOptions = {}): Promise<RWLockHandle> {
    return this.#acquire('write', options, true) as Promise<RWLockHandle>;
  }

  /**
   * Like {@link RWMutex.acquireRead} but never waits: resolves undefined (leaving no key) if a writer
   * holds or waits.
   */
  tryAcquireRead(options: RWLockOptions = {}): Promise<RWLockHandle | undefined> {
    return this.#acquire('read', options, false);
  }

  /**
   * Like {@link RWMutex.acquireWrite} but never waits: resolves undefined (leaving no key) if anyone
   * holds or waits.
   */
  tryAcquireWrite(options: RWLockOptions = {}): Promise<RWLockHandle | undefined> {
    return this.#acquire('write', options, false);
  }

  // -------------------------------------------------------------------------

  #lockObject(mode: RWLockMode, options: RWLockOptions, wait: boolean): Promise<boolean> {
    const busy = () =>
      `rwmutex ${showKey(this.name)} is already locked (${this.mode ?? 'taking a lock'}) through this RWMutex ` +
      'object; a second lock on it would wait for the first forever (no reentrancy, no upgrade); ' +
      'use acquireRead()/acquireWrite() for more than one hold';
    return this.#object.take(mode, () => this.#acquire(mode, options, wait), busy);
  }

  #unlockObject(mode: RWLockMode): Promise<void> {
    const notHeld = () => `rwmutex ${showKey(this.name)} is not ${mode}-locked by this RWMutex object`;
    return this.#object.release(mode, notHeld, 'not held');
  }

  async #acquire(mode: RWLockMode, options: RWLockOptions, wait: boolean): Promise<RWLockHandle | undefined> {
    checkOptions(options);
    checkSignal(options.signal);
    const { session } = this;
    const what = `rwmutex ${showKey(this.name)} (${mode})`;
    options.signal?.throwIfAborted();
    session.throwIfExpired();
    const lock = lockTarget('rwmutex', this.name, session, 1, mode);
    // Keys are unique per call: no local turn is needed.
    const turn = await joinLine(session, {
      what,
      log,
      wait,
      lock,
      signals: [options.signal],
      enter: (pending, signal) => this.#enter(mode, pending, signal),
      read: (key, rev) => this.#readLine(mode, key, rev),
      // The head of the line holds whatever its kind: nothing older blocks it.
      handoff: true,
      // A writer waits for every older key, as a Mutex waiter does; a reader only for older writers.
      feed: mode === 'write' ? this.#prefix : undefined,
    });
    if (!turn) return undefined;
    log('%s: acquired by %s, token %s', what, showKey(turn.key), turn.rev);
    return new Holding(session, turn.key, turn.rev, turn.releaseLocal, what, { log, lock, line: this.#prefix });
  }

  /**
   * The range that finds what blocks a `mode` waiter: the newest older
   * writer, or our own key and the newest older key.
   */
  #blockerRange(mode: RWLockMode, maxCreateRevision?: bigint): [Buffer, RangeOptions] {
    return [
      mode === 'read' ? this.#writeDir : this.#prefix,
      {
        prefix: true,
        maxCreateRevision,
        sortTarget: 'Create',
        sortOrder: 'Descend',
        limit: mode === 'read' ? 1 : 2,
        keysOnly: true,
      },
    ];
  }

  /**
   * Creates our unique key (create-if-absent, lease attached) and, in the
   * same Txn, reads what blocks us: our key is the newest in the store, so
   * for a reader the newest writer key, and for a writer the two newest keys
   * under `<name>/` (ours and our predecessor), are exactly what we need.
   */
  async #enter(mode: RWLockMode, pending: PendingKey, signal: AbortSignal): Promise<LineState> {
    const dir = mode === 'read' ? this.#readDir : this.#writeDir;
    const { key, rev, reads } = await createUniqueKey(
      this.session,
      dir,
      [op.range(...this.#blockerRange(mode))],
      pending,
      signal,
    );
    // Adopted after a lost reply: read the line anew.
    if (!reads) return retrying(() => this.#readLine(mode, key, rev), { signals: [signal], maxElapsedMs: Infinity });
    const line = reads[0] as RangeResult;
    if (mode === 'read') return lineState(true, line.kvs[0], rev);
    // Every key under the prefix at our revision but ours is ahead of us: what a writer's feed counts down.
    return { ...writerState(line.kvs, key, rev, rev), ahead: Number(line.count) - 1 };
  }

  /**
   * One request re-reading our key's liveness and our single blocker. A
   * writer's own key is the newest with create revision <= ours, so one
   * range (limit 2) gives both; a reader's key is in another directory than
   * the writers it waits for, so it is a read-only Txn with two ranges.
   */
  async #readLine(mode: RWLockMode, key: Buffer, rev: bigint): Promise<LineState> {
    const client = this.session.client;
    if (mode === 'write') {
      const r = await range(client, ...this.#blockerRange(mode, rev));
      return writerState(r.kvs, key, rev, r.revision);
    }
    const res = await txn(client, [], [op.range(key, { keysOnly: true }), op.range(...this.#blockerRange(mode, rev))]);
    const own = rangeAt(res, 0).kvs[0];
    return lineState(!!own && own.createRevision === rev, rangeAt(res, 1).kvs[0], res.revision);
  }
}

/** A line state: blocked by `blocker` while alive. */
function lineState(alive: boolean, blocker: KeyValue | undefined, revision: bigint): LineState {
  if (!alive || !blocker) return { alive, revision };
  return { alive, revision, blocker: { kind: 'key', key: blocker.key, createRevision: blocker.createRevision } };
}

/** A writer's state from the newest keys up to its own (`kvs`: its own key first, then its predecessor). */
function writerState([first, pred]: KeyValue[], key: Buffer, rev: bigint, revision: bigint): LineState {
  return lineState(!!first && first.createRevision === rev && first.key.equals(key), pred, revision);
}
