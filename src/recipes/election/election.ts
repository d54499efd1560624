import type { WaitOptions } from '../../core/options.js';
import { EventEmitter } from 'node:events';
import type { ComparatorBuilder } from 'etcd3';
import { raceAbort } from '../../core/abort.js';
import { electionTarget, publish, traced } from '../../core/diagnostics.js';
import { InvalidArgumentError, NotLeaderError } from '../../core/errors.js';
import { emitSafely } from '../../core/events.js';
import { checkGuard, resolveGuard, type GuardedWriteOptions } from '../../core/guard.js';
import { showKey, toBuffer } from '../../core/keys.js';
import { cmp, op, rangeAt, txn } from '../../core/kv.js';
import { joinLine, SessionLine } from '../../core/line.js';
import { logger } from '../../core/log.js';
import { Holding } from '../../core/holding.js';
import { retrying } from '../../core/retry.js';
import { checkSession, type Session } from '../../core/session.js';
import { checkName, checkOptions, checkSignal, checkValue } from '../../core/validate.js';
import {
  getLeader,
  type LeaderInfo,
  type LeaderObserver,
  leaderInfo,
  observeLeader,
  type ObserveOptions,
} from './observer.js';

export {
  getLeader,
  type LeaderInfo,
  LeaderObserver,
  type LeaderState,
  observeLeader,
  type ObserveOptions,
} from './observer.js';

const log = logger('election');

/** Options of a blocking election call. */
export type CampaignOptions = WaitOptions;

/** Events of an {@link Election}. It never emits `'error'`. */
export interface ElectionEvents {
  /** This Election object became leader (its `campaign()` is about to resolve). */
  elected: [leader: LeaderInfo];
  /**
   * Leadership was lost without `resign()`: the session's lease was lost or
   * may have expired (`SessionExpiredError`), or our key was deleted or
   * re-created by someone else (`NotLeaderError`).
   */
  lost: [reason: unknown];
}

/**
 * Leader election, wire-compatible with Go's `concurrency.Election`, etcd's
 * Election RPC (`v3election`) and `etcdctl elect`: each candidate writes the
 * key `<name>/<lease id in hex>` (value: its proposal, attached to its
 * session's lease), and the key with the lowest create revision under
 * `<name>/` is the leader. Candidates are elected in the order they
 * campaigned; each waits only on its predecessor's key.
 *
 * One session has one key per name, so one Election object per session and
 * name campaigns at a time; other Election objects on the same session and
 * name in this process queue behind it locally.
 */
export class Election extends EventEmitter<ElectionEvents> implements AsyncDisposable {
  /** The session whose lease owns the campaign key. */
  readonly session: Session;
  /** The election's name (Go's `pfx`); keys live under `<name>/`. */
  readonly name: string | Buffer;
  readonly #line: SessionLine;
  readonly #key: Buffer;
  readonly #what: string;
  /** The current term: our key held on the session's lease (core's owned key). */
  #term: Holding | undefined;
  /** The value our key holds in this term. */
  #value: Buffer = Buffer.alloc(0);
  #campaign: { stop: AbortController; done: Promise<unknown> } | undefined;

  /**
   * @param session - the session whose lease the campaign key is attached to
   * @param name - the election's name (Go's `pfx`); keys live under `<name>/`
   * @throws InvalidArgumentError for an empty name or a non-Session
   */
  constructor(session: Session, name: string | Buffer) {
    super();
    checkSession(session);
    checkName(name, 'name');
    this.session = session;
    this.name = name;
    this.#line = new SessionLine(session, name);
    this.#key = this.#line.key;
    this.#what = `election ${showKey(name)}`;
    // A 'lost' listener wants to hear of a deleted key at once: watch it.
    (this as EventEmitter).on('newListener', (event: string | symbol) => {
      if (event === 'lost') void this.#term?.signal;
    });
  }

  /** The campaign key of this session: `<name>/<lease hex>`. */
  get key(): string {
    return this.#key.toString();
  }

  /**
   * True while this object certainly leads: elected, not resigned, leadership
   * not known to be lost, and the session's own deadline not passed (see
   * `Session.live`): a process woken from a pause past its TTL sees false at
   * once, before any timer fires. Still guard writes with `ifLeader()`.
   */
  get isLeader(): boolean {
    return !!this.#term && !this.#term.signal.aborted && this.session.live;
  }

  /**
   * The create revision of our key while we lead (Go's `Rev()`), the
   * fencing token of this term; undefined otherwise.
   */
  get revision(): bigint | undefined {
    return this.isLeader ? this.#term!.fencingToken : undefined;
  }

  /** The fencing token of this term, as every recipe names it: the same as {@link Election.revision}. */
  get fencingToken(): bigint | undefined {
    return this.revision;
  }

  /**
   * While we lead: a signal that aborts the moment leadership may be lost
   * (session lost or about to expire, our key deleted, or `resign()`).
   * Undefined before the first successful campaign.
   *
   * Our key is watched for deletion from the first use of `signal`,
   * `isLeader` or a `'lost'` listener in a term (the watch starts at the
   * term's revision, so a deletion in between is still reported): a term
   * nobody looks at costs no watch.
   */
  get signal(): AbortSignal | undefined {
    return this.#term?.signal;
  }

  /**
   * Campaigns with `value` as proposal and resolves once this object is the
   * leader. Candidates are elected in the order they campaigned.
   *
   * Called again while already leader, it keeps the key and its place and
   * proclaims `value` if it differs (as Go does). If this session already
   * has a key in this election (a lease adopted after a restart), it is
   * adopted with its place in line, and `value` proclaimed.
   *
   * @param value - the proposal that observers see as the leader's value
   * @throws SessionExpiredError if the session is lost while waiting (never a phantom win)
   * @throws InvalidArgumentError on bad input, or if this object is already campaigning
   */
  async campaign(value: string | Buffer, options: CampaignOptions = {}): Promise<void> {
    checkValue(value, 'value');
    checkOptions(options);
    checkSignal(options.signal);
    if (this.#campaign)
      throw new InvalidArgumentError('this', `${this.#what}: this Election object is already campaigning`);
    const bytes = toBuffer(value);
    const term = this.#term;
    if (term && !term.released) {
      if (!this.#value.equals(bytes)) await this.proclaim(bytes, options);
      return;
    }
    options.signal?.throwIfAborted();
    this.session.throwIfExpired();
    const stop = new AbortController();
    const done = traced(
      'campaign',
      () => electionTarget(this.name, this.#key, this.session),
      () => this.#campaignOnce(bytes, options.signal, stop.signal),
      (_, __, waitMs) => ({ revision: this.#term!.fencingToken, waitMs }),
    );
    this.#campaign = { stop, done };
    try {
      await done;
    } finally {
      this.#campaign = undefined;
    }
  }

  async #campaignOnce(value: Buffer, callerSignal: AbortSignal | undefined, stopSignal: AbortSignal): Promise<void> {
    const { session } = this;
    const what = this.#what;
    const line = this.#line;
    // Go's re-campaign: an existing key of this session keeps its place and gets the new value.
    const turn = (await joinLine(session, {
      what,
      log,
      wait: true,
      signals: [callerSignal, stopSignal],
      localTurn: line.key,
      enter: (pending, signal) => line.enter(value, true, pending, signal),
      read: (_key, rev) => line.read(rev),
    }))!;
    const own = turn.state.data!;
    // A lost term says NOT_LEADER and lets the next local candidate go at once.
    const onLost = (reason: unknown) => this.#onLost(turn.rev, reason);
    const term = new Holding(session, this.#key, turn.rev, turn.releaseLocal, what, { log, term: true, onLost });
    this.#term = term;
    this.#value = own.value;
    if (this.listenerCount('lost') > 0) void term.signal;
    log('%s: %s elected (revision %s)', what, this.key, turn.rev);
    emitSafely(this, 'elected', leaderInfo(own));
  }

  #onLost(revision: bigint, reason: unknown): void {
    log('%s: leadership of %s@%s lost: %s', this.#what, this.key, revision, (reason as Error)?.message);
    emitSafely(this, 'lost', reason);
    publish('electionDeposed', () => ({
      ...electionTarget(this.name, this.#key, this.session),
      revision,
      error: reason,
    }));
  }

  /**
   * Announces a new value as leader, without a new election. The put is
   * guarded by our key's create revision, so it cannot land once we lost.
   * @throws NotLeaderError if this object is not (or no longer) the leader
   */
  async proclaim(value: string | Buffer, options: GuardedWriteOptions = {}): Promise<void> {
    checkValue(value, 'value');
    checkOptions(options);
    checkSignal(options.signal);
    checkGuard(options.guard);
    const term = this.#term;
    if (!term || term.released) throw new NotLeaderError(`${this.#what}: cannot proclaim, not the leader`);
    options.signal?.throwIfAborted();
    const bytes = toBuffer(value);
    const { client, leaseId } = this.session;
    const guard = await resolveGuard(client, options.guard);
    // Re-sending is harmless: the same value put again under the same compares.
    const res = await retrying(
      () =>
        raceAbort(
          txn(
            client,
            [cmp.create(this.#key, '==', term.fencingToken), ...guard.compares],
            [op.put(this.#key, bytes, leaseId)],
            [op.range(this.#key, { keysOnly: true }), ...guard.reads],
          ),
          options.signal,
          term.signal,
        ),
      { signals: [options.signal, term.signal], maxElapsedMs: Infinity },
    ).catch((err: unknown) => {
      // The lease may be gone on the server before our session noticed: the term is over.
      throw this.session.leaseError(err, this.#what);
    });
    const ours = res.succeeded || rangeAt(res, 0).kvs[0]?.createRevision === term.fencingToken;
    if (ours && !res.succeeded) throw guard.error(`${this.#what}: proclaim`);
    if (!res.succeeded) {
      const err = new NotLeaderError(`${this.#what}: our key ${this.key} was deleted; not the leader any more`);
      term.end(err);
      throw err;
    }
    this.#value = bytes;
  }

  /**
   * Gives up leadership (deletes our key, guarded by its create revision),
   * or withdraws a pending `campaign()` of this object, which then rejects
   * with a NotLeaderError. Resolves once the key is gone. A no-op when this
   * object neither leads nor campaigns. `options.signal` stops the wait
   * only: leadership ends at once either way, and the delete goes on in the
   * background (or the key expires with the lease).
   */
  async resign(options?: WaitOptions): Promise<void> {
    if (options !== undefined) {
      checkOptions(options);
      checkSignal(options.signal);
      return raceAbort(this.resign(), options.signal);
    }
    const campaign = this.#campaign;
    if (campaign) {
      campaign.stop.abort(new NotLeaderError(`${this.#what}: resign() called while campaigning`));
      await campaign.done.catch(() => undefined);
    }
    const term = this.#term;
    const leading = term && !term.released;
    if (term) await term.release();
    if (leading)
      publish('electionResigned', () => ({
        ...electionTarget(this.name, this.#key, this.session),
        revision: term.fencingToken,
      }));
  }

  /**
   * The current leader, read linearizably, or undefined when there is none.
   */
  leader(options: CampaignOptions = {}): Promise<LeaderInfo | undefined> {
    return getLeader(this.session.client, this.name, options);
  }

  /**
   * An etcd3 Txn builder with `CreateRevision(key) == revision` already
   * added: a write committed through it cannot land once this term is over.
   * @throws NotLeaderError if this object is not the leader
   */
  ifLeader(): ComparatorBuilder {
    if (!this.#term) throw new NotLeaderError(`${this.#what}: not the leader`);
    return this.#term.ifOwner();
  }

  /**
   * Every leader change, in revision order, as an async iterable: first the
   * current state, then each new leader, each proclaim, and
   * `{ leader: undefined }` whenever nobody leads. Needs only the client,
   * not a live session. See {@link observeLeader}.
   */
  observe(options: ObserveOptions = {}): LeaderObserver {
    return observeLeader(this.session.client, this.name, options);
  }

  /** `await using election = new Election(...)` resigns at scope exit. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.resign();
  }
}
