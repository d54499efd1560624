import type { Namespace } from 'etcd3';
import { raceAbort } from '../../core/abort.js';
import { AsyncQueue } from '../../core/async-queue.js';
import { publish } from '../../core/diagnostics.js';
import { ClosedError, isRecipeError } from '../../core/errors.js';
import { isPermissionDenied } from '../../core/etcd-errors.js';
import { childPrefix, showKey } from '../../core/keys.js';
import { range } from '../../core/kv.js';
import { logger } from '../../core/log.js';
import type { WaitOptions } from '../../core/options.js';
import { retrying } from '../../core/retry.js';
import { checkClient, checkInteger, checkName, checkOptions, checkSignal } from '../../core/validate.js';
import { PrefixCache } from '../prefix-cache.js';
import type { CachedKeyValue, PrefixCacheChange } from '../prefix-cache-snapshot.js';

const log = logger('election');

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

/** @internal A leader as the API reports it, from its key-value. */
export function leaderInfo(kv: {
  key: Buffer | string;
  value: Buffer | string;
  createRevision: bigint;
  modRevision: bigint;
  lease: string;
}): LeaderInfo {
  return {
    key: kv.key.toString(),
    value: kv.value.toString(),
    revision: kv.createRevision,
    modRevision: kv.modRevision,
    lease: kv.lease,
  };
}

/**
 * The current leader of election `name` (the key with the lowest create
 * revision under `<name>/`), read linearizably, or undefined when there is
 * none. Needs no session.
 */
export async function getLeader(
  client: Namespace,
  name: string | Buffer,
  options: WaitOptions = {},
): Promise<LeaderInfo | undefined> {
  checkClient(client);
  checkName(name, 'name');
  checkOptions(options);
  checkSignal(options.signal);
  const prefix = childPrefix(name);
  const read = () => range(client, prefix, { prefix: true, sortTarget: 'Create', sortOrder: 'Ascend', limit: 1 });
  const r = await retrying(() => raceAbort(read(), options.signal), { signals: [options.signal] });
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
 * Unlike Go's `Observe`, the state "no leader" is reported explicitly. The
 * election's keys are followed by a {@link PrefixCache} on `<name>/`.
 */
export class LeaderObserver implements AsyncIterableIterator<LeaderState>, AsyncDisposable {
  readonly #client: Namespace;
  readonly #prefix: Buffer;
  readonly #name: string;
  readonly #queue: AsyncQueue<LeaderState>;
  #cache: PrefixCache | undefined;
  /** The leader's key (cached until the leader leaves). */
  #leaderKey: Buffer | undefined;
  #last: LeaderState | undefined;
  /** The state after the latest change, published once its revision is complete. */
  #pending: LeaderState | undefined;

  /**
   * Made by {@link observeLeader} and {@link Election.observe}; use those.
   * @param client - the etcd3 client (or namespace)
   * @param name - the election's name
   * @param options - `signal`, `buffer`
   */
  constructor(client: Namespace, name: string | Buffer, options: ObserveOptions) {
    this.#client = client;
    this.#prefix = childPrefix(name);
    this.#name = showKey(name);
    this.#queue = new AsyncQueue<LeaderState>({
      max: options.buffer ?? 16,
      signal: options.signal,
      endOnAbort: true,
      onEnd: () => void this.#cache?.close(),
    });
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
    if (!this.#cache && !this.#queue.ended) this.#start();
    return this.#queue.next();
  }

  /** Stops observing and closes the watch. */
  return(): Promise<IteratorResult<LeaderState>> {
    return this.#queue.return();
  }

  /** Same as `return()`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.return();
  }

  #start(): void {
    const cache = new PrefixCache(this.#client, this.#prefix);
    const what = `election ${this.#name} observer`;
    this.#cache = cache;
    cache.on('ready', () => this.#publish(this.#state(cache.revision)));
    cache.on('change', (c) => this.#onChange(c));
    cache.on('resync', (r) => log('%s: watch ended (watch start revision compacted at %s); re-read', what, r.revision));
    cache.on('error', (err) => {
      // A refused read or watch (permissions) or a closed client ends the observer; the cache retries the rest.
      if (isRecipeError(err) || isPermissionDenied(err)) this.#queue.fail(err);
      else log('%s: %s; retrying', what, err.message);
    });
    cache.on('closed', () => this.#queue.fail(new ClosedError(`${what}: the etcd client was closed`)));
  }

  /** The leader: the candidate with the lowest create revision. */
  #leader(): CachedKeyValue | undefined {
    const cache = this.#cache!;
    const cached = this.#leaderKey && cache.getEntry(this.#leaderKey);
    if (cached) return cached;
    let best: CachedKeyValue | undefined;
    for (const kv of cache.values()) if (!best || kv.createRevision < best.createRevision) best = kv;
    this.#leaderKey = best?.keyBuffer;
    return best;
  }

  #state(revision: bigint): LeaderState {
    const kv = this.#leader();
    return { leader: kv ? leaderInfo(kv) : undefined, revision };
  }

  /** The cache applied one change: the state after it is published once every change of its revision is in. */
  #onChange(c: PrefixCacheChange): void {
    const pending = this.#pending;
    if (pending && pending.revision !== c.revision) this.#publish(pending);
    if (c.resync || (c.type === 'delete' && this.#leaderKey?.equals(c.prevEntry!.keyBuffer)))
      this.#leaderKey = undefined;
    if (!this.#pending) queueMicrotask(() => this.#flush());
    this.#pending = this.#state(c.revision);
  }

  #flush(): void {
    const pending = this.#pending;
    this.#pending = undefined;
    if (pending) this.#publish(pending);
  }

  #publish(state: LeaderState): void {
    const last = this.#last;
    if (this.#queue.ended || (last && (state.revision <= last.revision || sameState(last, state)))) return;
    this.#last = state;
    publish('electionLeader', () => ({ name: this.#name, leader: state.leader, revision: state.revision }));
    this.#queue.push(state);
  }
}
