import type { WaitOptions } from '../../core/options.js';
import { EventEmitter } from 'node:events';
import { ClientClosedError, type ComparatorBuilder, type Namespace } from 'etcd3';
import { delay, linkSignals, raceAbort, type LinkedSignal } from '../../core/abort.js';
import { electionTarget, publish, traced } from '../../core/diagnostics.js';
import { InvalidArgumentError, isRecipeError, NotLeaderError, withoutStack } from '../../core/errors.js';
import { checkGuard, markGuard, resolveGuard, type GuardedWriteOptions } from '../../core/guard.js';
import { deleteOwnKey } from '../../core/holding.js';
import { childPrefix, showKey, toBuffer } from '../../core/keys.js';
import { cmp, op, range, rangeAt, txn, type KeyValue } from '../../core/kv.js';
import { joinLine, SessionLine } from '../../core/line.js';
import type { LocalRelease } from '../../core/local-lock.js';
import { logger } from '../../core/log.js';
import { isTransient, retrying } from '../../core/retry.js';
import { checkSession, type Session } from '../../core/session.js';
import { checkClient, checkInteger, checkName, checkOptions, checkSignal, checkValue } from '../../core/validate.js';
import { openWatch, WatchCompactedError, type WatchEvent, type WatchHandle } from '../../core/watch-hub.js';
import { emitSafely } from '../../core/events.js';

const log = logger('election');

/** Options of a blocking election call. */
export type CampaignOptions = WaitOptions;

/** The leader of an election, as {@link Election.leader} and {@link Election.observe} report it. */
export interface LeaderInfo {
  /** The leader's key, `<name>/<lease hex>`. */
  readonly key: string;
  /** The leader's proposal (its latest proclaimed value), as UTF-8. */
  readonly value: string;
  /**
   * The create revision of the leader's key (Go's `Election.Rev()`). It
   * identifies this leader's term and is its fencing token: a later term
   * always has a larger one.
   */
  readonly revision: bigint;
  /** The revision of the leader's latest campaign or proclaim (the key's mod revision). */
  readonly modRevision: bigint;
  /** The leader's lease ID (decimal string). */
  readonly lease: string;
}

/**
 * One state of an election, as {@link Election.observe} reports it: the
 * leader, or `leader: undefined` when nobody leads (no candidate at all).
 */
export interface LeaderState {
  /** The leader from `revision` on, or undefined when there is none. */
  readonly leader: LeaderInfo | undefined;
  /**
   * The store revision at which this state began (the revision of the
   * campaign, proclaim or deletion that caused it; for the first state, the
   * revision of the read). Strictly increasing along one observation.
   */
  readonly revision: bigint;
}

/** Options of {@link Election.observe} and {@link observeLeader}. */
export interface ObserveOptions {
  /** Ends the observation: the iteration then finishes normally (no error). */
  signal?: AbortSignal;
  /**
   * How many states not yet taken by the consumer are kept (default 16).
   * Beyond that the oldest undelivered state is dropped, so a slow consumer
   * always gets the latest state and memory stays bounded. `1` keeps only
   * the latest state.
   */
  buffer?: number;
}

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

function leaderInfo(kv: KeyValue): LeaderInfo {
  return {
    key: kv.key.toString(),
    value: kv.value.toString(),
    revision: kv.createRevision,
    modRevision: kv.modRevision,
    lease: kv.lease,
  };
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
  #term: Term | undefined;
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
      if (event === 'lost') this.#term?.watch();
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
    return !!this.#term && !this.#term.watch().aborted && this.session.live;
  }

  /**
   * The create revision of our key while we lead (Go's `Rev()`), the
   * fencing token of this term; undefined otherwise.
   */
  get revision(): bigint | undefined {
    return this.isLeader ? this.#term!.revision : undefined;
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
    return this.#term?.watch();
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
    if (term && !term.signal.aborted) {
      if (!term.value.equals(bytes)) await this.proclaim(bytes, options);
      return;
    }
    options.signal?.throwIfAborted();
    this.session.throwIfExpired();
    const stop = new AbortController();
    const done = traced(
      'campaign',
      () => electionTarget(this.name, this.#key, this.session),
      () => this.#campaignOnce(bytes, options.signal, stop.signal),
      (_, __, waitMs) => ({ revision: this.#term!.revision, waitMs }),
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
    const term = new Term(
      session,
      this.#key,
      turn.rev,
      own.value,
      turn.state.revision + 1n,
      turn.releaseLocal,
      what,
      (reason) => this.#onLost(term, reason),
    );
    this.#term = term;
    if (this.listenerCount('lost') > 0) term.watch();
    log('%s: %s elected (revision %s)', what, this.key, turn.rev);
    this.#emitSafely('elected', leaderInfo(own));
  }

  #onLost(term: Term, reason: unknown): void {
    log('%s: leadership of %s@%s lost: %s', this.#what, this.key, term.revision, (reason as Error)?.message);
    this.#emitSafely('lost', reason);
    publish('electionDeposed', () => ({
      ...electionTarget(this.name, this.#key, this.session),
      revision: term.revision,
      error: reason,
    }));
  }

  #emitSafely<K extends keyof ElectionEvents>(event: K, ...args: ElectionEvents[K]): void {
    emitSafely(this, event as string, args);
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
    if (!term || term.signal.aborted) throw new NotLeaderError(`${this.#what}: cannot proclaim, not the leader`);
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
            [cmp.create(this.#key, '==', term.revision), ...guard.compares],
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
    const ours = res.succeeded || rangeAt(res, 0).kvs[0]?.createRevision === term.revision;
    if (ours && !res.succeeded) throw guard.error(`${this.#what}: proclaim`);
    if (!res.succeeded) {
      const err = new NotLeaderError(`${this.#what}: our key ${this.key} was deleted; not the leader any more`);
      term.lose(err);
      throw err;
    }
    term.value = bytes;
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
    const leading = term && !term.signal.aborted;
    if (term) await term.resign();
    if (leading)
      publish('electionResigned', () => ({
        ...electionTarget(this.name, this.#key, this.session),
        revision: term.revision,
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
    const term = this.#term;
    if (!term || term.signal.aborted) throw new NotLeaderError(`${this.#what}: not the leader`);
    return markGuard(
      this.session.client.if(this.#key, 'Create', '==', term.revision.toString()),
      'NOT_LEADER',
      this.#what,
    );
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

/**
 * One term of leadership: our key and its create revision, a signal that
 * aborts when the term may be over (session lost, key deleted, resign), and
 * the local turn that keeps other Election objects of this session and name
 * in this process waiting.
 */
class Term {
  readonly revision: bigint;
  value: Buffer;
  readonly #session: Session;
  readonly #key: Buffer;
  readonly #linked: LinkedSignal;
  readonly #releaseLocal: LocalRelease;
  readonly #what: string;
  #watch: WatchHandle | undefined;
  /** Where the key watch starts (the revision after the read that made us leader); undefined once started. */
  #watchFrom: bigint | undefined;
  #resigning: Promise<void> | undefined;
  #resignStarted = false;

  constructor(
    session: Session,
    key: Buffer,
    revision: bigint,
    value: Buffer,
    watchFrom: bigint,
    releaseLocal: LocalRelease,
    what: string,
    onLost: (reason: unknown) => void,
  ) {
    this.#session = session;
    this.#key = key;
    this.revision = revision;
    this.value = value;
    this.#watchFrom = watchFrom;
    this.#releaseLocal = releaseLocal;
    this.#what = what;
    this.#linked = linkSignals(session.signal);
    const ended = () => {
      this.#watch?.close();
      this.#watch = undefined;
      if (this.#resignStarted) return;
      // Lost, not resigned: let the next local caller go (its calls will see why).
      releaseLocal();
      onLost(this.#linked.signal.reason);
    };
    if (this.#linked.signal.aborted) queueMicrotask(ended);
    else this.#linked.signal.addEventListener('abort', ended, { once: true });
  }

  get signal(): AbortSignal {
    return this.#linked.signal;
  }

  /** Ends the term as lost (no-op once ended). */
  lose(reason: unknown): void {
    this.#linked.abort(reason);
  }

  /**
   * Starts watching our key (once per term) and returns the term's signal.
   * From then on a deletion (expiry, revoke, someone else's delete) ends the
   * term at once, without waiting for the session to notice.
   */
  watch(): AbortSignal {
    const from = this.#watchFrom;
    this.#watchFrom = undefined;
    if (from !== undefined) this.#watchKey(from);
    return this.signal;
  }

  /** Watches our key from `revision` on; a watch that ends (compaction, cancellation) is replaced after re-reading the key. */
  #watchKey(revision: bigint): void {
    const signal = this.signal;
    if (signal.aborted) return;
    const { client } = this.#session;
    openWatch(
      client,
      { key: this.#key, startRevision: revision, noPut: true },
      {
        onEvents: (events) => {
          if (events.some((ev) => ev.type === 'delete')) {
            this.lose(new NotLeaderError(`${this.#what}: our key ${showKey(this.#key)} was deleted`));
          }
        },
        onEnd: (err) => {
          void this.#recheck(err);
        },
      },
      signal,
    ).then(
      (handle) => {
        if (signal.aborted) handle.close();
        else this.#watch = handle;
      },
      (err: unknown) => {
        void this.#recheck(err);
      },
    );
  }

  async #recheck(cause: unknown): Promise<void> {
    const signal = this.signal;
    if (signal.aborted) return;
    this.#watch = undefined;
    log('%s: watch on our key ended (%s); re-reading it', this.#what, (cause as Error)?.message);
    try {
      const r = await retrying(() => range(this.#session.client, this.#key), {
        signals: [signal],
        maxElapsedMs: Infinity,
      });
      const kv = r.kvs[0];
      if (!kv || kv.createRevision !== this.revision) {
        this.lose(new NotLeaderError(`${this.#what}: our key ${showKey(this.#key)} was deleted`));
        return;
      }
      this.#watchKey(r.revision + 1n);
    } catch (err) {
      // A closed client (or another permanent failure): we cannot tell whether we still lead.
      if (!signal.aborted) this.lose(err);
    }
  }

  /** Ends the term and deletes our key (guarded by its create revision). Idempotent. */
  resign(): Promise<void> {
    this.#resigning ??= (async () => {
      const lost = this.#linked.signal.aborted;
      // Mark before aborting: the next local caller must wait until our key is gone.
      this.#resignStarted = true;
      this.#linked.abort(withoutStack(() => new NotLeaderError(`${this.#what}: resigned`)));
      try {
        if (!lost || !this.#session.expired) await deleteOwnKey(this.#session, this.#key, this.revision, log);
        log('%s: %s resigned (revision %s)', this.#what, showKey(this.#key), this.revision);
      } finally {
        this.#releaseLocal();
      }
    })();
    return this.#resigning;
  }
}

// ---------------------------------------------------------------------------
// Reading and observing the leader: need only a client.

/**
 * The current leader of election `name` (the key with the lowest create
 * revision under `<name>/`), read linearizably, or undefined when there is
 * none. Needs no session.
 */
export async function getLeader(
  client: Namespace,
  name: string | Buffer,
  options: CampaignOptions = {},
): Promise<LeaderInfo | undefined> {
  checkClient(client);
  checkName(name, 'name');
  checkOptions(options);
  checkSignal(options.signal);
  const prefix = childPrefix(name);
  const r = await retrying(
    () =>
      raceAbort(
        range(client, prefix, { prefix: true, sortTarget: 'Create', sortOrder: 'Ascend', limit: 1 }),
        options.signal,
      ),
    { signals: [options.signal] },
  );
  const kv = r.kvs[0];
  return kv ? leaderInfo(kv) : undefined;
}

/**
 * Observes election `name` without taking part: see {@link LeaderObserver}.
 * Needs no session. Starts when first iterated.
 */
export function observeLeader(client: Namespace, name: string | Buffer, options: ObserveOptions = {}): LeaderObserver {
  checkClient(client);
  checkName(name, 'name');
  checkOptions(options);
  checkSignal(options.signal);
  if (options.buffer !== undefined) checkInteger(options.buffer, 'options.buffer', 1, 1_000_000);
  return new LeaderObserver(client, name, options);
}

function sameState(a: LeaderState, b: LeaderState): boolean {
  if (!a.leader || !b.leader) return !a.leader && !b.leader;
  return (
    a.leader.key === b.leader.key &&
    a.leader.revision === b.leader.revision &&
    a.leader.modRevision === b.leader.modRevision
  );
}

function isClientClosed(err: unknown): boolean {
  return err instanceof ClientClosedError || /client was already closed/i.test((err as Error)?.message ?? '');
}

/**
 * An async iterable of an election's states, from {@link observeLeader} or
 * {@link Election.observe}:
 *
 * - the first state is the current one (possibly `{ leader: undefined }`);
 * - then one state for every revision at which the leader changed: a new
 *   leader, a proclaim (new value) by the leader, or nobody leading;
 * - `revision` strictly increases; candidates joining or leaving behind the
 *   leader are not reported;
 * - a consumer that falls behind by more than `buffer` states loses the
 *   oldest undelivered ones, never the latest;
 * - reconnects are invisible (the watch resumes where it was), and if the
 *   history it needs was compacted away it re-reads the election and
 *   reports the current state;
 * - the iteration ends normally when the signal aborts or the loop exits
 *   (`break` calls `return()`, which closes the watch), and throws only on a
 *   permanent failure (e.g. the client was closed).
 *
 * Unlike Go's `Observe`, the state "no leader" is reported explicitly.
 */
export class LeaderObserver implements AsyncIterableIterator<LeaderState>, AsyncDisposable {
  readonly #client: Namespace;
  readonly #prefix: Buffer;
  readonly #name: string;
  readonly #what: string;
  readonly #max: number;
  readonly #linked: LinkedSignal;
  readonly #queue: LeaderState[] = [];
  readonly #waiters: { resolve: (r: IteratorResult<LeaderState>) => void; reject: (err: unknown) => void }[] = [];
  /** Live candidates by key (hex), from the last read plus the events since. */
  #candidates = new Map<string, KeyValue>();
  #leaderId: string | undefined;
  #last: LeaderState | undefined;
  #started = false;
  #finished = false;
  #failure: { err: unknown } | undefined;

  /**
   * Made by {@link observeLeader} and {@link Election.observe}; use those.
   * @param client - the etcd3 client (or namespace)
   * @param name - the election's name
   * @param options - `signal`
   */
  constructor(client: Namespace, name: string | Buffer, options: ObserveOptions) {
    this.#client = client;
    this.#prefix = childPrefix(name);
    this.#what = `election ${showKey(name)} observer`;
    this.#name = showKey(name);
    this.#max = options.buffer ?? 16;
    this.#linked = linkSignals(options.signal);
    const signal = this.#linked.signal;
    if (signal.aborted) this.#finished = true;
    else signal.addEventListener('abort', () => this.#finish(), { once: true });
  }

  /** The latest state seen so far (delivered or not), or undefined before the first read. */
  get current(): LeaderState | undefined {
    return this.#last;
  }

  /** The observer is its own iterator (one consumer). */
  [Symbol.asyncIterator](): this {
    return this;
  }

  /** The next state; waits for a change when every state so far was taken. */
  next(): Promise<IteratorResult<LeaderState>> {
    if (!this.#started && !this.#finished) {
      this.#started = true;
      void this.#run();
    }
    const value = this.#queue.shift();
    if (value) return Promise.resolve({ value, done: false });
    if (this.#failure) {
      const { err } = this.#failure;
      this.#failure = undefined;
      return Promise.reject(err);
    }
    if (this.#finished) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /** Stops observing and closes the watch. */
  return(): Promise<IteratorResult<LeaderState>> {
    this.#finish();
    return Promise.resolve({ value: undefined, done: true });
  }

  /** Same as `return()`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.return();
  }

  #finish(failure?: { err: unknown }): void {
    if (this.#finished) return;
    this.#finished = true;
    this.#queue.length = 0;
    this.#linked.abort(withoutStack(() => new Error('observation ended')));
    this.#linked.dispose();
    const waiters = this.#waiters.splice(0);
    if (failure && waiters.length === 0) this.#failure = failure;
    for (const w of waiters) {
      if (failure) w.reject(failure.err);
      else w.resolve({ value: undefined, done: true });
      failure = undefined; // one waiter gets the error, the others end
    }
  }

  #publish(revision: bigint): void {
    if (this.#finished) return;
    const kv = this.#leader();
    const state: LeaderState = { leader: kv ? leaderInfo(kv) : undefined, revision };
    const last = this.#last;
    // After a reconnect to a member that is behind, a read may be older than what we reported: skip it.
    if (last && (revision <= last.revision || sameState(last, state))) return;
    this.#last = state;
    publish('electionLeader', () => ({ name: this.#name, leader: state.leader, revision }));
    const waiter = this.#waiters.shift();
    if (waiter) {
      waiter.resolve({ value: state, done: false });
      return;
    }
    this.#queue.push(state);
    if (this.#queue.length > this.#max) this.#queue.shift();
  }

  /** The candidate with the lowest create revision (cached until the leader leaves). */
  #leader(): KeyValue | undefined {
    if (this.#leaderId !== undefined) {
      const kv = this.#candidates.get(this.#leaderId);
      if (kv) return kv;
    }
    let best: KeyValue | undefined;
    let bestId: string | undefined;
    for (const [id, kv] of this.#candidates) {
      if (!best || kv.createRevision < best.createRevision) {
        best = kv;
        bestId = id;
      }
    }
    this.#leaderId = bestId;
    return best;
  }

  /** Applies watch events, publishing a state after each revision that changed the leader. */
  #apply(events: WatchEvent[]): void {
    for (let i = 0; i < events.length; ) {
      const revision = events[i]!.kv.modRevision;
      for (; i < events.length && events[i]!.kv.modRevision === revision; i++) {
        const ev = events[i]!;
        const id = ev.kv.key.toString('hex');
        if (ev.type === 'delete') {
          this.#candidates.delete(id);
          if (id === this.#leaderId) this.#leaderId = undefined;
        } else {
          this.#candidates.set(id, ev.kv);
          // A key created while nobody leads becomes leader; one behind the leader does not.
          if (
            this.#leaderId !== undefined &&
            this.#candidates.get(this.#leaderId)!.createRevision > ev.kv.createRevision
          )
            this.#leaderId = undefined;
        }
      }
      this.#publish(revision);
    }
  }

  /**
   * Watch-then-read: open a prefix watch from "now" (live at once, no
   * catch-up stall), read the whole election at exactly the watch's creation
   * revision, then apply the events after it. Repeated after a compaction.
   */
  async #run(): Promise<void> {
    const signal = this.#linked.signal;
    const client = this.#client;
    let backoff = 25;
    while (!signal.aborted) {
      let handle: WatchHandle | undefined;
      try {
        let buffered: WatchEvent[] | undefined = [];
        let endWatch: (err: Error) => void = () => undefined;
        const ended = new Promise<Error>((resolve) => {
          endWatch = resolve;
        });
        handle = await openWatch(
          client,
          { key: this.#prefix, prefix: true },
          {
            onEvents: (events) => {
              if (buffered) buffered.push(...events);
              else this.#apply(events);
            },
            onEnd: (err) => endWatch(err),
          },
          signal,
        );
        const at = handle.createdRevision;
        const r = await raceAbort(range(client, this.#prefix, { prefix: true, revision: at }), signal);
        this.#candidates = new Map(r.kvs.map((kv) => [kv.key.toString('hex'), kv]));
        this.#leaderId = undefined;
        this.#publish(at);
        const early = buffered.filter((ev) => ev.kv.modRevision > at);
        buffered = undefined;
        this.#apply(early);
        backoff = 25;
        const err = await raceAbort(ended, signal);
        // A closed client or a refused watch (permission) ends the observer; anything else re-reads.
        if (isClientClosed(err) || isRecipeError(err)) throw err;
        log('%s: watch ended (%s); re-reading', this.#what, err.message);
        if (err instanceof WatchCompactedError) continue;
      } catch (err) {
        if (signal.aborted) break;
        const retry =
          isTransient(err) || err instanceof WatchCompactedError || /compacted/i.test((err as Error)?.message ?? '');
        if (!retry) {
          log('%s: failed: %s', this.#what, (err as Error)?.message);
          this.#finish({ err });
          return;
        }
        log('%s: %s; retrying', this.#what, (err as Error)?.message);
      } finally {
        handle?.close();
      }
      await delay(backoff, signal).catch(() => undefined);
      backoff = Math.min(backoff * 2, 1000);
    }
    this.#finish();
  }
}
