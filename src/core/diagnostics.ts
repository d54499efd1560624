import { channel, subscribe, tracingChannel, unsubscribe, type Channel, type TracingChannel } from 'node:diagnostics_channel';
import { showKey } from './keys.js';

/*
 * Every `node:diagnostics_channel` channel the library publishes on, with its
 * message shape, declared once. Names and shapes are API (docs/observability.md).
 *
 * Channels are process-wide by name, so the ESM and the CJS copy of the
 * library publish to the same subscribers. Nothing here builds a message
 * unless someone subscribes: every publish checks `hasSubscribers` first.
 */

// ---------------------------------------------------------------------------
// Names

/** The point channels (one message per event), by event. */
export const DIAGNOSTICS_CHANNELS = {
  sessionCreated: 'etcd-recipes:session:created',
  sessionRenewedLate: 'etcd-recipes:session:renewed-late',
  sessionLost: 'etcd-recipes:session:lost',
  sessionClosed: 'etcd-recipes:session:closed',
  lockWait: 'etcd-recipes:lock:wait',
  lockReleased: 'etcd-recipes:lock:released',
  lockLost: 'etcd-recipes:lock:lost',
  electionDeposed: 'etcd-recipes:election:deposed',
  electionResigned: 'etcd-recipes:election:resigned',
  electionLeader: 'etcd-recipes:election:leader',
  workQueueRelease: 'etcd-recipes:work-queue:release',
  workQueueRetry: 'etcd-recipes:work-queue:retry',
  workQueueDeadLetter: 'etcd-recipes:work-queue:dead-letter',
  watchReconnect: 'etcd-recipes:watch:reconnect',
  watchCompacted: 'etcd-recipes:watch:compacted',
  prefixCacheResync: 'etcd-recipes:prefix-cache:resync',
  serviceLost: 'etcd-recipes:service:lost',
  serviceReregistered: 'etcd-recipes:service:re-registered',
} as const;

/**
 * The tracing channels (an operation with a start and an end), by operation.
 * Node names their five channels `tracing:<name>:start`, `:end`,
 * `:asyncStart`, `:asyncEnd` and `:error`; every operation here is
 * asynchronous, so its outcome is on `asyncEnd` (`context.result`) or on
 * `error` then `asyncEnd` (`context.error`).
 */
export const TRACING_CHANNELS = {
  lock: 'etcd-recipes:lock',
  multiLock: 'etcd-recipes:multi-lock',
  campaign: 'etcd-recipes:election:campaign',
  stm: 'etcd-recipes:stm',
  stmAttempt: 'etcd-recipes:stm:attempt',
  enqueue: 'etcd-recipes:queue:enqueue',
  dequeue: 'etcd-recipes:queue:dequeue',
  claim: 'etcd-recipes:work-queue:claim',
  ack: 'etcd-recipes:work-queue:ack',
} as const;

// ---------------------------------------------------------------------------
// Message shapes. Names are rendered as strings (UTF-8, or `0x<hex>`).
// Durations in messages are milliseconds (`performance.now()` differences).

/** Every session message. */
export interface SessionMessage {
  /** The lease ID, decimal. */
  leaseId: string;
  /** The lease ID in lowercase hex (as in Mutex and Election keys). */
  leaseHex: string;
  /** The TTL etcd granted, in seconds. */
  ttl: number;
}

/** `etcd-recipes:session:renewed-late`: a keepalive acknowledged with less than half the TTL left, or the first after a reconnect. */
export interface SessionRenewedLateMessage extends SessionMessage {
  /** `'reconnect'` when the keepalive stream was re-opened before this ack, else `'late'`. */
  reason: 'late' | 'reconnect';
  /** What was left of the lease, by our clock, when the ack arrived (ms). */
  remainingMs: number;
}

/** `etcd-recipes:session:lost`. */
export interface SessionLostMessage extends SessionMessage {
  /** Why (a SessionExpiredError). */
  error: Error;
}

/** The recipes whose holds are locks or permits. */
export type LockRecipe = 'mutex' | 'rwmutex' | 'semaphore';

/** What is being locked: part of every lock message. */
export interface LockTarget {
  recipe: LockRecipe;
  /** The lock's (or semaphore's) name. */
  name: string;
  /** RWMutex only. */
  mode?: 'read' | 'write';
  /** How many permits (1 for locks). */
  permits: number;
  /** The session's lease ID, decimal. */
  leaseId: string;
}

/** The context of `etcd-recipes:lock` (Mutex, RWMutex and Semaphore acquires; the `try` forms too). */
export interface LockAcquireContext extends LockTarget {
  /** False for `tryLock` / `tryAcquire`: never waits for another holder. */
  wait: boolean;
  /** Set on `asyncEnd` when the call resolved. */
  result?: LockAcquireResult;
  /** Set on `error` when it rejected (aborted, session lost...). */
  error?: unknown;
}

/** `context.result` of `etcd-recipes:lock`. */
export interface LockAcquireResult {
  /** False only for a `try` form that found the lock taken (it left no key behind). */
  acquired: boolean;
  /** The held key (when acquired). */
  key?: string;
  /** Its create revision (when acquired). */
  fencingToken?: bigint;
  /** True if the call queued behind another holder. */
  waited: boolean;
  /** From the call to the outcome, in ms. */
  waitMs: number;
}

/** `etcd-recipes:lock:wait`: an acquire found others ahead and starts waiting. */
export interface LockWaitMessage extends LockTarget {
  /** The same object the acquire's tracing events carry. */
  context: LockAcquireContext;
  /** Our key, already in line. */
  key: string;
  /** Its create revision (the fencing token once held). */
  revision: bigint;
  /** The key we wait on (undefined when waiting on deletes under a prefix, as the first semaphore waiter does). */
  blocker: string | undefined;
}

/** `etcd-recipes:lock:released` (exactly one of released or lost ends a hold). */
export interface LockReleasedMessage extends LockTarget {
  key: string;
  fencingToken: bigint;
  /** How long it was held, in ms. */
  heldMs: number;
}

/** `etcd-recipes:lock:lost`: the hold ended without a release (session lost or closed, or the key deleted by someone else). */
export interface LockLostMessage extends LockReleasedMessage {
  error: unknown;
}

/** The context of `etcd-recipes:multi-lock` (acquireAll, withLocks); each lock also has its own `etcd-recipes:lock` events. */
export interface MultiLockAcquireContext {
  /** The names, in the order they are taken. */
  names: string[];
  leaseId: string;
  result?: { keys: string[]; fencingTokens: bigint[]; waitMs: number };
  error?: unknown;
}

/** Part of every election message. */
export interface ElectionTarget {
  /** The election's name. */
  name: string;
  /** Our campaign key, `<name>/<lease hex>`. */
  key: string;
  leaseId: string;
}

/** The context of `etcd-recipes:election:campaign`. `asyncEnd` with a result: elected. */
export interface CampaignContext extends ElectionTarget {
  result?: { revision: bigint; waitMs: number };
  error?: unknown;
}

/** `etcd-recipes:election:deposed`: leadership lost without resigning (session lost, key deleted). */
export interface ElectionDeposedMessage extends ElectionTarget {
  /** The term's revision (its fencing token). */
  revision: bigint;
  error: unknown;
}

/** `etcd-recipes:election:resigned`: a leader resigned (its key is deleted). */
export interface ElectionResignedMessage extends ElectionTarget {
  revision: bigint;
}

/** `etcd-recipes:election:leader`: an observer (`observe()`, `observeLeader`, runAsLeader's observer) saw a leader change. */
export interface ElectionLeaderMessage {
  name: string;
  /** Undefined: nobody leads. `revision` is the leader key's create revision (its term's fencing token). */
  leader: { key: string; value: string; revision: bigint; modRevision: bigint; lease: string } | undefined;
  /** The store revision of the change. */
  revision: bigint;
}

/** The context of `etcd-recipes:stm` (one `runSTM` call). */
export interface STMContext {
  isolation: string;
  /** The retries allowed. */
  retries: number;
  /** On commit. */
  result?: { attempts: number };
  /** Give-up is an STMConflictError (code `STM_CONFLICT`, with `attempts` and `keys`). */
  error?: unknown;
}

/** The context of `etcd-recipes:stm:attempt` (one run of the function and its commit). */
export interface STMAttemptContext {
  /** 1 for the first. */
  attempt: number;
  isolation: string;
  /** `'conflict'`: the commit's compares failed; `conflictKeys` names the keys (best effort). */
  result?: { outcome: 'commit' | 'conflict'; conflictKeys: string[] };
  /** The function threw, a read failed, or the attempt restarts (its snapshot revision was compacted). */
  error?: unknown;
}

/** The queue recipes. */
export type QueueRecipe = 'queue' | 'priority-queue' | 'work-queue';

/** The context of `etcd-recipes:queue:enqueue` (Queue.enqueue, PriorityQueue.enqueue, WorkQueue.add). */
export interface EnqueueContext {
  recipe: QueueRecipe;
  name: string;
  /** PriorityQueue and WorkQueue. */
  priority?: number;
  /** `id`: the WorkQueue job ID. */
  result?: { key: string; id?: string };
  error?: unknown;
}

/** The context of `etcd-recipes:queue:dequeue` (Queue and PriorityQueue). */
export interface DequeueContext {
  recipe: 'queue' | 'priority-queue';
  name: string;
  result?: { key: string; waitMs: number };
  error?: unknown;
}

/** A work-queue job, in its messages. */
export interface JobMessage {
  /** The work queue's prefix. */
  name: string;
  /** The job ID. */
  id: string;
  /** The claim key. */
  key: string;
  fencingToken: bigint;
  /** How many times the job was claimed, this claim included. */
  attempts: number;
}

/** The context of `etcd-recipes:work-queue:claim`. */
export interface JobClaimContext {
  name: string;
  leaseId: string;
  result?: JobMessage & { waitMs: number };
  error?: unknown;
}

/** The context of `etcd-recipes:work-queue:ack`. */
export interface JobAckContext extends JobMessage {
  result?: Record<string, never>;
  /** A LockNotHeldError when the claim was lost. */
  error?: unknown;
}

/** `etcd-recipes:work-queue:retry`: a claim took a job whose earlier claim ended without an ack (attempts ≥ 2). */
export type JobRetryMessage = JobMessage;

/** `etcd-recipes:work-queue:dead-letter`. */
export interface JobDeadLetterMessage extends JobMessage {
  /** `'max-attempts'`: claimed more than `maxAttempts` times; `'manual'`: `job.deadLetter()`. */
  reason: 'max-attempts' | 'manual';
}

/** `etcd-recipes:watch:reconnect`: the shared watch stream broke and is re-opened (every watch resumes where it was). */
export interface WatchReconnectMessage {
  /** How many watches resume. */
  watches: number;
  /** The pause before re-opening, in ms. */
  delayMs: number;
  error: Error;
}

/** `etcd-recipes:watch:compacted`: a watch's start revision was compacted away; its owner re-reads. */
export interface WatchCompactedMessage {
  key: string;
  prefix: boolean;
  compactRevision: bigint;
}

/** `etcd-recipes:prefix-cache:resync`: a PrefixCache re-listed its prefix after a compaction. */
export interface PrefixCacheResyncMessage {
  prefix: string;
  /** The revision of the new list. */
  revision: bigint;
  compactRevision: bigint | undefined;
  /** How many changes the re-list found. */
  changes: number;
}

/** Every service-registration message. */
export interface ServiceMessage {
  service: string;
  id: string;
  /** The registration key. */
  key: string;
}

/** `etcd-recipes:service:lost`: the registration's lease was lost; it re-registers. */
export interface ServiceLostMessage extends ServiceMessage {
  /** The lost lease. */
  leaseId: string;
  error: Error;
}

/** `etcd-recipes:service:re-registered`: registered again, under a new lease. */
export interface ServiceReregisteredMessage extends ServiceMessage {
  leaseId: string;
  revision: bigint;
}

/** The message of each point channel, by name. */
export interface DiagnosticsMessages {
  'etcd-recipes:session:created': SessionMessage;
  'etcd-recipes:session:renewed-late': SessionRenewedLateMessage;
  'etcd-recipes:session:lost': SessionLostMessage;
  'etcd-recipes:session:closed': SessionMessage;
  'etcd-recipes:lock:wait': LockWaitMessage;
  'etcd-recipes:lock:released': LockReleasedMessage;
  'etcd-recipes:lock:lost': LockLostMessage;
  'etcd-recipes:election:deposed': ElectionDeposedMessage;
  'etcd-recipes:election:resigned': ElectionResignedMessage;
  'etcd-recipes:election:leader': ElectionLeaderMessage;
  'etcd-recipes:work-queue:release': JobMessage;
  'etcd-recipes:work-queue:retry': JobRetryMessage;
  'etcd-recipes:work-queue:dead-letter': JobDeadLetterMessage;
  'etcd-recipes:watch:reconnect': WatchReconnectMessage;
  'etcd-recipes:watch:compacted': WatchCompactedMessage;
  'etcd-recipes:prefix-cache:resync': PrefixCacheResyncMessage;
  'etcd-recipes:service:lost': ServiceLostMessage;
  'etcd-recipes:service:re-registered': ServiceReregisteredMessage;
}

/** The context object of each tracing channel, by name. */
export interface TracingContexts {
  'etcd-recipes:lock': LockAcquireContext;
  'etcd-recipes:multi-lock': MultiLockAcquireContext;
  'etcd-recipes:election:campaign': CampaignContext;
  'etcd-recipes:stm': STMContext;
  'etcd-recipes:stm:attempt': STMAttemptContext;
  'etcd-recipes:queue:enqueue': EnqueueContext;
  'etcd-recipes:queue:dequeue': DequeueContext;
  'etcd-recipes:work-queue:claim': JobClaimContext;
  'etcd-recipes:work-queue:ack': JobAckContext;
}

/** A point channel's name. */
export type DiagnosticsChannelName = keyof DiagnosticsMessages;
/** A tracing channel's name. */
export type TracingChannelName = keyof TracingContexts;

/** Handlers for {@link subscribeTracing}; each gets the operation's context object (the same object throughout one call). */
export interface TracingHandlers<C> {
  start?(context: C): void;
  end?(context: C): void;
  asyncStart?(context: C): void;
  asyncEnd?(context: C): void;
  error?(context: C): void;
}

/**
 * Subscribes `listener` to one of the library's point channels, typed.
 * Same as `diagnostics_channel.subscribe(name, listener)`.
 * @returns a function that unsubscribes
 */
export function subscribeDiagnostics<N extends DiagnosticsChannelName>(name: N,
  listener: (message: DiagnosticsMessages[N], name: string | symbol) => void): () => void {
  const l = listener as (message: unknown, name: string | symbol) => void;
  subscribe(name, l);
  return () => { unsubscribe(name, l); };
}

/**
 * Subscribes to one of the library's tracing channels, typed. Same as
 * `diagnostics_channel.tracingChannel(name).subscribe(handlers)`.
 * @returns a function that unsubscribes
 */
export function subscribeTracing<N extends TracingChannelName>(name: N, handlers: TracingHandlers<TracingContexts[N]>): () => void {
  const subs: [string, (m: unknown) => void][] = [];
  for (const event of ['start', 'end', 'asyncStart', 'asyncEnd', 'error'] as const) {
    const h = handlers[event];
    if (!h) continue;
    const channelName = `tracing:${name}:${event}`;
    const l = (m: unknown) => h.call(handlers, m as TracingContexts[N]);
    subscribe(channelName, l);
    subs.push([channelName, l]);
  }
  return () => { for (const [n, l] of subs) unsubscribe(n, l); };
}

// ---------------------------------------------------------------------------
// Publishing (internal)

type Point = { [K in keyof typeof DIAGNOSTICS_CHANNELS]: Channel };
/** @internal The point channels, made once (channel objects are shared by name across the process). */
export const points = Object.fromEntries(
  Object.entries(DIAGNOSTICS_CHANNELS).map(([k, name]) => [k, channel(name)])) as Point;

type Tracing = { [K in keyof typeof TRACING_CHANNELS]: TracingChannel<unknown, object> };
/** @internal The tracing channels. */
export const tracing = Object.fromEntries(
  Object.entries(TRACING_CHANNELS).map(([k, name]) => [k, tracingChannel(name)])) as Tracing;

/** @internal Publishes the message `make()` builds on point channel `which`, if anyone listens. */
export function publish<K extends keyof typeof DIAGNOSTICS_CHANNELS>(which: K,
  make: () => DiagnosticsMessages[(typeof DIAGNOSTICS_CHANNELS)[K]]): void {
  const ch = points[which];
  if (ch.hasSubscribers) ch.publish(make());
}

function tracingOn(tc: TracingChannel<unknown, object>): boolean {
  // TracingChannel.hasSubscribers is Node ≥ 20.13; this is what it computes.
  return tc.start.hasSubscribers || tc.end.hasSubscribers || tc.asyncStart.hasSubscribers ||
    tc.asyncEnd.hasSubscribers || tc.error.hasSubscribers;
}

/**
 * @internal Runs `fn` as operation `which` (Node's `tracePromise` sequence),
 * if anyone listens: `start` (with the context bound to async stores, so
 * spans nest), `end`, then `asyncStart`/`asyncEnd` with `context.result`
 * set to `result(value, context, elapsedMs)`, or `error` first with `context.error`.
 * Without subscribers it only calls `fn(undefined)`.
 */
export function traced<K extends keyof typeof TRACING_CHANNELS, T>(which: K,
  makeContext: () => TracingContexts[(typeof TRACING_CHANNELS)[K]],
  fn: (context: TracingContexts[(typeof TRACING_CHANNELS)[K]] | undefined) => Promise<T>,
  result: (value: T, context: TracingContexts[(typeof TRACING_CHANNELS)[K]], elapsedMs: number) => unknown): Promise<T> {
  const tc = tracing[which];
  if (!tracingOn(tc)) return fn(undefined);
  const since = performance.now();
  const context = makeContext();
  const outcome = context as { result?: unknown; error?: unknown };
  return tc.start.runStores(context, () => {
    try {
      return fn(context).then((value) => {
        outcome.result = result(value, context, performance.now() - since);
        tc.asyncStart.publish(context);
        tc.asyncEnd.publish(context);
        return value;
      }, (err: unknown) => {
        outcome.error = err;
        tc.error.publish(context);
        tc.asyncStart.publish(context);
        tc.asyncEnd.publish(context);
        throw err;
      });
    } catch (err) {
      outcome.error = err;
      tc.error.publish(context);
      throw err;
    } finally {
      tc.end.publish(context);
    }
  });
}

/** @internal A name as messages show it. */
export function nameOf(name: string | Buffer): string {
  return showKey(name);
}

/** @internal The session fields of a session message. */
export function sessionFields(s: { leaseId: string; leaseHex: string; ttl: number }): SessionMessage {
  return { leaseId: s.leaseId, leaseHex: s.leaseHex, ttl: s.ttl };
}

/**
 * @internal One hold's end, published exactly once: released, or lost (the
 * session's signal aborted, or the key was deleted by someone else).
 * Listens to the session only when someone listens to `lock:lost`.
 */
export class HoldTrace {
  readonly #lock: LockTarget;
  readonly #key: Buffer;
  readonly #token: bigint;
  readonly #since = performance.now();
  #ended = false;
  #detach: (() => void) | undefined;

  constructor(lock: LockTarget, sessionSignal: AbortSignal, key: Buffer, token: bigint) {
    this.#lock = lock;
    this.#key = key;
    this.#token = token;
    if (!points.lockLost.hasSubscribers) return;
    const onAbort = () => this.lost(sessionSignal.reason);
    sessionSignal.addEventListener('abort', onAbort, { once: true });
    this.#detach = () => sessionSignal.removeEventListener('abort', onAbort);
  }

  /** The hold ended with a release (the key deleted by us). */
  released(): void {
    if (!this.#end()) return;
    publish('lockReleased', () => this.#message());
  }

  /** The hold ended without a release. */
  lost(error: unknown): void {
    if (!this.#end()) return;
    publish('lockLost', () => ({ ...this.#message(), error }));
  }

  #end(): boolean {
    if (this.#ended) return false;
    this.#ended = true;
    this.#detach?.();
    return true;
  }

  #message(): LockReleasedMessage {
    return { ...this.#lock, key: showKey(this.#key), fencingToken: this.#token, heldMs: performance.now() - this.#since };
  }
}

/** @internal Traces one lock acquire (see joinLine); `fn` gets a callback for the moment it starts waiting. */
export function traceLock<T extends { key: Buffer; rev: bigint; waited: boolean } | undefined>(lock: LockTarget | undefined, wait: boolean,
  fn: (onWait: ((key: Buffer, rev: bigint, blocker: Buffer | undefined) => void) | undefined) => Promise<T>): Promise<T> {
  if (!lock) return fn(undefined);
  const since = performance.now();
  return traced('lock', () => ({ ...lock, wait }), (context) => fn((key, rev, blocker) => {
    publish('lockWait', () => ({ ...lock, context: context ?? { ...lock, wait }, key: showKey(key), revision: rev, blocker: blocker && showKey(blocker) }));
  }), (turn): LockAcquireResult => turn
    ? { acquired: true, key: showKey(turn.key), fencingToken: turn.rev, waited: turn.waited, waitMs: performance.now() - since }
    : { acquired: false, waited: false, waitMs: performance.now() - since });
}

/** @internal What a lock message says about the lock. */
export function lockTarget(recipe: LockRecipe, name: string | Buffer, session: { leaseId: string }, permits = 1, mode?: 'read' | 'write'): LockTarget {
  return mode ? { recipe, name: showKey(name), mode, permits, leaseId: session.leaseId } : { recipe, name: showKey(name), permits, leaseId: session.leaseId };
}

/** @internal What an election message says about the election. */
export function electionTarget(name: string | Buffer, key: Buffer, session: { leaseId: string }): ElectionTarget {
  return { name: showKey(name), key: showKey(key), leaseId: session.leaseId };
}
